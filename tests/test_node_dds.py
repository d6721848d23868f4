"""The node end to end over real DDS on loopback: `o2o-robot` as a subprocess driven by a fake
robot (camera, joints, reset service), and the node logic in-process on the real DDS adapter
for a mid-run model swap through an in-process link."""

import contextlib
import time

import pytest
from node_helpers import (
    FakeRobot,
    constant_model,
    dds_env,
    start_robot,
    stop,
    unique_domain_id,
    wait_until,
    weights,
)

from robot_node.link_interface import InProcessLink
from robot_node.node import PolicyNode
from robot_node.ros.dds import DdsPort
from robot_node.ros.messages import Bool

pytestmark = pytest.mark.integration

TARGET = [0.1, -0.2, 0.3, 0.5]
HOLD = [0.0, 0.0, 0.0, 0.5]
FAST = ["-p", "diagnostics_rate_hz:=5.0", "-p", "reset_retry_s:=0.5"]


def close(values, target):
    return all(abs(a - b) < 1e-5 for a, b in zip(values, target))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A policy file, a private loopback DDS domain, and the fake robot on it."""
    model = tmp_path / "policy.onnx"
    model.write_bytes(constant_model(TARGET, version=1))
    domain = unique_domain_id()
    for key, value in dds_env(domain).items():
        monkeypatch.setenv(key, value)
    robot = FakeRobot(domain)
    yield model, domain, robot
    robot.close()


@contextlib.contextmanager
def in_process_node(link, **overrides):
    """The node logic on the real DDS adapter in this process, spinning in the background."""
    port = DdsPort("policy_node", param_file="config/robot.yaml", overrides={"diagnostics_rate_hz": 5.0, **overrides})
    node = PolicyNode(port, lambda params, model, logger: link)
    try:
        node.configure()
        node.activate()
        port.spin_in_background()
        yield node
    finally:
        node.shutdown()
        port.shutdown()


def test_o2o_robot_commands_stop_when_images_stop_and_resume(world):
    model, domain, robot = world
    robot.start()
    node = start_robot(["--params", "config/robot.yaml", "-p", f"model_path:={model}", "-p", "explore:=false", *FAST], domain)
    try:
        wait_until(lambda: any(close(c, TARGET) for _, c in robot.commands), 30, "policy commands")
        robot.publishing.clear()
        stopped_at = time.monotonic()
        wait_until(lambda: (s := robot.status(": control")) and s.values["mode"] == "stale", 5, "STALE in /diagnostics")
        held_at = next(t for t, c in robot.commands if t > stopped_at and close(c, HOLD))
        assert held_at - stopped_at < 1.0
        time.sleep(0.3)
        late = [c for t, c in robot.commands if t > held_at and not close(c, HOLD)]
        assert late == [], "the node acted without fresh images"
        robot.publishing.set()
        resumed_at = time.monotonic()
        wait_until(
            lambda: any(t > resumed_at and close(c, TARGET) for t, c in robot.commands), 10, "commands to resume"
        )
    finally:
        output = stop(node)
    assert node.returncode == 0, output
    assert "Traceback" not in output
    assert "truncated: newest image" in output


def test_model_swap_mid_run_shows_in_diagnostics_with_no_missed_tick(world):
    model, _, robot = world
    link = InProcessLink()
    robot.start()
    with in_process_node(link, model_path=str(model), explore=False, reset_retry_s=0.5):
        wait_until(lambda: any(close(c, TARGET) for _, c in robot.commands), 20, "v1 commands")
        new_target = [-0.3, 0.3, -0.3, 0.9]
        link.push_weights(weights(constant_model(new_target, version=2), 2))
        wait_until(lambda: (s := robot.status(": policy")) and s.values["version"] == "2", 10, "version 2 in /diagnostics")
        wait_until(lambda: close(robot.commands[-1][1], new_target), 5, "v2 commands")
        control = wait_until(lambda: robot.status(": control"), 5, "control status")
        assert control.values["missed_ticks"] == "0"
        assert control.values["mode"] == "running"
        assert {t.policy_version for t in link.drain()} == {1, 2}


def test_a_latched_estop_reaches_a_node_that_starts_later(world):
    model, _, robot = world
    robot.start()
    robot.estop.publish(Bool(True))  # before the node exists: transient local keeps it
    with in_process_node(InProcessLink(), model_path=str(model), explore=False, reset_retry_s=0.5):
        wait_until(lambda: (s := robot.status(": control")) and s.values["estop"] == "true", 10, "e-stop in /diagnostics")
        assert not any(close(c, TARGET) for _, c in robot.commands)
        robot.estop.publish(Bool(False))
        wait_until(lambda: any(close(c, TARGET) for _, c in robot.commands), 10, "commands after release")


def test_a_configure_that_fails_half_way_leaves_nothing_behind(world):
    """A middleware that refuses an entity once the link is up (rclpy raises for what it cannot
    create): the link is closed and the topics are gone, so the node can be configured again."""
    model, _, _ = world
    closed = []

    class Link(InProcessLink):
        def close(self) -> None:
            closed.append(True)

    def refuse(*args):
        raise RuntimeError("refused by the middleware")

    port = DdsPort("policy_node", param_file="config/robot.yaml", overrides={"model_path": str(model)})
    node = PolicyNode(port, lambda params, runner, logger: Link())
    try:
        port.create_timer = refuse  # the diagnostics timer, the last entity configure creates
        with pytest.raises(RuntimeError, match="refused by the middleware"):
            node.configure()
        assert closed == [True] and node.link is None and node.loop is None
        assert not port._publishers and not port._subscriptions
        del port.create_timer
        node.configure()
        assert node.loop is not None and len(port._publishers) == 3
        node.shutdown()
        assert closed == [True, True]
    finally:
        port.shutdown()
