"""Hot swap: offered weights are checked on a background thread, and the control loop picks up
the new runner between two ticks. A refused model is logged with its reason and never retried;
the node keeps acting with the last good one throughout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from robot_node.link_interface import PolicyWeights
from robot_node.policy import ModelRejected, PolicyRunner
from robot_node.ros.port import Logger


class ModelSwapper:
    def __init__(self, load: Callable[[PolicyWeights], PolicyRunner], logger: Logger) -> None:
        self._load, self._logger = load, logger
        self._lock = threading.Lock()
        self._offered: PolicyWeights | None = None  # newest offer not yet picked up by the worker
        self._ready: PolicyRunner | None = None
        self._worker: threading.Thread | None = None
        self.highest_offered = -1  # every version up to this one has been (or is being) looked at
        self.rejected = 0
        self.last_rejection = ""

    def offer(self, weights: PolicyWeights) -> None:
        """Start checking `weights`; an older offer still waiting is dropped (conflation)."""
        with self._lock:
            self.highest_offered = max(self.highest_offered, weights.version)
            self._offered = weights
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="model-loader", daemon=True)
                self._worker.start()

    def take_ready(self) -> PolicyRunner | None:
        """The newest runner that passed its checks since the last call, if any."""
        with self._lock:
            runner, self._ready = self._ready, None
        return runner

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._worker is not None

    def join(self, timeout: float | None = None) -> None:
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                weights, self._offered = self._offered, None
                if weights is None:
                    self._worker = None
                    return
            try:
                runner = self._load(weights)
            except Exception as exc:  # anything but a clean pass is a refusal; the worker lives on
                reason = exc.reason if isinstance(exc, ModelRejected) else f"check failed: {exc!r}"
                with self._lock:
                    self.rejected += 1
                    self.last_rejection = f"v{weights.version}: {reason}"
                self._logger.error(f"refused policy version {weights.version}: {reason}")
                continue
            with self._lock:
                if self._ready is None or runner.version > self._ready.version:
                    self._ready = runner
            self._logger.info(f"policy version {weights.version} passed its checks; swapping at the next tick")
