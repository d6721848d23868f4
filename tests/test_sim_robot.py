"""The simulated robot without gymnasium (what a ROS bridge drives), and the GL backend choice."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sim.controller import ARM_JOINTS, ControlConfig
from sim.robot import STATE_JOINTS, SimRobot


@pytest.fixture
def robot():
    robot = SimRobot("pick_place.xml", image_size=64)
    robot.reset()
    yield robot
    robot.close()


def test_core_acts_renders_and_reports_joint_states_by_name(robot):
    assert STATE_JOINTS == (*ARM_JOINTS, "finger_left")
    home = robot.joint_positions()
    assert home.dtype == np.float32 and home.shape == (len(STATE_JOINTS),)
    low, high = robot.joint_limits()
    assert (low < home).all() and (home < high).all()
    before = robot.render()
    for _ in range(3):
        robot.act(np.array([0.0, 0.0, 1.0, 1.0]))
    moved = robot.joint_positions()
    assert np.abs(moved[:5] - home[:5]).max() > 0.05  # the arm's joints moved
    assert moved[5] < 0.002  # gripper closed
    assert robot.render().shape == (64, 64, 3) and not np.array_equal(robot.render(), before)
    # One act is one control period of simulated time.
    assert robot.data.time == pytest.approx(3 * ControlConfig().control_period_s)


def test_reset_returns_the_arm_home_with_the_gripper_open(robot):
    for _ in range(5):
        robot.act(np.array([1.0, -1.0, -1.0, 1.0]))
    robot.reset()
    np.testing.assert_allclose(robot.ee_pos, [0.22, 0.0, 0.18], atol=1e-3)
    assert robot.joint_positions()[-1] == pytest.approx(ControlConfig().gripper_open_m)


def test_zero_action_holds_the_hand_still(robot):
    robot.settle(0.5)
    start = robot.ee_pos
    for _ in range(20):
        robot.act(np.zeros(4))
    assert np.abs(robot.ee_pos - start).max() < 1e-3


def test_without_mujoco_gl_sim_picks_an_offscreen_backend_that_renders():
    code = "import os, sim; from sim.robot import SimRobot; r = SimRobot('pick_place.xml'); r.reset(); img = r.render(); print(os.environ['MUJOCO_GL'], img.shape, img.std() > 10)"
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    backend, rest = result.stdout.split(" ", 1)
    assert backend in ("egl", "osmesa") and rest.strip() == "(64, 64, 3) True"
