"""Suite-wide setup: offscreen rendering, and the one allowed skip (tests that need rclpy)."""

import importlib.util
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_RCLPY:
        return
    skip = pytest.mark.skip(reason="rclpy is not importable here (no ROS 2 install)")
    for item in items:
        if "ros" in item.keywords:
            item.add_marker(skip)
