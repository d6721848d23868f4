"""Parameters without rclpy: `ros__parameters` YAML files and `-p name:=value` overrides.

Reads the same files `ros2 launch` passes to the rclpy node, so one `config/robot.yaml` serves
both adapters, and checks every value against the declared parameter's type, as rclpy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from robot_node.ros.port import ParamSpec


class ParamError(ValueError):
    """A parameter file, override or value is wrong; the message names it."""


def node_section_names(node_name: str, namespace: str = "/") -> tuple[str, ...]:
    """The keys of a parameter file that apply to this node, most general first: `/**` and the
    node's fully qualified name, exactly what rclpy matches. A key without a leading slash is
    taken as absolute, so `policy_node:` applies only to a node in the root namespace."""
    return ("/**", "/".join((namespace.rstrip("/"), node_name)))


def load_param_file(path: str | Path, node_name: str, namespace: str = "/") -> dict[str, Any]:
    """The `ros__parameters` of every section of the file that matches the node, merged."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParamError(f"cannot read parameter file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"parameter file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamError(f"parameter file {path} must map node names to ros__parameters")
    sections: dict[str, list[Any]] = {}
    for key, section in data.items():
        sections.setdefault("/" + str(key).lstrip("/"), []).append(section)
    values: dict[str, Any] = {}
    for name in node_section_names(node_name, namespace):
        for section in sections.get(name, []):
            if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
                raise ParamError(f"parameter file {path}: section {name!r} has no ros__parameters mapping")
            values.update(_flatten(section["ros__parameters"]))
    return values


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings are dotted names, as in ROS 2 parameter files."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """`name:=value`, the value read as YAML the way `--ros-args -p` reads it."""
    name, sep, raw = text.partition(":=")
    if not sep or not name:
        raise ParamError(f"parameter override {text!r} must look like name:=value")
    try:
        return name, yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ParamError(f"parameter override {text!r}: value is not valid YAML: {exc}") from exc


def coerce(spec: ParamSpec, value: Any) -> Any:
    """The value in the declared parameter's type, or ParamError naming both."""
    default = spec.default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        kind = type(default[0])
        ok = isinstance(value, list) and bool(value)
        if ok and kind is float:
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            value = [float(v) for v in value] if ok else value
        elif ok:
            ok = all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    else:
        raise ParamError(f"parameter {spec.name} has an unsupported type {type(default).__name__}")
    if not ok:
        raise ParamError(f"parameter {spec.name} expects {_type_name(default)}, got {value!r}")
    return value


def _type_name(default: Any) -> str:
    if isinstance(default, list):
        return f"a non-empty list of {type(default[0]).__name__}"
    return type(default).__name__


def resolve_parameters(
    specs: Sequence[ParamSpec], file_values: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """Defaults, then the file, then overrides; unknown names are an error, as a typo would be."""
    by_name = {spec.name: spec for spec in specs}
    values = {spec.name: spec.default for spec in specs}
    for source, given in (("parameter file", file_values), ("override", overrides)):
        for name, value in given.items():
            if name not in by_name:
                raise ParamError(f"{source} sets unknown parameter {name!r}")
            values[name] = coerce(by_name[name], value)
    return values
