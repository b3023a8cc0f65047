"""Every Redis key, channel and task name of one deployment, in one place.

The bot and the workers build their keys from this class only, so a renamed key cannot leave
one side reading what the other no longer writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.contract import TASK_EDIT, TASK_GENERATE

# The taskiq task the bot kicks and workers register.
TASK_NAME = "imagine.generate"


class RedisKeys:
    """Keys of one deployment; ``prefix`` (``IMAGINE_REDIS_PREFIX``) separates deployments."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:jobs"  # taskiq's job stream: text-to-image (every worker)
        self.group = f"{prefix}-workers"  # its consumer group (every worker)
        self.results = f"{prefix}:result"  # prefix of taskiq's result keys
        self.events = f"{prefix}:events"  # pub/sub channel: progress, starts, completions
        self.workers = f"{prefix}:workers"  # sorted set: consumer -> last heartbeat time

    @property
    def edit_stream(self) -> str:
        return self.stream_for(TASK_EDIT)

    def stream_for(self, task: str) -> str:
        """The stream of jobs of ``task``: text-to-image on the main one, every other task on
        its own (jobs go to exactly one stream, and a worker reads only the streams of what it
        can run, so it never takes a job it can't)."""
        return self.stream if task == TASK_GENERATE else f"{self.stream}:{task}"

    def streams_for(self, tasks: Iterable[str]) -> list[str]:
        """The streams a worker running these tasks reads: the rarer tasks' first, text-to-image
        (which every worker runs) last."""
        others = sorted(set(tasks) - {TASK_GENERATE})
        return [self.stream_for(task) for task in others] + [self.stream]

    def result(self, job_id: str) -> str:
        """The stored result envelope of a job (written by taskiq's result backend)."""
        return f"{self.results}:{job_id}"

    def marker(self, job_id: str) -> str:
        """Set by the bot when it hands a job to the broker; gone once the bot has the result."""
        return f"{self.prefix}:job:{job_id}"

    def claim(self, job_id: str) -> str:
        """The consumer name of the worker rendering the job (renewed while it runs)."""
        return f"{self.prefix}:claim:{job_id}"

    def done(self, job_id: str) -> str:
        """Set once the bot received the job's result: a redelivered copy is skipped."""
        return f"{self.prefix}:done:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Set by the bot to stop a job at its next step."""
        return f"{self.prefix}:cancel:{job_id}"

    def attempts(self, job_id: str) -> str:
        """Deliveries of a job so far (a job that keeps killing workers is failed)."""
        return f"{self.prefix}:attempts:{job_id}"

    def worker(self, consumer: str) -> str:
        """A worker's latest heartbeat (expires when the worker goes silent)."""
        return f"{self.prefix}:worker:{consumer}"
