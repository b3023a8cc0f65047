"""``python -m engine.remote``: the operator's view of the GPU workers behind Redis.

    python -m engine.remote status [--wait SECONDS]
    python -m engine.remote generate "a red fox" --mode fast --out fox.png

This module is the command line only (``engine.redis.cli``); everything that speaks Redis, the
bot's ``RedisBackend`` included, lives in ``engine/redis/``. No torch on this path.
"""

from __future__ import annotations

from engine.redis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
