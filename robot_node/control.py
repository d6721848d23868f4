"""The control loop: newest image -> policy -> safety -> command, one tick at a time.

Subscriptions only store the newest input (cheap, on arrival); each tick decides. A tick holds
the arm instead of acting when the e-stop is engaged (until it is released), when the newest
image or joint state is older than the age limit (STALE), between episodes, and when the policy
gives NaN/inf (ERROR). Stale, e-stop and error holds are re-sent every tick; between episodes
the hold is sent once, when the episode ends, and `episode/ready` (the scene is reset) clears
the last command, so nothing of the old episode (its gripper) is sent into the new one.
Every acted step becomes a transition for the link, handed over without blocking. New weights
from the link are checked on a background thread and swapped in at the start of a tick, so no
tick ever waits for a model to load.

The loop knows nothing of ROS: it publishes through the two callables it is given.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_node.episodes import EpisodeTracker, Observation
from robot_node.hotswap import ModelSwapper
from robot_node.link_interface import TrainerLink, Transition
from robot_node.params import NodeParams
from robot_node.policy import PolicyRunner, load_policy
from robot_node.preprocess import ImageError, check_image, to_policy_input
from robot_node.ros.messages import Bool, Empty, Float32, Image, JointState, PointStamped
from robot_node.ros.port import Logger
from robot_node.safety import NONFINITE, SafetyFilter, SafetyLimits
from robot_node.throttled_log import ThrottledLog

# What the loop is doing, as shown in /diagnostics.
INACTIVE, RUNNING, WAITING, STALE, ESTOP, ERROR = "inactive", "running", "waiting", "stale", "e-stop", "error"
_LOG_INTERVAL_S = 5.0


@dataclass
class _Latest:
    value: Any
    arrival: float  # loop clock (monotonic) when it arrived
    stamp: float  # its header stamp, else the wall-clock arrival time


class ControlLoop:
    def __init__(
        self,
        params: NodeParams,
        runner: PolicyRunner,
        link: TrainerLink,
        logger: Logger,
        *,
        publish_command: Callable[[list[float]], None],
        request_reset: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params, self.runner, self.link, self.logger = params, runner, link, logger
        self._publish_command, self._request_reset, self.clock = publish_command, request_reset, clock
        self.observation_spec, self.action_spec = runner.observation_spec, runner.action_spec
        self.safety = SafetyFilter(SafetyLimits.from_params(params, self.action_spec), self.action_spec)
        self.episodes = EpisodeTracker(
            params.robot_id, params.max_episode_steps, params.success_reward, params.terminate_on_success
        )
        self.swapper = ModelSwapper(self._load, logger)
        self.rng = np.random.default_rng(None if params.seed < 0 else params.seed)
        self._log = ThrottledLog(logger, _LOG_INTERVAL_S, clock)
        self.active = False
        self.estop = False
        self.mode, self.mode_detail = INACTIVE, ""
        self._image: _Latest | None = None
        self._state: _Latest | None = None
        self._ee_position: _Latest | None = None
        self._reset_requested_at: float | None = None
        self._ready = False
        self._last_timer: float | None = None
        self.tick_times: collections.deque[float] = collections.deque(maxlen=64)
        self.inference_ms: collections.deque[float] = collections.deque(maxlen=256)
        self.counters: collections.Counter[str] = collections.Counter()

    # --- inputs (subscription callbacks) ----------------------------------------------------

    def on_image(self, msg: Image) -> None:
        try:
            check_image(msg)
        except ImageError as exc:
            self._bad_input("bad_images", f"dropped an image: {exc}")
            return
        self._image = self._latest(msg, msg.stamp)
        if self.params.trigger == "image":
            self.tick()

    def on_joint_state(self, msg: JointState) -> None:
        names = self.observation_spec.state_names
        if not names:
            return
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [name for name in names if name not in index]
        if missing or len(msg.position) != len(msg.name):
            problem = f"lacks joints {missing}" if missing else f"has {len(msg.name)} names but {len(msg.position)} positions"
            self._bad_input("bad_joint_states", f"dropped a joint state that {problem}")
            return
        state = np.array([msg.position[index[name]] for name in names], dtype=np.float32)
        if not np.all(np.isfinite(state)):
            self._bad_input("bad_joint_states", "dropped a joint state with NaN/inf positions")
            return
        self._state = self._latest(state, msg.stamp)

    def on_ee_position(self, msg: PointStamped) -> None:
        position = np.array([msg.x, msg.y, msg.z])
        if not np.all(np.isfinite(position)):
            self._bad_input("bad_ee_positions", "dropped a NaN/inf end-effector position")
            return
        self._ee_position = self._latest(position, msg.stamp)

    def on_reward(self, msg: Float32) -> None:
        if not self.episodes.add_reward(float(msg.data)) and not np.isfinite(msg.data):
            self._log.warning("bad_rewards", f"dropped a non-finite reward {msg.data}")

    def on_ready(self, _msg: Empty) -> None:
        if self._reset_requested_at is None:
            self.counters["ready_ignored"] += 1  # nobody asked: a stray or duplicate ready
            return
        self._ready = True
        # The scene was reset: the last command (the old episode's gripper) no longer describes the
        # arm, so it must not be re-sent by a hold nor rate-limit the new episode's first action.
        self.safety.forget()

    def on_estop(self, msg: Bool) -> None:
        if msg.data and not self.estop:
            self.logger.warning("E-STOP engaged: holding until it is released (false on the e-stop topic)")
            self.counters["estops"] += 1
        elif not msg.data and self.estop:
            self.logger.info("e-stop released")
        self.estop = bool(msg.data)

    # --- lifecycle --------------------------------------------------------------------------

    def activate(self) -> None:
        self.active, self._last_timer = True, None
        self._set_mode(WAITING, "activated")

    def deactivate(self) -> None:
        """End the episode and hold the arm; the node then stops commanding."""
        if self.episodes.running:
            self._submit(self.episodes.truncate(self._observation()))
        self._hold(INACTIVE, "deactivated")
        self.active = False

    # --- ticks ------------------------------------------------------------------------------

    def on_timer(self) -> None:
        """The control timer. With trigger=image it only watches for staleness."""
        now = self.clock()
        if self._last_timer is not None:
            periods = (now - self._last_timer) / self.params.period_s
            if periods > 1.5:
                self.counters["missed_ticks"] += int(round(periods)) - 1
        self._last_timer = now
        if self.params.trigger == "timer" or self._staleness(now):
            self.tick()

    def tick(self) -> None:
        if not self.active:
            return
        now = self.clock()
        self.tick_times.append(now)
        self.counters["ticks"] += 1
        self._swap_policy()
        problem = "e-stop engaged" if self.estop else self._staleness(now)
        if problem and self.episodes.has_pending:
            self._submit(self.episodes.truncate(self._observation()))
            self.logger.warning(f"episode {self.episodes.episode_id} truncated: {problem}")
        if not self.episodes.running and not self.estop:
            self._advance_reset(now, may_start=problem is None)
        if problem:
            self._hold(ESTOP if self.estop else STALE, problem)
            return
        if not self.episodes.running:
            # The hold went out when the episode ended (or the arm was held since): between
            # episodes the reset procedure owns the arm, and nothing is re-sent into its reset.
            self._set_mode(WAITING, "waiting for episode/ready")
            return
        observation = self._observation()
        self._submit(self.episodes.observe(observation))
        if not self.episodes.running:  # that step ended it: success or time limit
            self._hold(WAITING, "episode ended, reset requested")  # before the reset request
            self._advance_reset(now, may_start=False)
            return
        self._act(observation, now)

    def _act(self, observation: Observation, now: float) -> None:
        start = time.perf_counter()
        try:
            out = self.runner.infer(observation.image, observation.state)
            proposed = out.sample(self.rng) if self.params.explore else out.action
        except Exception as exc:  # a model failing at run time is treated like a NaN output: hold
            self._log.warning("inference_errors", f"policy v{self.runner.version} failed: {exc!r}")
            proposed = np.full(self.action_spec.dim, np.nan)
        self.inference_ms.append((time.perf_counter() - start) * 1e3)
        action, events = self.safety.apply(proposed, self._fresh(self._ee_position, now))
        self.counters.update(events)
        if NONFINITE in events:
            self._log.warning(NONFINITE, f"policy v{self.runner.version} gave NaN/inf: holding")
            self._set_mode(ERROR, f"policy v{self.runner.version} gave NaN/inf; holding")
        else:
            self._set_mode(RUNNING, "")
        if action is None:  # NaN before the arm was ever commanded: nothing to hold, no step taken
            return
        self._publish_command(self.safety.command(action))
        self.episodes.act(observation, action, self.runner.version)

    def _hold(self, mode: str, detail: str) -> None:
        action = self.safety.hold()
        if action is not None:
            self._publish_command(self.safety.command(action))
            self.counters["holds"] += 1
        if mode == STALE:
            self.counters["stale_ticks"] += 1
        self._set_mode(mode, detail)

    def _set_mode(self, mode: str, detail: str) -> None:
        if mode != self.mode:
            self.logger.info(f"{self.mode} -> {mode}{': ' + detail if detail else ''}")
        self.mode, self.mode_detail = mode, detail

    def _advance_reset(self, now: float, may_start: bool) -> None:
        """Between episodes: ask for a reset (again every reset_retry_s) and start on ready."""
        if self._reset_requested_at is None or now - self._reset_requested_at >= self.params.reset_retry_s:
            self._reset_requested_at = now
            self._request_reset()
            self.counters["reset_requests"] += 1
        if may_start and (self._ready or not self.params.require_ready):
            self._reset_requested_at, self._ready = None, False
            self.episodes.start()
            self.logger.info(f"episode {self.episodes.episode_id} started")

    # --- observations -----------------------------------------------------------------------

    def _staleness(self, now: float) -> str | None:
        """Why the loop cannot act on its inputs now, or None when they are fresh."""
        limit = self.params.image_age_limit_s
        inputs = [("image", self._image)]
        if self.observation_spec.state_dim:
            inputs.append(("joint state", self._state))
        for name, latest in inputs:
            if latest is None:
                return f"no {name} received yet"
            age = now - latest.arrival
            if age > limit:
                return f"newest {name} is {age:.2f} s old (limit {limit:.2f} s)"
        return None

    def image_age(self) -> float | None:
        return None if self._image is None else self.clock() - self._image.arrival

    def _observation(self) -> Observation | None:
        """The newest inputs as the policy sees them; preprocessing happens here, once per tick."""
        if self._image is None or (self.observation_spec.state_dim and self._state is None):
            return None
        image = to_policy_input(self._image.value, self.observation_spec.image_shape[:2])
        state = self._state.value if self.observation_spec.state_dim else np.zeros(0, np.float32)
        return Observation(image, state, self._image.stamp)

    def _fresh(self, latest: _Latest | None, now: float) -> Any:
        if latest is None or now - latest.arrival > self.params.image_age_limit_s:
            return None
        return latest.value

    def _latest(self, value: Any, stamp: float) -> _Latest:
        return _Latest(value, self.clock(), stamp if stamp > 0 else time.time())

    def _bad_input(self, kind: str, message: str) -> None:
        self.counters[kind] += 1
        self._log.warning(kind, message)

    # --- link and hot swap ------------------------------------------------------------------

    def _submit(self, transition: Transition | None) -> None:
        if transition is None:
            return
        try:
            accepted = self.link.submit(transition)
        except Exception as exc:  # a failing link must not stop the arm's control loop
            accepted = False
            self._log.warning("link_errors", f"link.submit raised: {exc!r}")
        self.counters["transitions_submitted" if accepted else "transitions_dropped"] += 1

    def _swap_policy(self) -> None:
        runner = self.swapper.take_ready()
        if runner is not None and runner.version > self.runner.version:
            self.logger.info(f"policy v{self.runner.version} -> v{runner.version} (train step {runner.train_step})")
            self.runner = runner
            self.counters["swaps"] += 1
        try:
            weights = self.link.latest_weights(max(self.runner.version, self.swapper.highest_offered))
        except Exception as exc:
            self._log.warning("link_errors", f"link.latest_weights raised: {exc!r}")
            return
        if weights is not None:
            self.swapper.offer(weights)

    def _load(self, weights: Any) -> PolicyRunner:
        return load_policy(
            weights,
            self.observation_spec,
            self.action_spec,
            max_bytes=int(self.params.max_model_mb * 2**20),
            threads=self.params.inference_threads,
        )
