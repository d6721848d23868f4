"""What every training command shares: the run directory, seeding, progress and divergence checks."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.checkpoint import CHECKPOINT_NAME, RunError
from trainer.networks import NetworkConfig


def prepare_run_dir(out: str, resume: bool = False) -> Path:
    """The run directory, refusing to overwrite an existing run unless resuming it."""
    if not out:
        raise RunError("--out is required: the run directory for checkpoints, metrics and config")
    run_dir = Path(out)
    has_run = (run_dir / CHECKPOINT_NAME).is_file()
    if has_run and not resume:
        raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    if resume and not has_run:
        raise RunError(f"{run_dir}: no run to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    return device


def new_agent(observation_spec: ObservationSpec, action_spec: ActionSpec, network: NetworkConfig) -> EnsembleAgent:
    """A fresh agent; a network that cannot take these observations is a user error."""
    try:
        return EnsembleAgent(observation_spec, action_spec, network)
    except ValueError as exc:
        raise RunError(str(exc)) from None


def set_threads(threads: int) -> None:
    """Torch's intra-op threads; 0 leaves torch's default (one per core). On a machine whose
    cores other processes also use, one thread avoids spinning workers and runs faster."""
    if threads < 0:
        raise RunError(f"--threads {threads}: must be 0 (torch's default) or more")
    if threads:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def progress(total: int, initial: int, desc: str, unit: str) -> tqdm:
    """A progress bar with rate and ETA (tqdm), updated at most twice a second."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=0.5, dynamic_ncols=True)


def check_finite(metrics: dict[str, float], step: int) -> None:
    bad = [name for name in ("critic_loss", "actor_loss") if name in metrics and not math.isfinite(metrics[name])]
    if bad:
        raise RunError(f"training diverged at step {step}: {', '.join(bad)} is not finite; the last checkpoint is kept")
