"""ONNX export of the whole ensemble and its combination rule, in the robot's contract.

Inputs and outputs, names, dtypes and metadata are robot_node.spec's (docs/ARCHITECTURE.md,
"Policy model"): uint8 NHWC image (normalised inside the graph), float32 state when the spec
has state, dynamic batch; outputs the moment-matched mixture's pre-tanh mean and log std and
the deterministic action tanh(mean). The robot runs one session per control step.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from robot_node import spec as names
from trainer.agent import EnsembleAgent


class PolicyGraph(nn.Module):
    """What the robot runs: encoder, N actors, moment matching, tanh."""

    def __init__(self, agent: EnsembleAgent) -> None:
        super().__init__()
        self.agent = agent

    def forward(
        self, image: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if state is not None and not self.agent.state_dim:
            # The spec has state but this agent ignores it: keep it as an input the graph reads.
            image = image + (state.sum() * 0).to(image.dtype)
        mean, log_std = self.agent.mixture(image, state if self.agent.state_dim else None)
        return mean, log_std, torch.tanh(mean)


def weights_sha256(model: onnx.ModelProto) -> str:
    """sha256 over the graph's initializers, sorted by name: name, dtype, shape and raw bytes
    of each. Independent of metadata, so it identifies the weights, not the file."""
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(init)
        digest.update(init.name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(str(list(array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_onnx(agent: EnsembleAgent, *, version: int, train_step: int) -> bytes:
    """The serialised ONNX model (one self-contained file, weights inside)."""
    graph = PolicyGraph(copy.deepcopy(agent).cpu().eval())
    spec = agent.observation_spec
    batch = torch.export.Dim("batch", min=1, max=4096)
    image = torch.zeros((2, *spec.image_shape), dtype=torch.uint8)
    inputs: tuple[torch.Tensor, ...] = (image,)
    dynamic = {"image": {0: batch}}
    input_names = [names.MODEL_INPUT_IMAGE]
    if spec.state_dim:
        inputs += (torch.zeros((2, spec.state_dim), dtype=torch.float32),)
        dynamic["state"] = {0: batch}
        input_names.append(names.MODEL_INPUT_STATE)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # the exporter is chatty about internals we do not control
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                inputs,
                dynamo=True,
                input_names=input_names,
                output_names=[names.MODEL_OUTPUT_MEAN, names.MODEL_OUTPUT_LOG_STD, names.MODEL_OUTPUT_ACTION],
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    model = program.model_proto
    metadata = {
        names.META_VERSION: str(int(version)),
        names.META_TRAIN_STEP: str(int(train_step)),
        names.META_OBSERVATION_SPEC: spec.to_json(),
        names.META_ACTION_SPEC: agent.action_spec.to_json(),
        names.META_ENSEMBLE_SIZE: str(agent.ensemble_size),
        names.META_WEIGHTS_SHA256: weights_sha256(model),
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()
