"""Run directories and checkpoints: what a run saves, and how an agent comes back from one.

A checkpoint holds the ensemble's weights, the learner's optimiser state, the step counter,
the specs and the network shape, so that pretraining resumes where it stopped and fine-tuning
and export rebuild exactly the network that was trained. It is written to a temporary file
and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.networks import NetworkConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "o2o_rl/trainer-checkpoint"
VERSION = 2  # 2: the agent carries its state normalisation


class RunError(Exception):
    """A run directory or checkpoint cannot be used; the message says why."""


def save_checkpoint(
    run_dir: Path, agent: EnsembleAgent, *, kind: str, step: int, learner_state: dict, extra: dict | None = None
) -> Path:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,  # pretrain | finetune
        "step": step,
        "network": dataclasses.asdict(agent.config),
        "observation_spec": agent.observation_spec.to_json(),
        "action_spec": agent.action_spec.to_json(),
        "agent": agent.state_dict(),
        "learner": learner_state,
        **(extra or {}),
    }
    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {CHECKPOINT_NAME}; not a trainer run directory (create one with `o2o-trainer pretrain`)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise RunError(f"{path}: not an {FORMAT} v{VERSION} checkpoint")
    return payload


def agent_from_checkpoint(payload: dict[str, Any], ensemble_size: int | None = None) -> EnsembleAgent:
    """Rebuild the agent; with `ensemble_size` k below the trained N, keep members 0..k-1."""
    network = NetworkConfig(**payload["network"])
    state = payload["agent"]
    if ensemble_size is not None and ensemble_size != network.ensemble_size:
        if not 1 <= ensemble_size <= network.ensemble_size:
            raise RunError(f"--ensemble-size {ensemble_size}: the checkpoint holds {network.ensemble_size} members")
        state = select_members(state, network, list(range(ensemble_size)))
        network = dataclasses.replace(network, ensemble_size=ensemble_size)
    agent = EnsembleAgent(
        ObservationSpec.from_json(payload["observation_spec"]), ActionSpec.from_json(payload["action_spec"]), network
    )
    agent.load_state_dict(state)
    return agent


def select_members(
    state: dict[str, torch.Tensor], network: NetworkConfig, members: list[int]
) -> dict[str, torch.Tensor]:
    """An agent state dict restricted to some members, in the order given. Stacked parameters
    lead with members (trunks, actor heads), members × twins (critic heads) or members ×
    channels (per-member encoder); a shared encoder and the state normalisation belong to
    all members."""
    out = {}
    for key, value in state.items():
        if key in ("state_mean", "state_std"):
            out[key] = value.clone()
            continue
        if key.startswith("encoder."):
            if network.encoder == "shared":
                out[key] = value.clone()
                continue
            per = network.channels
        else:
            per = 2 if ".heads." in key else 1
        rows = torch.tensor([m * per + j for m in members for j in range(per)])
        out[key] = value.index_select(0, rows).clone()
    return out
