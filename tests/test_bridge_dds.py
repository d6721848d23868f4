"""`sim_bridge` alone as a real subprocess over DDS on loopback: it streams the robot's topics,
moves the way commands say, answers reset with ready, refuses bad commands without stopping,
and rewards a pick-and-place that the simulator's scripted policy performs over the topics."""

import gymnasium as gym
import numpy as np
import pytest
from bridge_helpers import HOME, Operator, running, start, stop
from node_helpers import dds_env, unique_domain_id, wait_until

from robot_node.ros.messages import Empty

from sim.robot import STATE_JOINTS
from sim.scripted import ScriptedPolicy, ScriptNoise

pytestmark = pytest.mark.integration

STEP_M = 0.03  # metres per control period at |a| = 1 (sim/controller.py ControlConfig)


class Bridge:
    """`sim_bridge ARGS` on a private domain, with an operator on the other side."""

    def __init__(self, args: list[str], log, domain: int) -> None:
        self.operator = Operator(domain)
        self.process = start("sim_bridge", ["--adapter", "dds", *args], domain, log)

    def stop(self) -> str:
        """Stop both; the bridge must exit cleanly. Returns what it printed."""
        self.operator.close()
        output = stop(self.process)
        assert self.process.returncode == 0 and "Traceback" not in output, output
        return output


@pytest.fixture
def bridge(tmp_path, monkeypatch):
    started = []

    def run(*args: str) -> Bridge:
        domain = unique_domain_id()
        for key, value in dds_env(domain).items():  # the operator's participant on loopback too
            monkeypatch.setenv(key, value)
        started.append(Bridge(list(args), tmp_path / f"bridge{len(started)}.log", domain))
        return started[-1]

    yield run
    for b in started:
        if b.process.poll() is None:
            b.stop()


def test_bridge_moves_on_command_holds_without_and_answers_reset_with_ready(bridge):
    b = bridge("--speed", "5", "--seed", "4")
    operator = b.operator
    wait_until(lambda: running(b.process) and len(operator.images) >= 3 and operator.ee, 60, "the bridge's first images")
    image, joints = operator.images[-1], operator.joint_states[-1]
    assert (image.height, image.width, image.encoding, len(image.data)) == (64, 64, "rgb8", 64 * 64 * 3)
    assert joints.name == list(STATE_JOINTS) and len(joints.position) == len(joints.velocity) == 6
    assert set(operator.rewards) == {0.0}  # one reward per step, nothing placed yet

    operator.reset.publish(Empty())
    wait_until(lambda: operator.readies, 10, "episode/ready after episode/reset")
    wait_until(lambda: at_home(operator), 5, "the hand at home")

    # Up at half speed with the gripper closing, re-sent on every image as a node would.
    operator.on_image = lambda _: operator.send([0.0, 0.0, 0.5 * STEP_M, 1.0])
    wait_until(lambda: operator.ee_now()[2] > HOME[2] + 0.03, 10, "the hand to rise 3 cm")
    wait_until(lambda: operator.joint_states[-1].position[-1] < 0.005, 10, "the gripper to close")
    # Silence: the command goes stale and the arm holds where it is, the gripper still closed.
    operator.on_image = None
    assert_holds(operator)
    assert operator.joint_states[-1].position[-1] < 0.005

    # Forward, then bad commands instead: each is refused and the arm holds, not keeps going.
    operator.on_image = lambda _: operator.send([0.5 * STEP_M, 0.0, 0.0, 1.0])
    x = operator.ee_now()[0]
    wait_until(lambda: operator.ee_now()[0] > x + 0.02, 10, "the hand to move forward 2 cm")
    bad = iter([[0.01, 0.0], [float("nan"), 0.0, 0.0, 1.0]] * 1000)
    operator.on_image = lambda _: operator.send(next(bad))
    assert_holds(operator)
    operator.on_image = None

    # A second reset: back home with the gripper open, and a ready for each request.
    operator.reset.publish(Empty())
    wait_until(lambda: len(operator.readies) == 2, 10, "the second ready")
    wait_until(lambda: at_home(operator) and operator.joint_states[-1].position[-1] > 0.035, 5, "home, gripper open")
    output = b.stop()
    assert "refused a command: command has 2 values, expected 4" in output
    assert "scene reset with seed 4" in output and "scene reset with seed 5" in output
    assert "0 refused" not in output.splitlines()[-1]  # the final status line counts them


def at_home(operator: Operator) -> bool:
    return bool(np.abs(operator.ee_now() - HOME).max() < 3e-3)


def assert_holds(operator: Operator, periods: int = 10) -> None:
    """After a few periods to settle, the hand stays within 2 mm for `periods` more."""
    images = len(operator.images)
    wait_until(lambda: len(operator.images) > images + 5, 10, "five more periods")
    held = operator.ee_now()
    wait_until(lambda: len(operator.images) > images + 5 + periods, 10, f"{periods} more periods")
    np.testing.assert_allclose(operator.ee_now(), held, atol=2e-3)


def test_scripted_pick_and_place_driven_over_the_topics_earns_reward(bridge):
    seed = 1
    _, info = gym.make("o2o_rl/PickPlace-v0").reset(seed=seed)
    b = bridge("--speed", "3", "--seed", str(seed))
    operator = b.operator
    wait_until(lambda: running(b.process) and operator.ee, 60, "the bridge's first images")
    script = ScriptedPolicy("pick_place", np.random.default_rng(0), ScriptNoise(motion_std=0.0, grasp_offset_std_m=0.0))
    script.reset("place")
    # Privileged positions from the env reset with the same seed: the cube stays put until it is
    # grasped, and the script only looks at it before then; the hand comes from ee_position.
    privileged = {"object_pos": info["object_pos"], "tray_pos": info["tray_pos"]}

    def act(_image):
        action = script.act({"ee_pos": operator.ee_now(), **privileged})
        operator.send((action * [STEP_M, STEP_M, STEP_M, 1.0]).tolist())

    operator.reset.publish(Empty())
    wait_until(lambda: operator.readies, 10, "episode/ready")
    first = len(operator.rewards)
    operator.on_image = act
    wait_until(lambda: 1.0 in operator.rewards[first:], 60, "reward 1.0 for the cube in the tray")
    assert operator.rewards[first:].index(1.0) < 40, "not within the task's 40 steps"
    assert script.phase in ("release", "wait")
