"""Parameters without ROS (ros__parameters files, -p overrides, type checks), the launch files
(parsed without ROS), and the o2o-robot command line's errors."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from node_helpers import ROOT, constant_model

from robot_node.params import PARAM_SPECS, ConfigError, NodeParams
from robot_node.ros.param_file import ParamError, coerce, load_param_file, parse_override, resolve_parameters
from robot_node.ros.port import ParamSpec, absolute_namespace, resolve_topic

DECLARED = {spec.name for spec in PARAM_SPECS}


def test_param_file_sections_apply_as_rclpy_matches_them(tmp_path):
    """`/**`, then the node's fully qualified name; a key without a leading slash is absolute, so a
    bare `policy_node:` does not reach a node in a namespace (rclpy's rule, the DDS adapter's too)."""
    path = tmp_path / "params.yaml"
    path.write_text(
        "/**:\n  ros__parameters: {control_rate_hz: 5.0, explore: false}\n"
        "policy_node:\n  ros__parameters: {control_rate_hz: 20.0}\n"
        "arm/policy_node:\n  ros__parameters:\n    workspace: {enabled: true}\n"
        "other_node:\n  ros__parameters: {control_rate_hz: 1.0}\n"
    )
    assert load_param_file(path, "policy_node", "/arm") == {
        "control_rate_hz": 5.0, "explore": False, "workspace.enabled": True
    }
    assert load_param_file(path, "policy_node") == {"control_rate_hz": 20.0, "explore": False}


@pytest.mark.parametrize(
    "text, problem",
    [("[1, 2", "not valid YAML"), ("- a\n- b\n", "must map node names"), ("policy_node: {x: 1}\n", "no ros__parameters")],
)
def test_malformed_param_files_are_refused(tmp_path, text, problem):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamError, match=problem):
        load_param_file(path, "policy_node")


def test_missing_param_file_names_the_file(tmp_path):
    with pytest.raises(ParamError, match="cannot read parameter file .*nope.yaml"):
        load_param_file(tmp_path / "nope.yaml", "policy_node")


def test_overrides_read_values_as_yaml():
    assert parse_override("control_rate_hz:=20") == ("control_rate_hz", 20)
    assert parse_override("action_scale:=[0.01, 0.01, 0.01, 1]") == ("action_scale", [0.01, 0.01, 0.01, 1])
    assert parse_override("trainer_endpoint:=") == ("trainer_endpoint", "")
    with pytest.raises(ParamError, match="name:=value"):
        parse_override("control_rate_hz=20")


@pytest.mark.parametrize(
    "default, value, expected",
    [(1.0, 3, 3.0), ([1.0], [1, 2.5], [1.0, 2.5]), (["a"], ["x", "y"], ["x", "y"]), (True, False, False), (2, 5, 5)],
)
def test_values_take_the_declared_type(default, value, expected):
    assert coerce(ParamSpec("p", default, ""), value) == expected


@pytest.mark.parametrize("default, value", [(1.0, True), (1, 1.5), ([1.0], []), ([1.0], ["a"]), ("s", 3), (True, "yes")])
def test_values_of_the_wrong_type_are_refused(default, value):
    with pytest.raises(ParamError, match="parameter p expects"):
        coerce(ParamSpec("p", default, ""), value)


def test_unknown_parameter_names_are_refused():
    with pytest.raises(ParamError, match="unknown parameter 'control_rate'"):
        resolve_parameters(PARAM_SPECS, {}, {"control_rate": 5.0})


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"model_path": ""}, "model_path is empty"),
        ({"control_rate_hz": 0.0}, "control_rate_hz must be positive"),
        ({"trigger": "sometimes"}, "trigger must be one of"),
        ({"workspace_min": [0.0, 0.0]}, "exactly 3 values"),
        ({"workspace_min": [1.0, 0.0, 0.0]}, "exceeds workspace_max"),
        ({"image_topic": "camera image"}, "image_topic 'camera image' is not a ROS topic name"),
        ({"command_topic": "forward_controller/commands/"}, "command_topic .* is not a ROS topic name"),
        ({"estop_topic": "safety//estop"}, "estop_topic .* is not a ROS topic name"),
        ({"reward_topic": "2nd/reward"}, "reward_topic .* is not a ROS topic name"),
        ({"ready_topic": "~/ready"}, "ready_topic .* is not a ROS topic name"),
    ],
)
def test_node_parameters_are_validated(overrides, problem):
    values = {**{s.name: s.default for s in PARAM_SPECS}, "model_path": "p.onnx", **overrides}
    with pytest.raises(ConfigError, match=problem):
        NodeParams.from_values(values)


def test_image_age_limit_defaults_to_two_control_periods():
    assert NodeParams(model_path="m", control_rate_hz=20.0).image_age_limit_s == pytest.approx(0.1)
    assert NodeParams(model_path="m", max_image_age_s=0.5).image_age_limit_s == 0.5


def test_topic_names_resolve_like_rcl():
    assert resolve_topic("camera/image_raw") == "/camera/image_raw"
    assert resolve_topic("camera/image_raw", "/arm") == "/arm/camera/image_raw"
    assert resolve_topic("/diagnostics", "/arm") == "/diagnostics"
    for invalid in ("~/private", "a//b", "a/", "", "1a", "a b"):
        with pytest.raises(ValueError):
            resolve_topic(invalid)


def test_namespaces_are_made_absolute_as_rcl_requires():
    assert [absolute_namespace(ns) for ns in ("/", "arm1", "/arm1/", "/site/arm1")] == ["/", "/arm1", "/arm1", "/site/arm1"]


def test_every_parameter_default_has_a_type_rclpy_infers():
    """rclpy types a declared parameter by its default (no dynamic typing): an empty list would be
    declared as a byte array and a mixed one refused, so lists are non-empty and of one type."""
    for spec in PARAM_SPECS:
        if isinstance(spec.default, list):
            assert spec.default and {type(v) for v in spec.default} in ({float}, {str}), spec.name
        else:
            assert type(spec.default) in (bool, int, float, str), spec.name


# --- config and launch files ----------------------------------------------------------------


def test_default_config_only_sets_declared_parameters_with_the_right_types():
    values = load_param_file(ROOT / "config" / "robot.yaml", "policy_node")
    assert set(values) <= DECLARED
    resolved = resolve_parameters(PARAM_SPECS, values, {"model_path": "policy.onnx"})
    NodeParams.from_values(resolved)


def _substitute(text: str, args: dict[str, str]) -> str:
    """The two launch substitutions the files use, resolved against the source tree (which has
    the layout of share/o2o_rl after colcon installs it)."""
    text = re.sub(r"\$\(var (\w+)\)", lambda m: args[m.group(1)], text)
    return text.replace("$(find-pkg-share o2o_rl)", str(ROOT))


LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.xml"))


def test_there_is_a_robot_launch_file():
    assert ROOT / "launch" / "robot.launch.xml" in LAUNCH_FILES


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_run_installed_scripts_with_existing_files_and_declared_parameters(path):
    scripts = {
        ep.name
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "o2o_rl"
    }
    root = ET.parse(path).getroot()
    assert root.tag == "launch"
    args = {arg.get("name"): arg.get("default", "REQUIRED") for arg in root.iter("arg")}
    nodes = list(root.iter("node"))
    assert nodes, f"{path.name} starts no node"
    for node in nodes:
        assert node.get("pkg") == "o2o_rl"
        assert node.get("exec") in scripts, f"{node.get('exec')} is not a console script of o2o_rl"
        for param in node.iter("param"):
            if param.get("from"):
                file = Path(_substitute(param.get("from"), args))
                assert file.is_file(), f"{path.name}: parameter file {file} does not exist"
                section = node.get("name") or "/**"
                values = load_param_file(file, section)
                assert values and set(values) <= DECLARED
                # The launch files take a `namespace` argument: the file must reach the node in any.
                assert load_param_file(file, section, "/some/namespace") == values
            else:
                assert param.get("name") in DECLARED, f"{path.name} sets undeclared {param.get('name')}"
        used = set(re.findall(r"\$\(var (\w+)\)", ET.tostring(node, encoding="unicode")))
        assert used <= set(args), f"{path.name} uses undeclared launch arguments {used - set(args)}"


def test_package_xml_declares_every_ros_package_the_rclpy_side_uses():
    """rosdep installs the exec_depends: a ROS package the rclpy adapter imports, a message package
    it sends or receives, or what `ros2 launch` needs for XML files, must be among them."""
    exec_depends = {e.text for e in ET.parse(ROOT / "package.xml").getroot().findall("exec_depend")}
    messages = set(re.findall(r'"(\w+)/msg/\w+"', (ROOT / "robot_node" / "ros" / "messages.py").read_text()))
    tree = ast.parse((ROOT / "robot_node" / "ros" / "rclpy_node.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    ros_packages = imported - set(sys.stdlib_module_names) - {"robot_node"}
    assert {"rclpy", "rcl_interfaces"} <= ros_packages
    assert {"sensor_msgs", "std_msgs", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs"} <= messages
    missing = (messages | ros_packages | {"launch_ros", "launch_xml", "ros2launch"}) - exec_depends
    assert not missing, f"package.xml lacks exec_depend {sorted(missing)}"


# --- o2o-robot command line -----------------------------------------------------------------


def run_cli(*args):
    exe = Path(sys.executable).with_name("o2o-robot")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--params", "config/robot.yaml"], "model_path is empty"),
        (["-p", "model_path:=/nonexistent/policy.onnx"], "cannot read model /nonexistent/policy.onnx"),
        (["-p", "model_pth:=x.onnx"], "unknown parameter 'model_pth'"),
        (["-p", "control_rate_hz:=fast"], "control_rate_hz expects float"),
        (["--params", "missing.yaml"], "cannot read parameter file missing.yaml"),
        (["-p", "model_path:=x.onnx", "-p", "image_codec:=webp"], "image_codec must be one of"),
    ],
)
def test_cli_errors_are_one_line_and_exit_nonzero(args, problem):
    result = run_cli("--adapter", "dds", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and "Traceback" not in result.stderr


def test_cli_on_rclpy_refuses_a_missing_parameter_file_in_one_line():
    """Checked before rclpy starts (rcl would end with a traceback), so it holds without ROS too."""
    result = run_cli("--adapter", "rclpy", "--params", "missing.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "o2o-robot: cannot read parameter file missing.yaml"


def test_cli_refuses_a_missing_key_file_in_one_line(tmp_path):
    model = tmp_path / "policy.onnx"
    model.write_bytes(constant_model([0.0] * 4))
    result = run_cli(
        "--adapter", "dds", "-p", f"model_path:={model}", "-p", "trainer_endpoint:=tcp://127.0.0.1:5555",
        "-p", f"secret_key_file:={tmp_path}/arm1.key_secret", "-p", f"trainer_key_file:={tmp_path}/trainer.key",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("o2o-robot:")]
    assert errors == [f"o2o-robot: secret_key_file {tmp_path}/arm1.key_secret: no such key file "
                      "(create one with `o2o-keys generate NAME --out DIR`)"]
