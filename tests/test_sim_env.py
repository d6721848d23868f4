"""The gymnasium environments: API, specs, determinism, rendering, action semantics, rewards."""

import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers the o2o_rl/ environments)
from robot_node.spec import ActionSpec, ObservationSpec
from sim.controller import TOOL_DOWN, ControlConfig
from sim.env import ManipulationEnv
from sim.robot import STATE_JOINTS

ENV_IDS = ["o2o_rl/PickPlace-v0", "o2o_rl/DrawerGrasp-v0"]


@pytest.fixture
def env():
    env = gym.make("o2o_rl/PickPlace-v0")
    yield env
    env.close()


def rollout(env_id: str, seed: int, actions: np.ndarray) -> list:
    env = gym.make(env_id)
    obs, info = env.reset(seed=seed)
    steps = [(obs, info)]
    for action in actions:
        obs, _, _, _, info = env.step(action)
        steps.append((obs, info))
    env.close()
    return steps


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_passes_the_gymnasium_env_checker_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id, length", [("o2o_rl/PickPlace-v0", 40), ("o2o_rl/DrawerGrasp-v0", 50)])
def test_fixed_episode_length_truncates_and_never_terminates(env_id, length):
    env = gym.make(env_id)
    env.reset(seed=0)
    ends = []
    for _ in range(length):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        ends.append((terminated, truncated))
        assert reward in (0.0, 1.0) and reward == float(info["success"])
    assert ends[-1] == (False, True)
    assert not any(t or u for t, u in ends[:-1])
    env.close()


def test_specs_are_the_shared_contract_types_and_match_the_spaces(env):
    obs_spec, act_spec = env.unwrapped.observation_spec, env.unwrapped.action_spec
    assert isinstance(obs_spec, ObservationSpec) and isinstance(act_spec, ActionSpec)
    assert obs_spec.state_names == STATE_JOINTS
    assert act_spec.names == ("dx", "dy", "dz", "gripper") and (act_spec.low, act_spec.high) == (-1.0, 1.0)
    obs, info = env.reset(seed=0)
    assert obs["pixels"].shape == obs_spec.image_shape == env.observation_space["pixels"].shape
    assert obs["state"].shape == (obs_spec.state_dim,) and obs["state"].dtype == np.float32
    assert env.action_space.shape == (act_spec.dim,)
    assert info["ee_pos"].shape == (3,) and isinstance(info["success"], bool)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_with_a_seed_is_deterministic_and_seeds_move_the_object(env_id):
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 4)).astype(np.float32)
    first, second = rollout(env_id, 7, actions), rollout(env_id, 7, actions)
    for (obs_a, info_a), (obs_b, info_b) in zip(first, second):
        np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
        np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
        np.testing.assert_array_equal(info_a["object_pos"], info_b["object_pos"])
    other = rollout(env_id, 8, actions[:0])
    assert np.abs(other[0][1]["object_pos"] - first[0][1]["object_pos"]).max() > 1e-3


@pytest.mark.parametrize("size", [64, 84, 128])
def test_pixels_have_the_requested_size_and_change_when_the_arm_moves(size):
    env = gym.make("o2o_rl/PickPlace-v0", image_size=size)
    obs, _ = env.reset(seed=0)
    before = obs["pixels"]
    assert before.shape == (size, size, 3) and before.dtype == np.uint8
    for _ in range(4):
        obs, *_ = env.step(np.array([0.0, -1.0, -1.0, 1.0], np.float32))
    after = obs["pixels"]
    changed = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.01, f"only {changed.mean():.2%} of the pixels changed"
    # The scene is lit and coloured: the image is neither blank nor saturated.
    assert 20 < after.mean() < 235 and after.std() > 10
    env.close()


def test_env_rejects_unknown_tasks_sizes_and_render_modes():
    with pytest.raises(ValueError, match="unknown task"):
        gym.make("o2o_rl/PickPlace-v0", task="stack")
    with pytest.raises(ValueError, match="image_size"):
        gym.make("o2o_rl/PickPlace-v0", image_size=100)
    with pytest.raises(ValueError, match="render_mode"):
        ManipulationEnv(render_mode="human")


@pytest.mark.parametrize("bad", [[np.nan, 0, 0, 0], [0, 0, 0], [0, 0, np.inf, 0]])
def test_a_non_finite_or_misshapen_action_is_refused_and_the_env_keeps_working(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="4 finite numbers"):
        env.step(np.array(bad, np.float32))
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    assert np.isfinite(info["ee_pos"]).all()


def test_action_moves_the_hand_by_the_documented_metres_per_step_gripper_down(env):
    step = ControlConfig().max_step_m
    _, info = env.reset(seed=0)
    start = info["ee_pos"].copy()
    for _ in range(4):
        _, _, _, _, info = env.step(np.array([1.0, 0.0, 0.0, -1.0], np.float32))
    env.step(np.zeros(4, np.float32))  # let the servos catch up with the target
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    moved = info["ee_pos"] - start
    assert moved[0] == pytest.approx(4 * step, abs=0.006)
    assert np.abs(moved[1:]).max() < 0.006
    robot = env.unwrapped.robot
    site_rot = robot.data.site("grasp").xmat.reshape(3, 3)
    assert np.abs(site_rot - TOOL_DOWN).max() < 0.05  # still pointing straight down


def test_gripper_action_is_absolute_minus_one_open_plus_one_closed(env):
    obs, _ = env.reset(seed=0)
    opening = obs["state"][STATE_JOINTS.index("finger_left")]
    assert opening == pytest.approx(ControlConfig().gripper_open_m, abs=1e-3)
    for _ in range(2):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 1.0], np.float32))
    assert obs["state"][STATE_JOINTS.index("finger_left")] < 0.002
    for _ in range(2):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0], np.float32))
    assert obs["state"][STATE_JOINTS.index("finger_left")] == pytest.approx(0.02, abs=0.002)


def test_workspace_box_holds_the_hand_whatever_the_action(env):
    env.reset(seed=0)
    low, high = np.array(ControlConfig().workspace_low), np.array(ControlConfig().workspace_high)
    for action in ([0, 0, -1, 0], [1, 1, 1, 0], [-1, -1, 0, 0]):
        for _ in range(15):
            _, _, _, _, info = env.step(np.array(action, np.float32))
        assert (info["ee_pos"] > low - 0.01).all() and (info["ee_pos"] < high + 0.01).all()


def teleport_object(env, position) -> None:
    robot = env.unwrapped.robot
    robot.joint_qpos("object")[:] = (*position, 1.0, 0.0, 0.0, 0.0)
    robot.data.qvel[:] = 0.0


def test_pick_place_reward_is_one_with_the_object_in_the_tray_and_zero_elsewhere(env):
    _, info = env.reset(seed=0)
    tray = info["tray_pos"]
    teleport_object(env, (tray[0] + 0.03, tray[1] - 0.02, 0.03))
    rewards = [env.step(np.zeros(4, np.float32))[1] for _ in range(3)]
    assert rewards == [1.0, 1.0, 1.0]
    for outside in [(tray[0], tray[1] - 0.15, 0.02), (tray[0] + 0.15, tray[1], 0.02)]:
        teleport_object(env, outside)
        _, reward, _, _, info = env.step(np.zeros(4, np.float32))
        assert reward == 0.0 and not info["success"]


def test_drawer_grasp_rewards_only_a_lifted_object():
    env = gym.make("o2o_rl/DrawerGrasp-v0")
    _, info = env.reset(seed=0)
    assert info["drawer_opening"][0] == pytest.approx(0.0, abs=1e-3)
    _, reward, _, _, _ = env.step(np.zeros(4, np.float32))
    assert reward == 0.0  # the cube lies in the closed drawer
    task, robot = env.unwrapped.task, env.unwrapped.robot
    for height, lifted in [(0.15, True), (0.02, False)]:
        teleport_object(env, (0.3, -0.05, height))
        mujoco.mj_kinematics(robot.model, robot.data)
        assert task.success(robot) == lifted
    env.close()
