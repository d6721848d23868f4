"""Log a kind of problem once per interval, with how many were left unlogged since.

Bad input can arrive at the camera rate (or at link rate from a broken peer); one warning per
message would drown the log and cost a write per message. The node, the HIL bridge and both
ends of the link log bad input through this: the first of each kind is logged at once, later
ones within the interval are only counted, and the next logged line says how many there were.
Light on purpose (no numpy, no onnxruntime), so that any process can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class _WarningLogger(Protocol):
    """A ROS logger, the DDS adapter's logging.Logger, or any object with `warning(str)`."""

    def warning(self, message: str) -> None: ...


class ThrottledLog:
    def __init__(self, logger: _WarningLogger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._interval_s, self._clock = logger, interval_s, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, n: int = 1) -> None:
        """Log `message` unless `kind` was logged within the interval; `n` counts the items it is about."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + n
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        self._logger.warning(message + (f" ({more} more since the last report)" if more else ""))
