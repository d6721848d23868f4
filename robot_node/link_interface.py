"""The narrow interface between the control loop and the trainer link.

The node calls exactly two things per tick, and neither may block: `submit` a transition, and
ask for `latest_weights`. The ZeroMQ link (robot_node/link.py) and the in-process link used
by tests and single-process demos implement the same protocol, so the control loop never
knows which one it has.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from robot_node.spec import ActionSpec, ObservationSpec


@dataclass
class Transition:
    """One control step as the robot lived it.

    The observation is the one the action was computed from; the action is the normalised
    action actually sent after the safety layer (hold counts as the action that holds). The
    next observation is the next transition's observation, so frames travel once; only the
    last step of an episode carries the final observation in `next_image`/`next_state`.
    """

    episode_id: str  # unique across node restarts, e.g. "<boot id>-<counter>"
    step: int  # index within the episode, from 0
    image: np.ndarray  # uint8 [H, W, 3] RGB, already at the policy's input size
    state: np.ndarray  # float32 [S]
    action: np.ndarray  # float32 [A], in the action spec's bounds
    reward: float
    terminal: bool  # the task ended: do not bootstrap
    truncated: bool  # cut by time limit, reset or e-stop: bootstrap from next_image
    policy_version: int
    stamp: float  # robot clock, seconds, when the image was taken
    next_image: np.ndarray | None = None  # only when terminal or truncated
    next_state: np.ndarray | None = None

    @property
    def is_last(self) -> bool:
        return self.terminal or self.truncated


@dataclass(frozen=True)
class PolicyWeights:
    """A policy the trainer offers: the ONNX bytes and what they claim to be."""

    version: int
    train_step: int
    onnx: bytes
    sha256: str  # hex sha256 of `onnx`; the robot refuses bytes that do not match
    observation_spec: ObservationSpec
    action_spec: ActionSpec

    @classmethod
    def from_onnx(
        cls, onnx: bytes, *, version: int, train_step: int, observation_spec: ObservationSpec, action_spec: ActionSpec
    ) -> PolicyWeights:
        return cls(version, train_step, onnx, hashlib.sha256(onnx).hexdigest(), observation_spec, action_spec)

    @functools.cached_property
    def onnx_sha256(self) -> str:
        """The sha256 the bytes actually have, computed once per object: the link's check on
        arrival and the loader's check before a swap then cost one hash (25 ms for 41 MB)."""
        return hashlib.sha256(self.onnx).hexdigest()


@dataclass
class LinkStatus:
    """What the node reports about its link in /diagnostics."""

    connected: bool
    detail: str = ""  # one line: peer, last heartbeat age, reason for being disconnected
    counters: dict[str, int] = field(default_factory=dict)  # submitted, dropped, spooled, acked, ...


class TrainerLink(Protocol):
    def submit(self, transition: Transition) -> bool:
        """Hand over a transition without blocking; False if it was dropped (counted)."""

    def latest_weights(self, newer_than: int) -> PolicyWeights | None:
        """The newest weights whose version exceeds `newer_than`, or None. Never blocks."""

    def status(self) -> LinkStatus: ...

    def close(self) -> None: ...


class InProcessLink:
    """A link to a trainer in the same process: a bounded queue each way.

    Used by tests and by single-process demos. Like the real link, `submit` never blocks:
    when the queue is full the transition is dropped and counted.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[Transition] = collections.deque()
        self._capacity = capacity
        self._weights: PolicyWeights | None = None
        self.counters = {"submitted": 0, "dropped": 0}

    def submit(self, transition: Transition) -> bool:
        with self._lock:
            if len(self._queue) >= self._capacity:
                self.counters["dropped"] += 1
                return False
            self._queue.append(transition)
            self.counters["submitted"] += 1
            return True

    def latest_weights(self, newer_than: int) -> PolicyWeights | None:
        with self._lock:
            weights = self._weights
        return weights if weights is not None and weights.version > newer_than else None

    def status(self) -> LinkStatus:
        with self._lock:
            return LinkStatus(connected=True, detail="in-process", counters=dict(self.counters))

    def close(self) -> None:
        pass

    # The trainer's side.
    def push_weights(self, weights: PolicyWeights) -> None:
        """Offer new weights; an older offer not yet taken is replaced (conflation)."""
        with self._lock:
            if self._weights is None or weights.version > self._weights.version:
                self._weights = weights

    def drain(self) -> list[Transition]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        return items
