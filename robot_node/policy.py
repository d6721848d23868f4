"""The ONNX policy on the robot: one onnxruntime session per model, and the checks a model
must pass before it may drive the arm.

A model is refused with `ModelRejected(reason)` when its bytes do not match the sha256 of their
envelope, it is larger than the size limit, onnxruntime cannot load it, its metadata or specs
differ from the robot's, its inputs and outputs do not match the contract (docs/ARCHITECTURE.md,
"Policy model"), or it gives non-finite outputs on a probe image. `load_policy` is what a
hot swap and the link's weight-push benchmark call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from robot_node.link_interface import PolicyWeights
from robot_node.spec import (
    META_ACTION_SPEC,
    META_ENSEMBLE_SIZE,
    META_OBSERVATION_SPEC,
    META_TRAIN_STEP,
    META_VERSION,
    MODEL_INPUT_IMAGE,
    MODEL_INPUT_STATE,
    MODEL_OUTPUT_ACTION,
    MODEL_OUTPUT_LOG_STD,
    MODEL_OUTPUT_MEAN,
    ActionSpec,
    ObservationSpec,
    SpecError,
)

DEFAULT_MAX_BYTES = 256 * 2**20
OUTPUTS = (MODEL_OUTPUT_MEAN, MODEL_OUTPUT_LOG_STD, MODEL_OUTPUT_ACTION)


class ModelRejected(Exception):
    """A model that must not drive the arm; `reason` is one line for logs and diagnostics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PolicyOutput:
    mean: np.ndarray  # float32 [A], pre-tanh
    log_std: np.ndarray  # float32 [A]
    action: np.ndarray  # float32 [A], tanh(mean)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """tanh(mean + std * eps): exploration from the policy's squashed Gaussian."""
        noise = rng.standard_normal(self.mean.shape)
        return np.tanh(self.mean + np.exp(self.log_std) * noise).astype(np.float32)


class PolicyRunner:
    """A checked model: runs one observation at a time."""

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        version: int,
        train_step: int,
        ensemble_size: int,
        sha256: str,
        observation_spec: ObservationSpec,
        action_spec: ActionSpec,
    ) -> None:
        self._session = session
        self.version, self.train_step, self.ensemble_size, self.sha256 = version, train_step, ensemble_size, sha256
        self.observation_spec, self.action_spec = observation_spec, action_spec
        self._has_state = observation_spec.state_dim > 0

    def infer(self, image: np.ndarray, state: np.ndarray) -> PolicyOutput:
        """image uint8 [H, W, 3] RGB at the model's size, state float32 [S]."""
        feeds = {MODEL_INPUT_IMAGE: image[None]}
        if self._has_state:
            feeds[MODEL_INPUT_STATE] = np.asarray(state, dtype=np.float32)[None]
        mean, log_std, action = self._session.run(OUTPUTS, feeds)
        return PolicyOutput(mean[0], log_std[0], action[0])


def load_policy(
    weights: PolicyWeights,
    observation_spec: ObservationSpec,
    action_spec: ActionSpec,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    threads: int = 2,
) -> PolicyRunner:
    """Check offered weights against the robot's specs and return a runner, or raise ModelRejected."""
    _check_size(len(weights.onnx), max_bytes)
    digest = hashlib.sha256(weights.onnx).hexdigest()
    if digest != weights.sha256:
        raise ModelRejected(f"sha256 mismatch: envelope says {weights.sha256[:12]}…, bytes hash to {digest[:12]}…")
    if weights.observation_spec != observation_spec or weights.action_spec != action_spec:
        raise ModelRejected("the envelope's observation/action specs differ from the robot's")
    session = _session(weights.onnx, threads)
    runner = _checked_runner(session, digest, observation_spec, action_spec)
    if runner.version != weights.version:
        raise ModelRejected(f"envelope version {weights.version} but model metadata says {runner.version}")
    return runner


def load_policy_file(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, threads: int = 2) -> PolicyRunner:
    """The model the node starts with; its metadata specs become the robot's specs."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRejected(f"cannot read model {path}: {exc.strerror}") from exc
    _check_size(len(data), max_bytes)
    session = _session(data, threads)
    meta = session.get_modelmeta().custom_metadata_map
    observation_spec, action_spec = _spec_from_meta(meta)
    return _checked_runner(session, hashlib.sha256(data).hexdigest(), observation_spec, action_spec)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ModelRejected(f"model is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.1f} MiB limit")


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime's own warnings would flood the node's log
    # Idle worker threads sleep instead of spinning: on a robot computer shared with drivers and
    # controllers, spinning threads steal the cores the next tick needs (p99 latency roughly
    # halves under load in bench/node.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad graph
        raise ModelRejected(f"onnxruntime cannot load the model: {_one_line(exc)}") from exc


def _spec_from_meta(meta: dict[str, str]) -> tuple[ObservationSpec, ActionSpec]:
    for key in (META_OBSERVATION_SPEC, META_ACTION_SPEC):
        if key not in meta:
            raise ModelRejected(f"model metadata lacks {key}")
    try:
        return ObservationSpec.from_json(meta[META_OBSERVATION_SPEC]), ActionSpec.from_json(meta[META_ACTION_SPEC])
    except SpecError as exc:
        raise ModelRejected(f"model metadata has a malformed spec: {exc}") from exc


def _int_meta(meta: dict[str, str], key: str, required: bool) -> int:
    if key not in meta:
        if required:
            raise ModelRejected(f"model metadata lacks {key}")
        return 0
    try:
        return int(meta[key])
    except ValueError as exc:
        raise ModelRejected(f"model metadata {key}={meta[key]!r} is not an integer") from exc


def _checked_runner(
    session: ort.InferenceSession, sha256: str, observation_spec: ObservationSpec, action_spec: ActionSpec
) -> PolicyRunner:
    meta = session.get_modelmeta().custom_metadata_map
    if _spec_from_meta(meta) != (observation_spec, action_spec):
        raise ModelRejected("the model's metadata specs differ from the robot's observation/action specs")
    _check_signature(session, observation_spec, action_spec)
    runner = PolicyRunner(
        session,
        version=_int_meta(meta, META_VERSION, required=True),
        train_step=_int_meta(meta, META_TRAIN_STEP, required=False),
        ensemble_size=_int_meta(meta, META_ENSEMBLE_SIZE, required=False),
        sha256=sha256,
        observation_spec=observation_spec,
        action_spec=action_spec,
    )
    _probe(runner)
    return runner


def _check_signature(session: ort.InferenceSession, observation_spec: ObservationSpec, action_spec: ActionSpec) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    expected = {MODEL_INPUT_IMAGE: ("tensor(uint8)", list(observation_spec.image_shape))}
    if observation_spec.state_dim:
        expected[MODEL_INPUT_STATE] = ("tensor(float)", [observation_spec.state_dim])
    if set(inputs) != set(expected):
        raise ModelRejected(f"model inputs {sorted(inputs)} but the robot feeds {sorted(expected)}")
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        raise ModelRejected(f"model lacks outputs {missing} (has {sorted(outputs)})")
    expected.update({name: ("tensor(float)", [action_spec.dim]) for name in OUTPUTS})
    for name, (dtype, trailing) in expected.items():
        arg = inputs.get(name) or outputs[name]
        if arg.type != dtype:
            raise ModelRejected(f"model {name} is {arg.type}, expected {dtype}")
        shape = list(arg.shape)
        # The batch dimension is free; a named (symbolic) dimension elsewhere is checked by the probe.
        if len(shape) != 1 + len(trailing) or any(
            isinstance(got, int) and got != want for got, want in zip(shape[1:], trailing)
        ):
            raise ModelRejected(f"model {name} has shape {shape}, expected [batch, {', '.join(map(str, trailing))}]")


def probe_image(shape: tuple[int, int, int]) -> np.ndarray:
    """A fixed, textured image: gradients and noise, so a model cannot pass on a flat frame only."""
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(0).integers(0, 64, size=shape)
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(h + w - 2, 1)], -1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _probe(runner: PolicyRunner) -> None:
    state = np.zeros(runner.observation_spec.state_dim, np.float32)
    try:
        out = runner.infer(probe_image(runner.observation_spec.image_shape), state)
    except Exception as exc:
        raise ModelRejected(f"model fails on a probe image: {_one_line(exc)}") from exc
    for name in OUTPUTS:
        value = getattr(out, name)
        if value.shape != (runner.action_spec.dim,):
            raise ModelRejected(f"probe: {name} has shape {value.shape}, expected ({runner.action_spec.dim},)")
        if not np.all(np.isfinite(value)):
            raise ModelRejected(f"probe: {name} is not finite ({value.tolist()})")


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
