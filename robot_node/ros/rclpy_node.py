"""The rclpy adapter: the policy node as a ROS 2 managed (lifecycle) node, Humble and Jazzy.

Transitions map onto the node logic: configure loads and checks the model and creates the
topics, activate starts commanding, deactivate holds the arm and stops commanding, cleanup
releases everything. With the `autostart` parameter (default true) the node configures and
activates itself, so a plain `ros2 launch` works; set it false to drive the transitions with
`ros2 lifecycle set /policy_node configure|activate|deactivate|cleanup` or a lifecycle manager.
Parameters are read at configure; changing one while configured is refused with a reason.
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from robot_node.node import NODE_NAME, LinkFactory, PolicyNode
from robot_node.params import ConfigError
from robot_node.policy import ModelRejected
from robot_node.ros.port import ParamSpec, Qos


class RclpyWireTypes:
    """`robot_node.ros.messages.WireTypes` for the generated rclpy message classes."""

    def __call__(self, ros_type: str) -> type:
        pkg, kind, name = ros_type.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)

    def uint8_array(self, data: bytes) -> array.array:
        return array.array("B", data)  # taken as is; a bytes value would be checked byte by byte

    def byte(self, value: int) -> bytes:
        return bytes([value])


WIRE = RclpyWireTypes()


def qos_profile(qos: Qos) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE,
    )


class _Publisher:
    def __init__(self, node: Node, publisher: Any) -> None:
        self._node, self._publisher = node, publisher

    def publish(self, msg: Any) -> None:
        self._publisher.publish(msg.to_wire(WIRE))

    def destroy(self) -> None:
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
        for spec in specs:
            self._node.declare_parameter(spec.name, spec.default, ParameterDescriptor(description=spec.description))
            self._declared.append(spec.name)

    def parameter_values(self) -> dict[str, Any]:
        values = {}
        for name in self._declared:
            value = self._node.get_parameter(name).value
            values[name] = list(value) if isinstance(value, (array.array, tuple)) else value
        return values

    def create_publisher(self, msg_type: type, topic: str, qos: Qos) -> _Publisher:
        return _Publisher(self._node, self._node.create_publisher(WIRE(msg_type.ROS_TYPE), topic, qos_profile(qos)))

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

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.policy.configure()
        except (ConfigError, ModelRejected) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.policy.activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.policy.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.policy.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.policy.shutdown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label}: holding and releasing everything")
        self.policy.shutdown()
        return TransitionCallbackReturn.SUCCESS


def run(argv: list[str], make_link: LinkFactory) -> int:
    rclpy.init(args=argv)
    node = PolicyLifecycleNode(make_link)
    try:
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.policy.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
