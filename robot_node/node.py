"""The robot node: the control loop wired to ROS topics through the port, with a lifecycle.

configure: read parameters, load and check the model, connect the link, create topics.
activate: start the control timer (the loop then asks for a reset and waits for ready).
deactivate: end the episode, send one hold command, stop the timer.
cleanup: release topics, link (its spool stays on disk for the next start) and model. The rclpy
adapter maps these onto a lifecycle node; `o2o-robot` runs configure and activate at start and
deactivate and cleanup at exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from robot_node.control import ControlLoop
from robot_node.diagnostics import build_statuses
from robot_node.link_interface import TrainerLink
from robot_node.params import PARAM_SPECS, NodeParams
from robot_node.policy import PolicyRunner, load_policy_file
from robot_node.ros import messages as msg
from robot_node.ros.port import DEFAULT, LATCHED, Handle, Logger, Port, Qos

NODE_NAME = "policy_node"
COMMAND_QOS = Qos(reliable=True, depth=1)  # a controller wants the newest command, reliably
NEWEST_ONLY = Qos(reliable=False, depth=1)  # sensor data of which only the newest sample matters
H = TypeVar("H", bound=Handle)

# Builds the link from the parameters and the model the node starts with (its specs and version).
LinkFactory = Callable[[NodeParams, PolicyRunner, Logger], TrainerLink]


class PolicyNode:
    def __init__(self, port: Port, make_link: LinkFactory, name: str = NODE_NAME) -> None:
        self.port, self.make_link, self.name = port, make_link, name
        port.declare_parameters(PARAM_SPECS)
        self.params: NodeParams | None = None
        self.loop: ControlLoop | None = None
        self.link: TrainerLink | None = None
        self._handles: list[Handle] = []
        self._timer: Handle | None = None

    def configure(self) -> None:
        """Raises ConfigError, ParamError or ModelRejected with a one-line reason."""
        params = NodeParams.from_values(self.port.parameter_values())
        runner = load_policy_file(
            params.model_path, max_bytes=int(params.max_model_mb * 2**20), threads=params.inference_threads
        )
        self.port.logger.info(
            f"loaded policy v{runner.version} ({runner.ensemble_size or '?'} members, image "
            f"{runner.observation_spec.image_shape}, state {list(runner.observation_spec.state_names)}, "
            f"actions {list(runner.action_spec.names)}) from {params.model_path}"
        )
        self.link = self.make_link(params, runner, self.port.logger)
        try:
            self.loop = self._connect(params, runner, self.link)
        except Exception:  # e.g. a topic name the middleware refuses: release what exists, then say why
            self.cleanup()
            raise
        self.params = params

    def _connect(self, params: NodeParams, runner: PolicyRunner, link: TrainerLink) -> ControlLoop:
        """The control loop and its topics; each entity joins `_handles` as soon as it exists."""
        publish, subscribe = self.port.create_publisher, self.port.create_subscription
        command = self._keep(publish(msg.Float64MultiArray, params.command_topic, COMMAND_QOS))
        reset = self._keep(publish(msg.Empty, params.reset_topic, DEFAULT))
        diagnostics = self._keep(publish(msg.DiagnosticArray, params.diagnostics_topic, DEFAULT))
        loop = ControlLoop(
            params,
            runner,
            link,
            self.port.logger,
            publish_command=lambda values: command.publish(msg.Float64MultiArray(values)),
            request_reset=lambda: reset.publish(msg.Empty()),
        )
        self._keep(subscribe(msg.Bool, params.estop_topic, LATCHED, loop.on_estop))
        self._keep(subscribe(msg.JointState, params.joint_state_topic, NEWEST_ONLY, loop.on_joint_state))
        self._keep(subscribe(msg.PointStamped, params.ee_position_topic, NEWEST_ONLY, loop.on_ee_position))
        self._keep(subscribe(msg.Float32, params.reward_topic, DEFAULT, loop.on_reward))
        self._keep(subscribe(msg.Empty, params.ready_topic, DEFAULT, loop.on_ready))
        # Last, so that inputs arriving together are stored before an image-triggered tick.
        self._keep(subscribe(msg.Image, params.image_topic, NEWEST_ONLY, loop.on_image))
        self._keep(self.port.create_timer(1.0 / params.diagnostics_rate_hz, lambda: diagnostics.publish(self.diagnostics())))
        return loop

    def _keep(self, handle: H) -> H:
        self._handles.append(handle)
        return handle

    def activate(self) -> None:
        self.loop.activate()
        self._timer = self.port.create_timer(self.params.period_s, self.loop.on_timer)
        self.port.logger.info(
            f"active: {self.params.control_rate_hz:g} Hz ({self.params.trigger}-triggered), "
            f"{'exploring' if self.params.explore else 'acting on the mean'}"
        )

    def deactivate(self) -> None:
        if self._timer is not None:
            self._timer.destroy()
            self._timer = None
        self.loop.deactivate()

    def cleanup(self) -> None:
        for handle in self._handles:
            handle.destroy()
        self._handles = []
        if self.link is not None:
            self.link.close()
        self.params = self.loop = self.link = None

    def shutdown(self) -> None:
        if self.loop is not None:
            if self.loop.active:
                self.deactivate()
            self.cleanup()

    def diagnostics(self) -> msg.DiagnosticArray:
        return msg.DiagnosticArray(build_statuses(self.name, self.loop, self.link.status()), stamp=self.port.now())
