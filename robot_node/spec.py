"""Observation and action specs, and the names and metadata of the exported ONNX policy.

One definition serves the dataset manifest, the ONNX model's metadata, the weight envelope on
the link and the node's model check, so that a policy trained on one dataset can be checked
against the robot it is about to drive before it moves anything. Specs travel as JSON.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from typing import Any

# ONNX policy graph: input and output names (see docs/ARCHITECTURE.md, "Policy model").
MODEL_INPUT_IMAGE = "image"  # uint8 [B, H, W, 3], RGB, NHWC as a camera delivers it
MODEL_INPUT_STATE = "state"  # float32 [B, S]; present only when the spec has state
MODEL_OUTPUT_MEAN = "mean"  # float32 [B, A]: pre-tanh mean of the moment-matched mixture
MODEL_OUTPUT_LOG_STD = "log_std"  # float32 [B, A]: pre-tanh log std of the mixture
MODEL_OUTPUT_ACTION = "action"  # float32 [B, A]: tanh(mean), the deterministic action

# ONNX metadata_props keys written by the exporter and read by the robot.
META_VERSION = "o2o.version"  # policy version, int as text
META_TRAIN_STEP = "o2o.train_step"  # trainer gradient step, int as text
META_OBSERVATION_SPEC = "o2o.observation_spec"  # ObservationSpec.to_json()
META_ACTION_SPEC = "o2o.action_spec"  # ActionSpec.to_json()
META_WEIGHTS_SHA256 = "o2o.weights_sha256"  # sha256 over the graph's initializers
META_ENSEMBLE_SIZE = "o2o.ensemble_size"  # number of members combined in the graph

IMAGE_ENCODING = "rgb8"


class SpecError(ValueError):
    """A spec is malformed, or two specs that must agree do not."""


@dataclass(frozen=True)
class ObservationSpec:
    """What the policy sees: one RGB uint8 image plus optional float32 proprioception."""

    image_shape: tuple[int, int, int]
    state_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.image_shape)
        if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
            raise SpecError(f"image_shape must be (H, W, 3) with positive sizes, got {self.image_shape}")
        if len(set(self.state_names)) != len(self.state_names):
            raise SpecError(f"state_names must be unique, got {list(self.state_names)}")
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "state_names", tuple(str(n) for n in self.state_names))

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": {"shape": list(self.image_shape), "dtype": "uint8", "encoding": IMAGE_ENCODING},
            "state": {"shape": [self.state_dim], "dtype": "float32", "names": list(self.state_names)},
        }

    @classmethod
    def from_dict(cls, data: Any) -> ObservationSpec:
        try:
            image, state = data["image"], data["state"]
            if image.get("dtype") != "uint8" or image.get("encoding", IMAGE_ENCODING) != IMAGE_ENCODING:
                raise SpecError(f"image must be uint8 {IMAGE_ENCODING}, got {image}")
            if state.get("dtype") != "float32":
                raise SpecError(f"state must be float32, got {state}")
            names = tuple(state["names"])
            if list(state["shape"]) != [len(names)]:
                raise SpecError(f"state shape {state['shape']} does not match {len(names)} names")
            return cls(image_shape=tuple(image["shape"]), state_names=names)
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
            raise SpecError(f"malformed observation spec {reprlib.repr(data)}: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ObservationSpec:
        return cls.from_dict(_loads(text, "observation spec"))


@dataclass(frozen=True)
class ActionSpec:
    """Normalised action: every dimension lies in [low, high]; the robot scales it to its units."""

    names: tuple[str, ...] = ("dx", "dy", "dz", "gripper")
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.names:
            raise SpecError("an action spec needs at least one dimension")
        if not self.low < self.high:
            raise SpecError(f"action bounds must satisfy low < high, got [{self.low}, {self.high}]")
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": [self.dim], "dtype": "float32", "names": list(self.names), "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: Any) -> ActionSpec:
        try:
            if data.get("dtype") != "float32":
                raise SpecError(f"action must be float32, got {data}")
            names = tuple(data["names"])
            if list(data["shape"]) != [len(names)]:
                raise SpecError(f"action shape {data['shape']} does not match {len(names)} names")
            return cls(names=names, low=data["low"], high=data["high"])
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
            raise SpecError(f"malformed action spec {reprlib.repr(data)}: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ActionSpec:
        return cls.from_dict(_loads(text, "action spec"))


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise SpecError(f"{what} is not valid JSON: {type(exc).__name__}: {exc}") from exc
