from __future__ import annotations

from tests.bot.conftest import Harness, attachment_bytes, png_parameters


async def test_imagine_delivers_image(harness: Harness) -> None:
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a red fox in the snow", seed=42)
    assert result.response is not None
    print(result.response.content)
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    print(message.content, message.embeds[0].to_dict() if message.embeds else None)
    data = await attachment_bytes(message)
    params = png_parameters(data)
    assert params["seed"] == 42
