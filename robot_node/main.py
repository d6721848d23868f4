"""Console scripts: `o2o-robot` (any environment) and `policy_node` (`ros2 run o2o_rl policy_node`).

Both start the same node logic. `o2o-robot` picks the adapter: rclpy when it imports (a sourced
ROS 2 install), else the pip-only DDS adapter; `--adapter` overrides. Both build the trainer link
with `robot_node.node_link.make_link`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from robot_node.node import NODE_NAME, PolicyNode
from robot_node.node_link import make_link
from robot_node.params import ConfigError
from robot_node.policy import ModelRejected
from robot_node.ros.dds_process import dds_port_class, spin_until_signal
from robot_node.ros.port import absolute_namespace


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
    parser.add_argument("--namespace", default="/", type=absolute_namespace, help="ROS namespace for relative topic names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    adapter = args.adapter
    if adapter == "auto":
        adapter = "rclpy" if importlib.util.find_spec("rclpy") is not None else "dds"
    if adapter == "rclpy":
        if args.params and not os.path.isfile(args.params):  # rcl would end with a traceback
            print(f"o2o-robot: cannot read parameter file {args.params}", file=sys.stderr)
            return 2
        ros_args = ["--ros-args", "-r", f"__node:={args.name}", "-r", f"__ns:={args.namespace}"]
        ros_args += ["--params-file", args.params] if args.params else []
        for override in args.overrides:
            ros_args += ["-p", override]
        return ros_main([sys.argv[0], *ros_args])
    return _run_dds(args)


def _run_dds(args: argparse.Namespace) -> int:
    from robot_node.ros.param_file import ParamError, parse_override

    DdsPort = dds_port_class("o2o-robot")
    if DdsPort is None:
        return 2
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        port = DdsPort(args.name, namespace=args.namespace, param_file=args.params, overrides=overrides)
        node = PolicyNode(port, make_link, args.name)
        node.configure()
    except (ParamError, ConfigError, ModelRejected) as exc:
        print(f"o2o-robot: {exc}", file=sys.stderr)
        return 2
    return spin_until_signal(port, node.activate, node.shutdown)


def ros_main(argv: Sequence[str] | None = None) -> int:
    """`ros2 run o2o_rl policy_node [--ros-args ...]`: the rclpy lifecycle node."""
    from robot_node.ros.rclpy_node import run  # imported here: it needs rclpy

    return run(list(argv) if argv is not None else sys.argv, make_link)


if __name__ == "__main__":
    sys.exit(main())
