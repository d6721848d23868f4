"""The package boundaries of docs/ARCHITECTURE.md, checked on the source: what may import what."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # The robot's footprint is onnxruntime, numpy, OpenCV, pyzmq and the ROS adapter.
    "robot_node": ("trainer", "sim", "torch", "mujoco", "gymnasium"),
    "trainer": ("robot_node.ros", "rclpy", "cyclonedds"),
    "sim": ("trainer", "torch"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_respect_the_import_rules(package):
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            for banned in FORBIDDEN[package]:
                if module == banned or module.startswith(banned + "."):
                    violations.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not violations, "\n".join(violations)


def test_package_xml_is_an_ament_python_format3_manifest_named_o2o_rl():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "o2o_rl"
    assert root.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / "o2o_rl").is_file()
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros"} <= exec_depends
