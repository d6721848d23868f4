"""Console scripts: `o2o-robot` (any environment) and `policy_node` (`ros2 run o2o_rl policy_node`).

Both start the same node logic. `o2o-robot` picks the adapter: rclpy when it imports (a sourced
ROS 2 install), else the pip-only DDS adapter; `--adapter` overrides. The choice of trainer link
is made in one place, `make_link`.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from collections.abc import Sequence

from robot_node.link_interface import LinkStatus, PolicyWeights, TrainerLink, Transition
from robot_node.node import NODE_NAME, PolicyNode
from robot_node.params import ConfigError, NodeParams
from robot_node.policy import ModelRejected
from robot_node.ros.port import Logger


class NoTrainerLink:
    """The link when `trainer_endpoint` is empty: the robot runs its policy, transitions are
    dropped and counted (visible in /diagnostics), and no new weights ever arrive."""

    def __init__(self) -> None:
        self.counters = {"dropped_no_trainer": 0}

    def submit(self, transition: Transition) -> bool:
        self.counters["dropped_no_trainer"] += 1
        return False

    def latest_weights(self, newer_than: int) -> PolicyWeights | None:
        return None

    def status(self) -> LinkStatus:
        return LinkStatus(False, "no trainer_endpoint: transitions are dropped", dict(self.counters))

    def close(self) -> None:
        pass


def make_link(params: NodeParams, logger: Logger) -> TrainerLink:
    """The one place that decides which trainer link the node uses."""
    if not params.trainer_endpoint:
        logger.warning("trainer_endpoint is empty: running without a trainer, transitions are dropped")
        return NoTrainerLink()
    raise ConfigError(
        f"trainer_endpoint={params.trainer_endpoint!r}, but this build has no ZeroMQ link wired into make_link yet"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2o-robot", description="Run the o2o_rl policy node (ROS 2 via rclpy, or pip-only via Cyclone DDS)."
    )
    parser.add_argument("--params", metavar="YAML", help="ros__parameters file, e.g. config/robot.yaml")
    parser.add_argument(
        "-p", dest="overrides", metavar="NAME:=VALUE", action="append", default=[], help="set a parameter (repeatable)"
    )
    parser.add_argument("--adapter", choices=("auto", "dds", "rclpy"), default="auto")
    parser.add_argument("--name", default=NODE_NAME, help="node name (parameter file section)")
    parser.add_argument("--namespace", default="/", help="ROS namespace for relative topic names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    adapter = args.adapter
    if adapter == "auto":
        adapter = "rclpy" if importlib.util.find_spec("rclpy") is not None else "dds"
    if adapter == "rclpy":
        ros_args = ["--ros-args", "-r", f"__node:={args.name}", "-r", f"__ns:={args.namespace}"]
        ros_args += ["--params-file", args.params] if args.params else []
        for override in args.overrides:
            ros_args += ["-p", override]
        return ros_main([sys.argv[0], *ros_args])
    return _run_dds(args)


def _run_dds(args: argparse.Namespace) -> int:
    from robot_node.ros.param_file import ParamError, parse_override

    try:
        from robot_node.ros.dds import DdsPort  # imported here: rclpy systems need not have cyclonedds
    except ImportError as exc:
        print(f"o2o-robot: the DDS adapter is unavailable ({exc}); it needs Python >= 3.11, "
              "else run under ROS 2 with --adapter rclpy", file=sys.stderr)
        return 2

    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        port = DdsPort(args.name, namespace=args.namespace, param_file=args.params, overrides=overrides)
        node = PolicyNode(port, make_link, args.name)
        node.configure()
    except (ParamError, ConfigError, ModelRejected) as exc:
        print(f"o2o-robot: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: port.stop())
    node.activate()
    port.logger.info(f"{args.name} running over DDS on domain {port.domain_id}")
    try:
        port.spin()
    finally:
        node.shutdown()
        port.shutdown()
    return 0


def ros_main(argv: Sequence[str] | None = None) -> int:
    """`ros2 run o2o_rl policy_node [--ros-args ...]`: the rclpy lifecycle node."""
    from robot_node.ros.rclpy_node import run  # imported here: it needs rclpy

    return run(list(argv) if argv is not None else sys.argv, make_link)


if __name__ == "__main__":
    sys.exit(main())
