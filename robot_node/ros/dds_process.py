"""A process that runs on the DDS adapter: `o2o-robot` and `sim_bridge` (pip only, no rclpy).

What both need and rclpy gives a ROS node for free: importing the adapter only where it can
work (cyclonedds, Python >= 3.11), and spinning on the main thread until SIGINT or SIGTERM, then
cleaning up before the participant goes, so the node ends its episode, holds the arm and closes
its link whether it is stopped from a terminal, by `ros2 launch` or by a process manager.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robot_node.ros.dds import DdsPort


def dds_port_class(prog: str) -> type[DdsPort] | None:
    """The DDS adapter's port class, or None after printing in one line why it cannot run here."""
    try:
        from robot_node.ros.dds import DdsPort  # imported here: rclpy systems need not have cyclonedds
    except ImportError as exc:
        print(f"{prog}: the DDS adapter is unavailable ({exc}); it needs Python >= 3.11, "
              "else run under ROS 2 with --adapter rclpy", file=sys.stderr)
        return None
    return DdsPort


def spin_until_signal(port: DdsPort, start: Callable[[], None], stop: Callable[[], None]) -> int:
    """`start()`, run the port's callbacks on this thread until SIGINT/SIGTERM, then `stop()` and
    shut the port down (also when a callback loop raises). Returns the exit status, 0."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: port.stop())
    try:
        start()
        port.logger.info(f"{port.node_name} running over DDS on domain {port.domain_id}")
        port.spin()
    finally:
        stop()
        port.shutdown()
    return 0
