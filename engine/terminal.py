"""What ``python -m engine generate`` shows on a terminal while it renders: one line that a
carriage return rewrites, with the step, a bar, the percentage and the time left.

Only on a terminal: piped or logged output (a harness, a CI log) stays free of carriage returns.
"""

from __future__ import annotations

from typing import TextIO

BAR_WIDTH = 24


class StepBar:
    """Draws the steps on ``stream``: the job's ``JobControl`` (``engine.generator``) on the
    command line."""

    previews = False  # a terminal shows no pictures

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._on = stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream: stay quiet
            self._on = False
        self._drawn = False

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        if not self._on or total <= 0:
            return
        step = max(0, min(step, total))
        filled = round(BAR_WIDTH * step / total)
        left = max(0.0, (total - step) * (elapsed_s / step if step > 0 else 0.0))
        line = (
            f"\rstep {step}/{total} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
            f"{100 * step // total:3d}%  {_seconds(left)} left "
        )
        self._stream.write(line)
        self._stream.flush()
        self._drawn = True

    @property
    def followed(self) -> bool:
        """Whether the steps are worth reporting: only on a terminal."""
        return self._on

    def stop_reason(self) -> None:
        """The command line never stops a job half way (Ctrl-C ends the process)."""
        return None

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on a line of its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _seconds(value: float) -> str:
    if value >= 60:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value:.0f}s"
