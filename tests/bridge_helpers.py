"""Helpers for the bridge tests: processes that log to a file, and an operator on the other side
of the bridge's topics (what the policy node sees and sends), over real DDS on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from node_helpers import ROOT, FakeRobot, dds_env

from robot_node.ros import messages as m
from robot_node.ros import port
from robot_node.ros.dds import DdsPort
from sim.bridge import COMMAND_QOS

HOME = np.array([0.22, 0.0, 0.18])  # where every episode starts (sim/robot.py HOME_POSITION)


def start(exe: str, args: list[str], domain_id: int, log: Path) -> subprocess.Popen:
    """A console script of this package as a real subprocess on a private loopback DDS domain,
    its output in `log` (a file, so a chatty process never blocks on a full pipe), which the
    process carries as `.log`."""
    env = {**os.environ, **dds_env(domain_id), "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with open(log, "w") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name(exe)), *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    process.log = log
    return process


def running(*processes: subprocess.Popen) -> bool:
    """True while all run; fails the test with a process's output as soon as one has exited."""
    for process in processes:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode}:\n{Path(process.log).read_text()[-3000:]}")
    return True


def stop(process: subprocess.Popen, timeout: float = 15.0) -> str:
    """SIGTERM, wait (SIGKILL if it does not exit), and return what it printed."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return Path(process.log).read_text()


class Operator:
    """The node's side of the bridge's topics: records everything the bridge publishes (and what
    a node publishes to it), sends commands and reset requests. `on_image`, when set, runs on
    the spin thread as each image arrives: a closed-loop controller answers within the period."""

    def __init__(self, domain_id: int) -> None:
        self.port = DdsPort("operator", domain_id=domain_id)
        self.images: list[m.Image] = []
        self.joint_states: list[m.JointState] = []
        self.ee: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.readies: list[float] = []
        self.commands: list[list[float]] = []
        self.resets: list[float] = []
        self.diagnostics: list[m.DiagnosticArray] = []
        self.on_image: Callable[[m.Image], None] | None = None
        self.command = self.port.create_publisher(m.Float64MultiArray, "command", COMMAND_QOS)
        self.reset = self.port.create_publisher(m.Empty, "episode/reset", port.DEFAULT)
        subscribe = self.port.create_subscription
        subscribe(m.JointState, "joint_states", port.SENSOR_DATA, self.joint_states.append)
        subscribe(m.PointStamped, "ee_position", port.SENSOR_DATA, lambda p: self.ee.append(np.array([p.x, p.y, p.z])))
        subscribe(m.Float32, "reward", port.DEFAULT, lambda r: self.rewards.append(r.data))
        subscribe(m.Empty, "episode/ready", port.DEFAULT, lambda _: self.readies.append(time.monotonic()))
        subscribe(m.Float64MultiArray, "command", port.DEFAULT, lambda c: self.commands.append(list(c.data)))
        subscribe(m.Empty, "episode/reset", port.DEFAULT, lambda _: self.resets.append(time.monotonic()))
        subscribe(m.DiagnosticArray, "/diagnostics", port.DEFAULT, self.diagnostics.append)
        subscribe(m.Image, "camera/image_raw", port.SENSOR_DATA, self._image)
        self.port.spin_in_background()

    def _image(self, image: m.Image) -> None:
        self.images.append(image)
        if self.on_image is not None:
            self.on_image(image)

    def send(self, values: list[float]) -> None:
        self.command.publish(m.Float64MultiArray(list(values)))

    def ee_now(self) -> np.ndarray:
        return self.ee[-1]

    status = FakeRobot.status  # the newest DiagnosticStatus named ...suffix, from self.diagnostics

    def close(self) -> None:
        self.port.shutdown()
