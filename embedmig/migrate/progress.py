"""Progress of long steps: a tqdm bar on a terminal, else a log line every ten seconds.

Whether bars are drawn is the caller's choice (the CLI: stderr is a terminal and no ``-q``), made
once on the ``Environment``; the runtime only counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("embedmig")

_EVERY = 10.0  # seconds between log lines


class Meter:
    """Counts ``unit`` toward ``total`` (None: unknown, then no ETA), starting at ``initial``
    (a resumed run starts at its checkpoint)."""

    def __init__(
        self, label: str, total: int | None, *, initial: int = 0, bar: bool, unit: str = "docs"
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = initial
        self._initial = initial
        self._started = self._logged = time.monotonic()
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=label, unit=f" {unit}", dynamic_ncols=True
            )

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._logged >= _EVERY:
            self._logged = time.monotonic()
            log.info("%s", self.describe())

    def describe(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self._started)
        rate = (self.done - self._initial) / elapsed
        line = f"{self.label}: {self.done:,}"
        if self.total is not None:
            line += f" of {self.total:,}"
        line += f" {self.unit} ({rate:,.0f}/s"
        if self.total is not None and rate > 0 and self.total > self.done:
            line += f", ETA {_duration((self.total - self.done) / rate)}"
        return line + ")"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
