"""The rclpy adapter, where rclpy imports (a sourced ROS 2 install): same bytes as the DDS
adapter, and the lifecycle node configures, commands, holds on deactivate and guards its
parameters. Skipped elsewhere (conftest marks `ros` tests)."""

import time

import pytest
from node_helpers import constant_model, image_msg, wait_until
from test_node_wire import CASES

from robot_node.ros import messages as m

pytestmark = pytest.mark.ros

TARGET = [0.1, -0.2, 0.3, 0.5]


@pytest.fixture
def ros():
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rclpy_messages_serialise_to_the_dds_adapters_bytes(ros, name):
    from rclpy.serialization import serialize_message

    from robot_node.ros.dds import WIRE as DDS
    from robot_node.ros.rclpy_node import WIRE as RCLPY

    ours, _ = CASES[name]
    ros_msg = ours.to_wire(RCLPY)
    assert serialize_message(ros_msg) == ours.to_wire(DDS).serialize()
    assert type(ours).from_wire(ros_msg) == ours


def make_node(ros, tmp_path, **params):
    from rclpy.parameter import Parameter

    from robot_node.link_interface import InProcessLink
    from robot_node.ros.rclpy_node import PolicyLifecycleNode

    model = tmp_path / "policy.onnx"
    model.write_bytes(constant_model(TARGET))
    values = {"model_path": str(model), "explore": False, "require_ready": False, **params}
    overrides = [Parameter(name, value=value) for name, value in values.items()]
    return PolicyLifecycleNode(lambda p, model, logger: InProcessLink(), parameter_overrides=overrides)


def test_lifecycle_node_commands_when_active_and_holds_on_deactivate(ros, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    from robot_node.ros.rclpy_node import WIRE

    node = make_node(ros, tmp_path)
    driver = ros.create_node("driver")
    commands = []
    driver.create_subscription(Float64MultiArray, "command", lambda c: commands.append(list(c.data)), 10)
    camera = driver.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    joints = driver.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(driver)

    def spin_until(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            joints.publish(m.JointState(["joint_a", "joint_b"], [0.1, 0.2]).to_wire(WIRE))
            camera.publish(image_msg(100).to_wire(WIRE))
            executor.spin_once(timeout_sec=0.05)

    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        refused = node.set_parameters([Parameter("control_rate_hz", value=20.0)])[0]
        assert not refused.successful and "configure" in refused.reason
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        spin_until(lambda: any(c == pytest.approx(TARGET, abs=1e-6) for c in commands), 20)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        spin_until(lambda: commands[-1] == pytest.approx([0.0, 0.0, 0.0, 0.5]), 5)
        count = len(commands)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
        assert len(commands) == count  # inactive: no more commands
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        node.destroy_node()
        driver.destroy_node()


def test_configure_fails_cleanly_on_a_missing_model(ros, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    node = make_node(ros, tmp_path, model_path=str(tmp_path / "missing.onnx"))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        wait_until(lambda: node.policy.loop is None, 1, "the node to stay unconfigured")
    finally:
        node.destroy_node()
