"""The control loop with a real ONNX policy, an in-process link and a hand-driven clock:
staleness, e-stop, episodes and transitions, NaN handling, bad input, hot swap, triggers."""

import numpy as np
import pytest
from node_helpers import OBS, ListLogger, constant_model, image_msg, weights

from robot_node.control import ERROR, ESTOP, RUNNING, STALE, WAITING, ControlLoop
from robot_node.diagnostics import build_statuses
from robot_node.link_interface import InProcessLink
from robot_node.params import NodeParams
from robot_node.policy import load_policy_file
from robot_node.ros.messages import Bool, DiagnosticStatus, Empty, Float32, JointState

TARGET = [0.1, -0.2, 0.3, 0.5]


class Rig:
    """A control loop whose clock, inputs and timer the test drives."""

    def __init__(self, tmp_path, target=TARGET, capacity=1000, **params):
        path = tmp_path / "policy.onnx"
        path.write_bytes(constant_model(target, version=1, **params.pop("model", {})))
        self.params = NodeParams(model_path=str(path), explore=False, seed=0, max_action_change=[2.0], **params)
        self.link = InProcessLink(capacity=capacity)
        self.logger = ListLogger()
        self.now = 100.0
        self.commands, self.resets = [], 0
        self.commands_at_reset = []  # how many commands had gone out at each reset request
        self.loop = ControlLoop(
            self.params, load_policy_file(path), self.link, self.logger,
            publish_command=self.commands.append, request_reset=self._reset, clock=lambda: self.now,
        )
        self.loop.activate()

    def _reset(self):
        self.resets += 1
        self.commands_at_reset.append(len(self.commands))

    def feed(self, pixel=100, joints=(("joint_b", 0.2), ("joint_a", 0.1))):
        self.loop.on_joint_state(JointState([n for n, _ in joints], [v for _, v in joints]))
        self.loop.on_image(image_msg(pixel))

    def step(self, dt=0.1, pixel=100):
        """Advance the clock; a fresh image and joint state arrive (pixel=None: nothing arrives); tick."""
        self.now += dt
        if pixel is not None:
            self.feed(pixel)
        self.loop.on_timer()

    def start_episode(self):
        self.step()
        self.loop.on_ready(Empty())
        self.step()
        assert self.loop.mode == RUNNING


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_nothing_is_commanded_until_the_reset_is_ready(rig):
    for _ in range(3):
        rig.step()
    assert rig.commands == [] and rig.loop.mode == WAITING and rig.resets == 1
    rig.step(dt=2.0)  # reset_retry_s: ask again
    assert rig.resets == 2
    rig.loop.on_ready(Empty())
    rig.step()
    assert rig.commands == [pytest.approx(TARGET, abs=1e-6)]


def test_a_ready_nobody_asked_for_is_ignored(tmp_path):
    rig = Rig(tmp_path)
    rig.loop.on_ready(Empty())  # before the node asked for a reset
    rig.step()
    assert rig.loop.mode == WAITING and rig.loop.counters["ready_ignored"] == 1


def test_stale_image_holds_truncates_and_resumes(tmp_path):
    rig = Rig(tmp_path, require_ready=False)
    rig.step()
    rig.step()
    rig.step()
    assert rig.commands[-1] == pytest.approx(TARGET, abs=1e-6)
    rig.step(pixel=None)  # 0.1 s old: still fresh (limit: two periods)
    rig.step(pixel=None)
    rig.step(pixel=None)  # 0.3 s old: stale
    assert rig.loop.mode == STALE
    assert rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])  # motion held, grip kept
    transitions = rig.link.drain()
    assert transitions[-1].truncated and not transitions[-1].terminal
    assert transitions[-1].next_image is not None
    holds = len(rig.commands)
    rig.step(pixel=None)
    assert len(rig.commands) == holds + 1  # hold is re-sent every tick while stale
    rig.step()
    rig.step()
    assert rig.loop.mode == RUNNING and rig.commands[-1] == pytest.approx(TARGET, abs=1e-6)
    assert rig.loop.episodes.counters["episodes"] == 2


def test_estop_holds_until_explicitly_released(rig):
    rig.start_episode()
    rig.step()
    rig.loop.on_estop(Bool(True))
    resets = rig.resets
    for _ in range(5):
        rig.step(dt=1.0)
    assert rig.loop.mode == ESTOP and rig.loop.estop
    assert all(c == pytest.approx([0.0, 0.0, 0.0, 0.5]) for c in rig.commands[-5:])
    assert rig.resets == resets  # no reset motion while the e-stop is engaged
    assert rig.link.drain()[-1].truncated
    rig.loop.on_estop(Bool(False))
    rig.step()
    assert rig.resets == resets + 1 and rig.loop.mode == WAITING  # a fresh episode needs a reset first
    rig.loop.on_ready(Empty())
    rig.step()
    assert rig.loop.mode == RUNNING


def test_time_limit_truncates_with_the_final_observation(tmp_path):
    rig = Rig(tmp_path, max_episode_steps=3)
    rig.start_episode()
    first_id = rig.loop.episodes.episode_id
    for _ in range(3):
        rig.step()
    transitions = rig.link.drain()
    assert [t.step for t in transitions] == [0, 1, 2]
    assert [t.truncated for t in transitions] == [False, False, True]
    assert all(t.next_image is None for t in transitions[:2])
    assert transitions[2].next_image.shape == (64, 64, 3)
    assert rig.loop.mode == WAITING and rig.resets == 2  # asked at once, not a tick later
    rig.loop.on_ready(Empty())
    rig.step()
    rig.step()
    assert rig.loop.episodes.episode_id != first_id and rig.link.drain()[0].step == 0


def test_between_episodes_the_hold_goes_out_once_and_ready_clears_the_old_gripper(tmp_path):
    """A hold sent after the scene was reset would carry the old episode's gripper into the new
    one. The node holds once when the episode ends, before asking for the reset, re-sends
    nothing while the reset runs, and forgets its last command when ready arrives."""
    rig = Rig(tmp_path, max_episode_steps=2)
    rig.start_episode()
    rig.step()
    rig.step()  # the time limit ends the episode
    assert rig.loop.mode == WAITING
    assert rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])  # motion stops, the grip is kept
    assert rig.commands_at_reset[-1] == len(rig.commands)  # the hold went out before the reset request
    sent = len(rig.commands)
    for _ in range(3):
        rig.step()
    assert len(rig.commands) == sent  # nothing re-sent into the reset
    for _ in range(3):
        rig.step(pixel=None)  # the camera stalls: stale holds are re-sent every tick
    assert rig.loop.mode == STALE and len(rig.commands) > sent
    sent = len(rig.commands)
    rig.loop.on_ready(Empty())  # the scene is reset while the camera is still stalled
    rig.step(pixel=None)
    assert rig.loop.mode == STALE and len(rig.commands) == sent  # no hold of the old gripper any more
    rig.step()
    assert rig.loop.mode == RUNNING and rig.commands[-1] == pytest.approx(TARGET, abs=1e-6)


def test_success_ends_the_episode_as_terminal_with_the_summed_reward(tmp_path):
    rig = Rig(tmp_path, terminate_on_success=True)
    rig.start_episode()
    rig.step()
    rig.loop.on_reward(Float32(0.25))
    rig.loop.on_reward(Float32(1.0))
    rig.step()
    last = rig.link.drain()[-1]
    assert last.terminal and not last.truncated and last.reward == pytest.approx(1.25)
    assert rig.loop.episodes.counters["successes"] == 1 and rig.loop.mode == WAITING


def test_transitions_carry_what_the_robot_did(rig):
    rig.start_episode()
    rig.step()
    t = rig.link.drain()[0]
    assert t.image.shape == OBS.image_shape and t.image.dtype == np.uint8 and np.all(t.image == 100)
    np.testing.assert_allclose(t.state, [0.1, 0.2])  # in the spec's joint order, not the message's
    np.testing.assert_allclose(t.action, TARGET, atol=1e-6)
    assert t.policy_version == 1 and t.episode_id.startswith("robot-") and t.step == 0 and t.reward == 0.0


def test_a_full_link_queue_is_counted_and_never_blocks_a_tick(tmp_path):
    rig = Rig(tmp_path, capacity=2, require_ready=False, max_episode_steps=100)
    for _ in range(8):
        rig.step()
    assert len(rig.link.drain()) == 2
    assert rig.loop.counters["transitions_dropped"] == 5 and len(rig.commands) == 8


def test_nan_output_holds_and_reports_error(tmp_path):
    rig = Rig(tmp_path, require_ready=False, model={"nan_above": 0.9})
    rig.step()
    rig.step()
    rig.step(pixel=255)  # the model turns NaN on a white image
    assert rig.loop.mode == ERROR and rig.loop.counters["nonfinite"] == 1
    assert rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])
    control = build_statuses("policy_node", rig.loop, rig.link.status())[0]
    assert control.level == DiagnosticStatus.ERROR and "NaN" in control.message
    rig.step()
    assert rig.loop.mode == RUNNING


def test_bad_inputs_are_counted_and_never_used(tmp_path):
    rig = Rig(tmp_path, require_ready=False)
    rig.loop.on_image(image_msg(100, encoding="yuv422"))
    rig.loop.on_joint_state(JointState(["joint_a"], [0.1]))  # joint_b missing
    rig.loop.on_joint_state(JointState(["joint_a", "joint_b"], [0.1, float("nan")]))
    rig.loop.on_reward(Float32(float("nan")))
    rig.step(pixel=None)
    assert rig.loop.mode == STALE and rig.commands == []
    c = rig.loop.counters
    assert (c["bad_images"], c["bad_joint_states"], rig.loop.episodes.counters["bad_rewards"]) == (1, 2, 1)
    assert any("unsupported encoding" in line for line in rig.logger.lines)


def test_hot_swap_between_ticks_and_refusal_keeps_the_last_good_model(tmp_path):
    rig = Rig(tmp_path, require_ready=False, max_episode_steps=1000)
    rig.step()
    rig.link.push_weights(weights(constant_model([-0.4, 0.4, -0.4, 0.4], version=2), 2))
    rig.step()  # the tick offers v2 to the loader and keeps acting with v1
    assert rig.commands[-1] == pytest.approx(TARGET, abs=1e-6)
    rig.loop.swapper.join(timeout=30)
    rig.step()
    assert rig.loop.runner.version == 2 and rig.commands[-1] == pytest.approx([-0.4, 0.4, -0.4, 0.4], abs=1e-6)
    rig.link.push_weights(weights(constant_model([0.0] * 4, version=3, nan_above=0.0), 3))
    rig.step()
    rig.loop.swapper.join(timeout=30)
    rig.step()
    rig.step()
    assert rig.loop.runner.version == 2 and rig.loop.swapper.rejected == 1
    assert rig.loop.swapper.highest_offered == 3  # not offered again every tick
    versions = [t.policy_version for t in rig.link.drain()]
    assert versions[0] == 1 and versions[-1] == 2
    policy = build_statuses("policy_node", rig.loop, rig.link.status())[1]
    assert policy.values["version"] == "2" and "not finite" in policy.values["last_refusal"]
    assert policy.level == DiagnosticStatus.WARN


def test_image_trigger_acts_on_arrival_and_the_timer_only_watches(tmp_path):
    rig = Rig(tmp_path, require_ready=False, trigger="image")
    rig.feed()
    rig.feed()
    assert len(rig.commands) == 2  # one action per image
    rig.now += 0.1
    rig.loop.on_timer()
    assert len(rig.commands) == 2  # fresh image: the timer leaves the acting to the images
    rig.now += 0.5
    rig.loop.on_timer()
    assert rig.loop.mode == STALE and rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])


def test_late_timer_ticks_are_counted_as_missed(rig):
    rig.step()
    rig.step(dt=0.12)  # jitter, not a miss
    rig.step(dt=0.35)  # two ticks missed
    assert rig.loop.counters["missed_ticks"] == 2


def test_deactivate_truncates_and_holds(tmp_path):
    rig = Rig(tmp_path, require_ready=False)
    rig.step()
    rig.step()
    rig.loop.deactivate()
    assert rig.link.drain()[-1].truncated and rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])
    rig.step()
    assert rig.commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5])  # inactive: no more acting


def test_episode_tracker_counts_what_it_cannot_credit():
    from robot_node.episodes import EpisodeTracker, Observation

    tracker = EpisodeTracker("arm", max_steps=10, success_reward=1.0, terminate_on_success=False)
    assert not tracker.add_reward(1.0)  # no step taken yet
    tracker.start()
    obs = Observation(np.zeros((2, 2, 3), np.uint8), np.zeros(0, np.float32), 1.0)
    tracker.act(obs, np.zeros(4, np.float32), policy_version=3)
    assert not tracker.add_reward(float("inf"))
    assert tracker.add_reward(1.0) and tracker.add_reward(2.0)
    step0 = tracker.observe(obs)
    tracker.act(obs, np.zeros(4, np.float32), policy_version=3)
    tracker.add_reward(1.0)
    step1 = tracker.observe(obs)
    assert (step0.reward, step0.terminal, step1.terminal) == (3.0, False, False)  # success need not end it
    assert tracker.running and tracker.counters["successes"] == 1  # one successful episode, not two steps
    assert tracker.counters["rewards_outside_episode"] == 1 and tracker.counters["bad_rewards"] == 1


def test_diagnostics_report_staleness_and_inference_latency(tmp_path):
    rig = Rig(tmp_path, require_ready=False)
    rig.step()
    rig.step()
    rig.now += 0.05
    control = build_statuses("policy_node", rig.loop, rig.link.status())[0]
    assert control.values["image_age_s"] == "0.050"
    assert float(control.values["inference_ms_p50"]) > 0 and control.values["mode"] == "running"
