"""The rclpy adapter: the policy node as a ROS 2 managed (lifecycle) node, Humble and Jazzy.

Transitions map onto the node logic: configure loads and checks the model and creates the
topics, activate starts commanding, deactivate holds the arm and stops commanding, cleanup
releases everything. With the `autostart` parameter (default true) the node configures and
activates itself, so a plain `ros2 launch` works; set it false to drive the transitions with
`ros2 lifecycle set /policy_node configure|activate|deactivate|cleanup` or a lifecycle manager.
Parameters are read at configure; changing one while configured is refused with a reason.

Stopping: rclpy's own SIGINT/SIGTERM handlers shut the ROS context down before any Python code
of ours runs (ros2/rclpy#1077), after which nothing can be published: the hold command would
never leave and a forward command controller would keep executing the last command. So
`init_rclpy` starts rclpy without them and installs handlers that only raise a flag, which
`spin_until_signal` checks; the node then holds and cleans up while ROS still works.
"""

from __future__ import annotations

import array
import importlib
import signal
import traceback
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from robot_node.node import NODE_NAME, LinkFactory, PolicyNode
from robot_node.params import ConfigError
from robot_node.policy import ModelRejected
from robot_node.ros.port import ParamSpec, Qos

# The executor's wait cannot be interrupted by a Python signal handler, so the spin loop wakes
# this often to see whether it was asked to stop.
STOP_POLL_S = 0.1
# A publisher waits this long for reliable subscribers to acknowledge what it sent before it is
# destroyed, so the hold sent at deactivate reaches the controller even when the process exits.
ACK_TIMEOUT_S = 0.5


class RclpyWireTypes:
    """`robot_node.ros.messages.WireTypes` for the generated rclpy message classes."""

    def __call__(self, ros_type: str) -> type:
        pkg, kind, name = ros_type.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)

    def uint8_array(self, data: bytes) -> array.array:
        return array.array("B", data)  # taken as is; a bytes value would be checked byte by byte

    def byte(self, value: int) -> bytes:
        return bytes([value])  # a `byte` field (DiagnosticStatus.level) takes bytes of length 1


WIRE = RclpyWireTypes()


def qos_profile(qos: Qos) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE,
    )


class _Publisher:
    def __init__(self, node: Node, publisher: Any, topic: str) -> None:
        self._node, self._publisher, self._topic = node, publisher, topic

    def publish(self, msg: Any) -> None:
        if not self._node.context.ok():  # shut down from outside: say so instead of raising
            self._node.get_logger().warning(f"ROS is shut down: nothing more is sent on {self._topic}", once=True)
            return
        self._publisher.publish(msg.to_wire(WIRE))

    def destroy(self) -> None:
        if self._node.context.ok():
            self._publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        self._node.destroy_publisher(self._publisher)


class _Handle:
    def __init__(self, destroy: Callable[[], Any]) -> None:
        self.destroy = destroy


class RclpyPort:
    """The port over an rclpy node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._declared: list[str] = []

    @property
    def logger(self) -> Any:
        return self._node.get_logger()

    def now(self) -> float:
        return self._node.get_clock().now().nanoseconds * 1e-9

    def declare_parameters(self, specs: list[ParamSpec]) -> None:
        """Typed by their defaults (none is an empty list, whose type rclpy could not infer), so
        a parameter file or `-p` value of another type is refused at start-up, as in any ROS node."""
        for spec in specs:
            self._node.declare_parameter(spec.name, spec.default, ParameterDescriptor(description=spec.description))
            self._declared.append(spec.name)
        self._warn_about_unknown_overrides()

    def _warn_about_unknown_overrides(self) -> None:
        """rclpy silently ignores file and `-p` values for parameters nobody declared; a typo in a
        topic name (say, the e-stop's) would go unnoticed. rclpy has no public accessor for the
        overrides, hence the private attribute, read defensively."""
        overrides = getattr(self._node, "_parameter_overrides", {})
        unknown = sorted(name for name in overrides if not self._node.has_parameter(name))
        if unknown:
            self.logger.warning(f"ignoring parameters this node does not declare (typos?): {', '.join(unknown)}")

    def parameter_values(self) -> dict[str, Any]:
        values = {}
        for name in self._declared:
            value = self._node.get_parameter(name).value
            values[name] = list(value) if isinstance(value, (array.array, tuple)) else value
        return values

    def create_publisher(self, msg_type: type, topic: str, qos: Qos) -> _Publisher:
        publisher = self._node.create_publisher(WIRE(msg_type.ROS_TYPE), topic, qos_profile(qos))
        return _Publisher(self._node, publisher, topic)

    def create_subscription(self, msg_type: type, topic: str, qos: Qos, callback: Callable[[Any], None]) -> _Handle:
        subscription = self._node.create_subscription(
            WIRE(msg_type.ROS_TYPE), topic, lambda m: callback(msg_type.from_wire(m)), qos_profile(qos)
        )
        return _Handle(lambda: self._node.destroy_subscription(subscription))

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> _Handle:
        timer = self._node.create_timer(period_s, callback)
        return _Handle(lambda: self._node.destroy_timer(timer))


class PolicyLifecycleNode(LifecycleNode):
    def __init__(self, make_link: LinkFactory, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.policy = PolicyNode(RclpyPort(self), make_link, self.get_name())
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self.policy.loop is None:
            return SetParametersResult(successful=True)
        return SetParametersResult(
            successful=False, reason="parameters are read at configure: deactivate and clean up the node first"
        )

    def _transition(self, name: str, step: Callable[[], None]) -> TransitionCallbackReturn:
        """A bad parameter or model fails the transition with its reason. Anything else is an
        error, logged here because rclpy would turn it into ERROR without a word; on_error then
        releases whatever the step had set up."""
        try:
            step()
        except (ConfigError, ModelRejected) as exc:
            self.get_logger().error(f"{name} failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception:
            self.get_logger().error(f"{name} failed:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self.policy.configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition("activate", self.policy.activate)
        return super().on_activate(state) if result == TransitionCallbackReturn.SUCCESS else result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition("deactivate", self.policy.deactivate)
        return super().on_deactivate(state) if result == TransitionCallbackReturn.SUCCESS else result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self.policy.cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self.policy.shutdown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label}: holding and releasing everything")
        return self._transition("error recovery", self.policy.shutdown)


class StopRequest:
    """A flag that SIGINT and SIGTERM raise, for the rest of the process. The handler does nothing
    else (no lock, so a second Ctrl-C cannot deadlock it); the spin loop looks at the flag."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True


def init_rclpy(args: list[str]) -> StopRequest:
    """rclpy.init without rclpy's SIGINT/SIGTERM handlers, ours installed instead, at once: a signal
    that arrives while the model loads is acted on as soon as spinning starts."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return StopRequest()


def spin_until_signal(node: Node, stop: StopRequest, cleanup: Callable[[], None]) -> None:
    """Run the node's callbacks on this thread until a signal raised `stop`, then `cleanup()` while
    ROS can still publish, destroy the node and shut rclpy down (also when a callback raises)."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.requested and rclpy.ok():
            executor.spin_once(timeout_sec=STOP_POLL_S)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown()
        try:
            cleanup()
        finally:
            node.destroy_node()
            rclpy.try_shutdown()


def run(argv: list[str], make_link: LinkFactory) -> int:
    """The lifecycle node until SIGINT/SIGTERM (exit status 0). Exit status 2 when a parameter has
    the wrong type, or when an autostarting node cannot configure (bad parameter or model): the
    reason is logged in one line. Without autostart a failed configure leaves the node waiting,
    unconfigured, for a lifecycle manager to try again."""
    stop = init_rclpy(argv)
    try:
        node = PolicyLifecycleNode(make_link)
    except ParameterException as exc:  # e.g. `control_rate_hz: 10` where a double is declared
        get_logger(NODE_NAME).error(str(exc))
        rclpy.try_shutdown()
        return 2
    if node.get_parameter("autostart").value and not _configure_and_activate(node):
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    spin_until_signal(node, stop, node.policy.shutdown)
    return 0


def _configure_and_activate(node: PolicyLifecycleNode) -> bool:
    return (
        node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        and node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    )
