"""/status and the image embeds never leak across servers or out of the host: /status names
only this server's requesters, and the model shows as a name, never a filesystem path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import render
from tests.bot.harness import Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        ("Qwen/Qwen-Image", "Qwen/Qwen-Image"),
        ("/models/qwen", "qwen"),
        ("/models/qwen/", "qwen"),
        ("./tiny-model", "tiny-model"),
        ("../weights/my model", "my model"),
        ("~/hf/qwen-image", "qwen-image"),
        ("C:\\models\\qwen", "qwen"),
        ("/", "custom model"),
        ("", "custom model"),
        ("/srv/a/b/Qwen/Qwen-Image", "Qwen-Image"),
    ],
)
def test_model_name_never_shows_a_path(model: str, shown: str) -> None:
    assert render.model_name(model) == shown


async def test_status_names_only_this_servers_requesters_and_no_model_path(
    harness: Harness, tiny_model_dir: Path
) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.2
    alice = harness.member("alice")
    other = harness.env.create_guild("Elsewhere")
    elsewhere = other.create_text_channel("general")
    bob = other.add_member(harness.env.create_user("bob"))
    first = await alice.slash(harness.channel, "imagine", prompt="first")

    async def running() -> bool:
        return (await harness.row(harness.key(first))).status == "running"

    await harness.wait_until(running, what="alice's job to run")
    here = await harness.member("carol").slash(harness.channel, "status")
    there = await bob.slash(elsewhere, "status")
    here_fields = {f.name: f.value for f in here.response.embeds[0].fields}
    there_fields = {f.name: f.value for f in there.response.embeds[0].fields}
    assert here_fields["Running"] == f"an image for <@{alice.id}>"
    assert str(alice.id) not in there_fields["Running"]
    assert there_fields["Running"] == "an image from elsewhere"
    for fields in (here_fields, there_fields):
        assert fields["Model"] == tiny_model_dir.name
        assert str(tiny_model_dir) not in str(fields)
    await harness.wait_jobs()

    # The embed under the image and Details show the same name, never the path.
    message = harness.message(first.response.id)
    (embed,) = message.embeds
    assert embed.footer.text == tiny_model_dir.name
    details = await alice.click(message, label="Details")
    values = {f.name: f.value for f in details.response.embeds[0].fields}
    assert values["Model"] == tiny_model_dir.name
    assert str(tiny_model_dir) not in str(values)
