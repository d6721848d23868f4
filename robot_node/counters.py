"""Thread-safe counters, and refusal of bad input that is counted per reason and logged sparingly
(through robot_node.throttled_log, which the node and the HIL bridge use too).

Both ends of the link count everything they drop or refuse, so an operator can see from
/diagnostics or the trainer's log what went wrong and how often, while a flood of bad
messages produces one log line per reason per interval instead of one per message.
"""

from __future__ import annotations

import logging
import threading

from robot_node.throttled_log import ThrottledLog


class Counters:
    """Named integer counters written by one thread and read by others."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name] = value

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Refusals:
    """Counts refused input under `refused.<reason>` and logs the first of each reason per interval."""

    def __init__(self, counters: Counters, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._counters = counters
        self._log = ThrottledLog(logger, interval_s)

    def refuse(self, reason: str, detail: str, n: int = 1) -> None:
        """Count `n` refused items (messages, transitions) for `reason`; log unless logged lately."""
        self._counters.inc("refused." + reason, n)
        self._log.warning(reason, f"refused ({reason}): {detail}", n)

    def total(self) -> int:
        return sum(v for k, v in self._counters.snapshot().items() if k.startswith("refused."))
