"""What the two online commands share: finetune-local (a local env) and serve (robots over the
network) fine-tune the same agent with the same learner, and end a run the same way."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.agent import EnsembleAgent
from trainer.checkpoint import RunError, agent_from_checkpoint, read_checkpoint
from trainer.learner import OnlineLearner
from trainer.metrics import RunningMean
from trainer.networks import NetworkConfig
from trainer.offline_data import load_offline
from trainer.plot import plot_runs
from trainer.run import check_finite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pretrained:
    """What fine-tuning takes from a pretrain run."""

    agent: EnsembleAgent
    data: str  # the offline dataset: --data, else the one it was pretrained on
    alpha: float  # the members' temperature at the end of pretraining (geometric mean)


def pretrained_agent(init: str, data: str, network: NetworkConfig, given: set[str]) -> Pretrained:
    """The ensemble of the pretrain run `init` and the offline dataset that goes with it. Its
    shape comes with it: only --ensemble-size may be given, to keep its first members."""
    payload = read_checkpoint(init)
    shape_flags = sorted(name for name in given if name.startswith("network.") and name != "network.ensemble_size")
    if shape_flags:
        flag = shape_flags[0].split(".", 1)[1].replace("_", "-")
        raise RunError(f"--{flag}: the network's shape comes from --init {init}")
    size = network.ensemble_size if "network.ensemble_size" in given else None
    alpha = math.exp(float(payload["learner"]["sac"]["log_alpha"].mean()))
    return Pretrained(agent_from_checkpoint(payload, size), data or payload.get("dataset", ""), alpha)


def build_learner(
    config: Any, agent: EnsembleAgent, data: str, pretrained: bool, alpha: float | None = None
) -> OnlineLearner:
    """The online learner of a FinetuneConfig or ServeConfig, with the offline data its replay
    mode needs. A pretrained agent keeps its encoder frozen unless told otherwise, and brings
    the state normalisation it was trained with; from scratch it takes the data's. With
    --carry-alpha the temperature starts at `alpha`, the pretrained one."""
    freeze = config.learner.freeze_encoder if config.learner.freeze_encoder is not None else pretrained
    offline = None
    if config.replay.mode != "online_only":
        if not data:
            raise RunError(
                f"--replay {config.replay.mode} needs offline data: give --data DIR or --init a pretrained run"
            )
        _, offline = load_offline(data, agent.observation_spec, agent.action_spec)
        if not pretrained:
            agent.normalise_states_like(offline.states[: offline.num_frames])
    learner_config = dataclasses.replace(config.learner, freeze_encoder=freeze)
    learner = OnlineLearner(agent, learner_config, config.sac, config.replay, offline, seed=config.seed)
    if config.learner.carry_alpha and alpha is not None:
        learner.start_alpha(alpha)
    return learner


def train(learner: OnlineLearner, means: RunningMean, updates: int) -> None:
    """`updates` gradient steps (none while the learner warms up); a diverged loss stops the run."""
    for _ in range(updates):
        metrics = learner.update()
        if metrics is not None:
            check_finite(metrics, learner.train_step)
            means.add(metrics)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json and the run's learning curves (curves.png), once it has logged anything."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        plot_runs([run_dir], run_dir / "curves.png")
    except RunError as exc:  # a service stopped before its first episode
        log.warning("no curves.png: %s", exc)
