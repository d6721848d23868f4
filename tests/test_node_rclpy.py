"""The rclpy adapter against a real ROS 2 (Humble or Jazzy) where rclpy imports: message bytes
equal an independent serialiser's, the lifecycle node commands only while active and holds on
deactivate, transitions work over the lifecycle services `ros2 lifecycle set` calls, parameter
files reach a namespaced node, a latched e-stop published before the node starts holds it, the
node process holds the arm before it exits on SIGINT/SIGTERM and refuses bad parameters in one
line, and the launch files parse with the real launch frontend. Skipped elsewhere (conftest
marks `ros` tests)."""

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from node_helpers import ROOT, constant_model, image_msg, ros_domain_id
from wire_cases import CASES, TYPESTORE

from robot_node.ros import messages as m

pytestmark = pytest.mark.ros

TARGET = [0.1, -0.2, 0.3, 0.5]
HOLD = [0.0, 0.0, 0.0, 0.5]  # hold: zero motion, the gripper (hold_last_dims) where it was
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.xml"))


@pytest.fixture
def domain_id():
    """A ROS domain of this test's own, so that parallel runs do not hear each other."""
    return ros_domain_id()


@pytest.fixture
def ros(domain_id):
    import rclpy

    rclpy.init(domain_id=domain_id)
    yield rclpy
    rclpy.try_shutdown()


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "policy.onnx"
    path.write_bytes(constant_model(TARGET))
    return path


class Driver:
    """The robot's side of the node's topics, in this process: a camera and joint encoders
    publishing at 50 Hz, recorders for commands and diagnostics, and the executor that spins them
    (and the node under test, when it runs in this process too)."""

    def __init__(self, ros) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray

        from robot_node.ros.rclpy_node import WIRE

        self.node = ros.create_node("driver")
        self.commands: list[list[float]] = []
        self.statuses: dict[str, m.DiagnosticStatus] = {}
        self.node.create_subscription(Float64MultiArray, "command", lambda c: self.commands.append(list(c.data)), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        camera = self.node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        joints = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)

        def publish() -> None:
            joints.publish(m.JointState(["joint_a", "joint_b"], [0.1, 0.2]).to_wire(WIRE))
            camera.publish(image_msg(100).to_wire(WIRE))

        self.node.create_timer(0.02, publish)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def _on_diagnostics(self, msg) -> None:
        for status in m.DiagnosticArray.from_wire(msg).status:
            self.statuses[status.name] = status

    def spin_until(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
            self.executor.spin_once(timeout_sec=0.02)
        return condition()

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def commanded(self, values: list[float]) -> bool:
        return any(c == pytest.approx(values, abs=1e-6) for c in self.commands)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def driver(ros):
    driver = Driver(ros)
    yield driver
    driver.close()


def make_node(model, parameters=None, **node_options):
    """The lifecycle node in this process, without a trainer; `node_options` go to rclpy's Node."""
    from rclpy.parameter import Parameter

    from robot_node.link_interface import InProcessLink
    from robot_node.ros.rclpy_node import PolicyLifecycleNode

    values = {"model_path": str(model), "explore": False, "require_ready": False, **(parameters or {})}
    overrides = [Parameter(name, value=value) for name, value in values.items()]
    return PolicyLifecycleNode(lambda p, runner, logger: InProcessLink(), parameter_overrides=overrides, **node_options)


# --- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_rclpy_messages_serialise_to_the_bytes_of_an_independent_serialiser(name):
    """rosbags' bytes, which the DDS adapter's equal too (tests/test_node_wire.py)."""
    from rclpy.serialization import serialize_message

    from robot_node.ros.rclpy_node import WIRE

    ours, theirs = CASES[name]
    ros_msg = ours.to_wire(WIRE)
    assert serialize_message(ros_msg) == bytes(TYPESTORE.serialize_cdr(theirs, ours.ROS_TYPE))
    assert type(ours).from_wire(ros_msg) == ours


# --- the lifecycle node in this process -------------------------------------------------------


def test_lifecycle_node_commands_when_active_and_holds_on_deactivate(driver, model):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = make_node(model)
    driver.executor.add_node(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        refused = node.set_parameters([Parameter("control_rate_hz", value=20.0)])[0]
        assert not refused.successful and "configure" in refused.reason
        driver.spin_until(lambda: "policy_node: control" in driver.statuses, 10, "/diagnostics while inactive")
        assert not driver.commands  # configured, not active: nothing commanded
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        driver.spin_until(lambda: driver.commanded(TARGET), 20, "the policy's command")
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        driver.spin_until(lambda: driver.commands[-1] == pytest.approx(HOLD), 5, "the hold at deactivate")
        count = len(driver.commands)
        driver.spin_for(0.5)  # five control periods with fresh images
        assert len(driver.commands) == count  # inactive: no more commands
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.policy.loop is None and node.policy.link is None
    finally:
        node.destroy_node()


def test_configure_fails_on_a_missing_model_and_succeeds_once_it_is_fixed(ros, model, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = make_node(model, {"model_path": str(tmp_path / "missing.onnx")})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.policy.loop is None and node.policy.link is None
        # Unconfigured, so parameters may change; the next configure reads them.
        assert node.set_parameters([Parameter("model_path", value=str(model))])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()


def test_transitions_requested_over_the_lifecycle_services(driver, model):
    """What `ros2 lifecycle set /policy_node configure|activate|deactivate|cleanup` does."""
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    node = make_node(model)
    driver.executor.add_node(node)
    change = driver.node.create_client(ChangeState, "/policy_node/change_state")
    get = driver.node.create_client(GetState, "/policy_node/get_state")

    def call(client, request):
        assert client.wait_for_service(timeout_sec=10.0), f"{client.srv_name} is not offered"
        future = client.call_async(request)
        return driver.spin_until(future.done, 20, f"an answer from {client.srv_name}") and future.result()

    def transition(transition_id: int) -> bool:
        return call(change, ChangeState.Request(transition=Transition(id=transition_id))).success

    def state() -> int:
        return call(get, GetState.Request()).current_state.id

    try:
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        driver.spin_until(lambda: driver.commanded(TARGET), 20, "the policy's command")
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        driver.spin_until(lambda: driver.commands[-1] == pytest.approx(HOLD), 5, "the hold at deactivate")
        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.policy.loop is None
    finally:
        node.destroy_node()


def test_the_config_files_reach_a_node_in_a_namespace(ros, model):
    """The launch files' `namespace` argument: rclpy applies only `/**` and fully qualified
    sections of a parameter file, which is why config/*.yaml use `/**`."""
    files = ["--params-file", str(ROOT / "config" / "robot.yaml"), "--params-file", str(ROOT / "config" / "sim_hil.yaml")]
    node = make_node(model, namespace="/arm1", cli_args=["--ros-args", *files])
    try:
        assert node.get_fully_qualified_name() == "/arm1/policy_node"
        assert node.get_parameter("trigger").value == "image"  # sim_hil.yaml over robot.yaml
        assert list(node.get_parameter("action_scale").value) == [0.03, 0.03, 0.03, 1.0]
        assert node.get_parameter("link_timeout_s").value == 3.0  # robot.yaml
        assert node.get_parameter("model_path").value == str(model)  # constructor overrides win
    finally:
        node.destroy_node()


def test_parameters_nobody_declared_are_named_in_a_warning(ros, model, capfd):
    node = make_node(model, cli_args=["--ros-args", "-p", "estop_topc:=/safety/estop"])
    try:
        captured = capfd.readouterr()
        warnings = [line for line in (captured.out + captured.err).splitlines() if "estop_topc" in line]
        assert len(warnings) == 1 and "WARN" in warnings[0]
        assert node.get_parameter("estop_topic").value == "estop"
    finally:
        node.destroy_node()


def test_a_latched_estop_published_before_the_node_starts_holds_it(driver, model):
    """The e-stop subscription is reliable and transient local: a latched `true` from an e-stop
    publisher with the same QoS reaches a node that starts later, and only `false` releases it."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    estop = driver.node.create_publisher(Bool, "estop", latched)
    estop.publish(Bool(data=True))
    node = make_node(model)
    driver.executor.add_node(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        driver.spin_until(lambda: node.policy.loop.estop, 10, "the latched e-stop to arrive")
        driver.spin_for(0.5)  # five control periods with fresh images
        assert not driver.commanded(TARGET)
        estop.publish(Bool(data=False))
        driver.spin_until(lambda: driver.commanded(TARGET), 20, "commands after the release")
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()


# --- the node as a process (what `ros2 run o2o_rl policy_node` and `ros2 launch` start) ---------


def node_process(args: list[str], domain_id: int, log) -> subprocess.Popen:
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "robot_node.main", "--adapter", "rclpy", *args]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_node_process_holds_the_arm_before_it_exits_on_a_signal(driver, domain_id, model, tmp_path, signum):
    """rclpy's own signal handlers would shut ROS down before the node could send its hold; a
    forward command controller would then keep executing the last command."""
    args = ["--params", "config/robot.yaml", "-p", f"model_path:={model}", "-p", "explore:=false", "-p", "require_ready:=false"]
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        process = node_process(args, domain_id, log)
        try:
            driver.spin_until(lambda: driver.commanded(TARGET), 60, "the node process's commands")
            process.send_signal(signum)
            driver.spin_until(lambda: process.poll() is not None, 20, "the node process to exit")
            driver.spin_until(lambda: driver.commands[-1] == pytest.approx(HOLD), 5, "the hold sent on the way out")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "override, problem",
    [
        ("control_rate_hz:=10", "control_rate_hz"),  # an integer where a double is declared
        ("model_path:=/nonexistent/policy.onnx", "configure failed: cannot read model /nonexistent/policy.onnx"),
        ("image_topic:=camera image", "image_topic 'camera image' is not a ROS topic name"),
    ],
)
def test_the_node_process_refuses_bad_parameters_in_one_line(domain_id, model, tmp_path, override, problem):
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        args = ["--params", "config/robot.yaml", "-p", f"model_path:={model}", "-p", override]
        process = node_process(args, domain_id, log)
        process.wait(timeout=60)
    output = log_path.read_text()
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert process.returncode == 2, output
    assert len(errors) == 1 and problem in errors[0], output
    assert "Traceback" not in output


# --- launch files -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_parse_with_the_real_launch_frontend(path):
    """launch_xml reads every tag and attribute (tests/test_node_params.py checks what they name)."""
    from launch.frontend import Parser
    from launch_ros.actions import Node

    root, parser = Parser.load(str(path))
    description = parser.parse_description(root)
    nodes = [entity for entity in description.entities if isinstance(entity, Node)]
    assert len(nodes) == len(ET.parse(path).getroot().findall("node")) > 0
