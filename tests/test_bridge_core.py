"""The bridge's control period in-process (real SimRobot, real DDS port, the period called by
hand): commands in robot units drive the sim exactly like the gymnasium env, stale or bad
commands hold, resets reproduce env.reset(seed). Plus the HIL parameter file and launch file."""

import logging
import re
import shlex
import xml.etree.ElementTree as ET

import gymnasium as gym
import numpy as np
import pytest
from node_helpers import ROOT, dds_env, unique_domain_id

from robot_node.params import PARAM_SPECS, NodeParams
from robot_node.ros.dds import DdsPort
from robot_node.ros.messages import Empty, Float64MultiArray
from robot_node.ros.param_file import load_param_file, resolve_parameters
from sim.bridge import (
    BridgeConfig,
    CommandError,
    SimBridge,
    build_parser,
    command_scale,
    command_to_action,
    main,
    split_ros_args,
)
from sim.controller import ControlConfig
from sim.tasks import TASKS



def sim_hil_params():
    values = load_param_file(ROOT / "config" / "sim_hil.yaml", "policy_node")
    return NodeParams.from_values(resolve_parameters(PARAM_SPECS, values, {"model_path": "policy.onnx"}))


NODE_SCALE = np.array(sim_hil_params().action_scale)  # what a node with config/sim_hil.yaml multiplies by


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def port(monkeypatch):
    domain = unique_domain_id()
    for key, value in dds_env(domain).items():
        monkeypatch.setenv(key, value)
    port = DdsPort("sim_bridge", domain_id=domain)
    yield port
    port.shutdown()


@pytest.fixture
def make_bridge(port):
    bridges = []

    def make(**config):
        clock = Clock()
        bridge = SimBridge(port, BridgeConfig(**config), clock=clock)
        bridges.append(bridge)
        return bridge, clock

    yield make
    for bridge in bridges:
        bridge.close()


def command(bridge, action):
    """What the node sends for a normalised action: action_scale * action."""
    bridge.on_command(Float64MultiArray((np.asarray(action) * NODE_SCALE).tolist()))


def test_commands_in_robot_units_drive_the_sim_exactly_like_the_env(make_bridge):
    bridge, _ = make_bridge(seed=3)
    bridge.on_reset(Empty())
    bridge.on_period()  # the first reset uses --seed
    env = gym.make("o2o_rl/PickPlace-v0")
    obs, _ = env.reset(seed=3)
    np.testing.assert_array_equal(bridge.robot.render(), obs["pixels"])
    rng = np.random.default_rng(0)
    for _ in range(12):
        action = rng.uniform(-1, 1, 4).astype(np.float32)
        obs, reward, *_ = env.step(action)
        command(bridge, action)
        bridge.on_period()
        np.testing.assert_allclose(bridge.robot.joint_positions(), obs["state"], atol=1e-6)
    assert bridge.counters["commanded_steps"] == 12 and bridge.counters["held_steps"] == 0
    env.close()


def test_a_stale_or_missing_command_holds_still_with_the_gripper_unchanged(make_bridge):
    bridge, clock = make_bridge(speed=2.0)
    assert bridge.period_s == pytest.approx(0.05) and bridge.command_timeout_s == pytest.approx(0.075)
    bridge.on_period()  # no command yet: hold
    command(bridge, [0.0, 0.0, 1.0, 1.0])  # up, close the gripper
    start = bridge.robot.ee_pos
    for t in (0.01, 0.06, 0.11):
        clock.t = t
        bridge.on_period()  # repeated while younger than the timeout, then hold
    assert bridge.counters["commanded_steps"] == 2
    assert bridge.robot.ee_pos[2] > start[2] + 0.03
    closed = bridge.robot.joint_positions()[-1]
    held = bridge.robot.ee_pos
    for _ in range(10):
        clock.t += 0.05
        bridge.on_period()
    np.testing.assert_allclose(bridge.robot.ee_pos, held, atol=2e-3)
    assert bridge.robot.joint_positions()[-1] == pytest.approx(closed, abs=1e-3) and closed < 0.005
    assert bridge.counters["held_steps"] == 1 + 1 + 10


@pytest.fixture
def log_lines():
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("sim_bridge")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_bad_commands_are_refused_counted_logged_once_and_hold(make_bridge, log_lines):
    bridge, clock = make_bridge()
    command(bridge, [1.0, 0.0, 0.0, -1.0])
    bridge.on_command(Float64MultiArray([0.01, 0.0, 0.0]))  # wrong length
    bridge.on_command(Float64MultiArray([0.01, float("nan"), 0.0, 1.0]))
    start = bridge.robot.ee_pos
    for _ in range(3):
        bridge.on_period()
    np.testing.assert_allclose(bridge.robot.ee_pos, start, atol=2e-3)  # the good command was dropped
    assert bridge.counters["refused_commands"] == 2 and bridge.counters["held_steps"] == 3
    refusals = [line for line in log_lines if "refused a command" in line]
    assert refusals == ["refused a command: command has 3 values, expected 4 (dx, dy, dz in m, gripper); holding"]
    clock.t += 10.0
    bridge.on_command(Float64MultiArray([]))
    assert "(1 more since the last report)" in log_lines[-1]


def test_commands_beyond_the_sims_range_are_saturated_and_counted(make_bridge, log_lines):
    bridge, _ = make_bridge(seed=0)  # the scene before any reset is seed 0's
    bridge.on_command(Float64MultiArray([0.3, 0.0, 0.0, 0.0]))  # a node with action_scale 0.3 m
    assert bridge.counters["saturated_commands"] == 1
    assert "Is the node's action_scale [0.03, 0.03, 0.03, 1.0]?" in log_lines[-1]
    bridge.on_period()
    env = gym.make("o2o_rl/PickPlace-v0")
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0]))  # one full-scale step, not ten
    np.testing.assert_allclose(bridge.robot.joint_positions(), obs["state"], atol=1e-6)
    env.close()


def test_command_conversion_refuses_what_it_cannot_apply():
    scale = command_scale(ControlConfig())
    np.testing.assert_allclose(command_to_action([0.015, -0.03, 0.0, 0.5], scale)[0], [0.5, -1.0, 0.0, 0.5])
    for bad in ([], [0.0] * 5, [0.0, 0.0, float("inf"), 0.0]):
        with pytest.raises(CommandError):
            command_to_action(bad, scale)


def test_each_reset_places_the_objects_of_the_next_seed_and_forgets_the_old_command(make_bridge):
    bridge, _ = make_bridge(seed=10)
    env = gym.make("o2o_rl/PickPlace-v0")
    for seed in (10, 11, 12):
        command(bridge, [1.0, 1.0, 1.0, 1.0])
        bridge.on_reset(Empty())
        bridge.on_period()
        _, info = env.reset(seed=seed)
        assert bridge.episode_seed == seed
        np.testing.assert_array_equal(bridge.robot.body_pos("object"), info["object_pos"])
    bridge.on_period()
    assert bridge.counters["held_steps"] == 1 and bridge.counters["episodes"] == 3
    np.testing.assert_allclose(bridge.robot.ee_pos, [0.22, 0.0, 0.18], atol=2e-3)
    env.close()


# --- the HIL parameters and launch file ---------------------------------------------------------


def test_sim_hil_parameters_match_the_simulator():
    params, control = sim_hil_params(), ControlConfig()
    assert params.action_scale == [control.max_step_m] * 3 + [1.0]
    assert params.workspace_enabled
    assert params.workspace_min == list(control.workspace_low) and params.workspace_max == list(control.workspace_high)
    assert params.max_episode_steps == TASKS["pick_place"].max_episode_steps
    assert params.control_rate_hz == 1 / control.control_period_s
    assert params.trigger == "image" and params.max_action_change == [2.0]


def test_the_launch_file_passes_the_bridge_options_it_parses_and_the_tasks_episode_length():
    root = ET.parse(ROOT / "launch" / "sim_hil.launch.xml").getroot()
    defaults = {arg.get("name"): arg.get("default") for arg in root.iter("arg")}
    bridge = next(node for node in root.iter("node") if node.get("exec") == "sim_bridge")
    args = re.sub(r"\$\(var (\w+)\)", lambda match: defaults[match.group(1)], bridge.get("args"))
    options = build_parser().parse_args(shlex.split(args))
    assert (options.task, options.image_size, options.seed, options.speed) == ("pick_place", 64, 0, 1.0)
    assert int(defaults["max_episode_steps"]) == TASKS[options.task].max_episode_steps


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--task", "stack"], "argument --task: invalid choice: 'stack'"),
        (["--speed", "0"], "argument --speed: must be positive, got 0"),
        (["--image-size", "50"], "argument --image-size: invalid choice: 50"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ],
)
def test_cli_errors_are_one_line_and_exit_nonzero(capsys, args, problem):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sim_bridge: error: ") and problem in lines[0]


def test_ros_arguments_appended_by_ros2_launch_are_split_off():
    own, ros = split_ros_args(["--task", "drawer_grasp", "--ros-args", "-r", "__node:=sim_bridge"])
    assert own == ["--task", "drawer_grasp"] and ros == ["--ros-args", "-r", "__node:=sim_bridge"]
    assert split_ros_args(["--speed", "2"]) == (["--speed", "2"], [])
