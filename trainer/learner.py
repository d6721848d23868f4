"""The online learner behind a narrow surface: add a transition, do an update, export a policy.

The local runner (trainer/finetune.py) feeds it from a gymnasium env; a network service can
feed it transitions streamed from robots in exactly the same way, because its input is the
robot's own `Transition` and its output the robot's own `PolicyWeights`.

The strategy is the ensemble of Lee et al. 2021: SAC on the moment-matched mixture of the
pretrained members, each critic with its own target, no CQL term, drawing minibatches from
balanced replay (or the uniform / online-only baselines). With a frozen encoder every frame is
encoded once on arrival and only trunks and heads are trained, which is what makes pixel
fine-tuning interactive on a CPU.

Not thread-safe: a service that receives on one thread and trains on another must serialise
the calls (a lock, or a queue drained by the training thread). `export_policy` runs the ONNX
exporter, which takes seconds; call it every so many updates, not every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from robot_node.link_interface import PolicyWeights, Transition
from trainer.agent import EnsembleAgent
from trainer.cql import CQLConfig
from trainer.density_ratio import DensityRatioEstimator, priorities
from trainer.export import export_onnx
from trainer.frame_store import FrameStore
from trainer.replay import Replay, ReplayConfig
from trainer.sac import POLICIES, Batch, EnsembleSAC, SACConfig

STRATEGIES = ("pessimistic_ensemble",)  # BRED and REDQ+adaptive BC would be further entries


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 256
    warmup: int = field(default=500, metadata={"help": "online transitions collected before the first update"})
    freeze_encoder: bool | None = field(
        default=None,
        metadata={"help": "train only trunks and heads on cached encoder features; default: yes with --init, else no"},
    )
    ratio_batch_size: int = field(default=256, metadata={"help": "online and offline minibatches of the density ratio"})
    ratio_lr: float = 3e-4
    ratio_hidden: int = 128  # its first layer sees every encoder feature: 3,872 wide at 64x64
    strategy: str = field(default="pessimistic_ensemble", metadata={"help": "online learning strategy"})
    actor_delay: int = field(
        default=0,
        metadata={"help": "first updates that train only the critics, leaving the pretrained actor and α as they are"},
    )
    actor_ramp: int = field(
        default=0, metadata={"help": "updates after the delay over which the actor's learning rate rises from 0"}
    )
    carry_alpha: bool = field(
        default=False, metadata={"help": "start α at the pretrained members' (geometric mean), not at --init-alpha"}
    )
    online_cql_alpha: float = field(
        default=0.0, metadata={"help": "weight of a CQL(H) term kept in the online critic loss; 0: none (the paper)"}
    )
    policy: str = field(
        default="mixture",
        metadata={
            "help": "mixture: one actor loss through the members' moment-matched mixture (the paper); members: "
            "each member's actor follows its own critic with its own α, as in pretraining (acting stays the mixture)"
        },
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.actor_delay < 0 or self.actor_ramp < 0 or self.online_cql_alpha < 0:
            raise ValueError("actor_delay, actor_ramp and online_cql_alpha must not be negative")

    def actor_scale(self, update: int) -> float:
        """The actor's learning-rate factor at online update `update` (0-based): 0 during the
        delay, then a linear rise over the ramp, then 1."""
        if update < self.actor_delay:
            return 0.0
        if self.actor_ramp == 0:
            return 1.0
        return min(1.0, (update - self.actor_delay + 1) / self.actor_ramp)


class OnlineLearner:
    def __init__(
        self,
        agent: EnsembleAgent,
        config: LearnerConfig,
        sac: SACConfig,
        replay: ReplayConfig,
        offline: FrameStore | None,
        seed: int = 0,
    ) -> None:
        if config.freeze_encoder is None:
            raise ValueError("LearnerConfig.freeze_encoder must be decided (True or False) before building a learner")
        self.agent = agent
        self.config = config
        self.device = next(agent.parameters()).device
        self.train_step = 0
        self.rejected: dict[str, int] = {}
        feature_dim = agent.feature_dim if config.freeze_encoder else 0
        if offline is not None and config.freeze_encoder:
            offline.cache_features(agent.encode_frames(offline.frames[: offline.num_frames]))
        spec = agent.observation_spec
        online = FrameStore(
            replay.online_capacity, spec.image_shape, spec.state_dim, agent.action_spec.dim, feature_dim
        )
        self.replay = Replay(replay, online, offline, warmup=config.warmup, seed=seed)
        cql = CQLConfig(alpha=config.online_cql_alpha) if config.online_cql_alpha > 0 else None
        self.sac = EnsembleSAC(agent, sac, policy=config.policy, cql=cql, train_encoder=not config.freeze_encoder)
        self.ratio = None
        if replay.mode == "balanced":
            self.ratio = DensityRatioEstimator(
                agent.feature_dim + agent.state_dim + agent.action_spec.dim,
                config.ratio_hidden,
                config.ratio_lr,
                self.device,
            )

    # -- the narrow surface ------------------------------------------------------------------
    def add_transition(self, t: Transition) -> bool:
        """Store one streamed step; a malformed one is refused, counted by reason, never raised."""
        problem = check_transition(t, self.agent)
        if problem is not None:
            self.rejected[problem] = self.rejected.get(problem, 0) + 1
            return False
        features = next_features = None
        if self.config.freeze_encoder:
            features = self._encode(t.image[None])[0]
            if t.is_last and t.next_image is not None:
                next_features = self._encode(t.next_image[None])[0]
        self.replay.add(t, features, next_features)
        return True

    @property
    def ready(self) -> bool:
        return self.replay.counters["transitions"] >= self.config.warmup

    def update(self) -> dict[str, float] | None:
        """One gradient step on every network; None while still warming up."""
        if not self.ready:
            return None
        indices = self.replay.sample(self.config.batch_size)
        sac = self.sac.config
        data = self.replay.gather(indices, self.config.freeze_encoder, sac.n_step, sac.gamma)
        metrics = {}
        if self.ratio is not None:
            metrics.update(self._update_ratio_and_priorities(indices, data))
        scale = self.config.actor_scale(self.train_step)
        metrics.update(self.sac.update(Batch.from_numpy(data, self.device), actor_scale=scale))
        metrics["replay/offline_fraction"] = float(self.replay.is_offline(indices).mean())
        self.train_step += 1
        return metrics

    def export_policy(self, version: int) -> PolicyWeights:
        onnx_bytes = export_onnx(self.agent, version=version, train_step=self.train_step)
        return PolicyWeights.from_onnx(
            onnx_bytes,
            version=version,
            train_step=self.train_step,
            observation_spec=self.agent.observation_spec,
            action_spec=self.agent.action_spec,
        )

    # -- balanced replay ---------------------------------------------------------------------
    def _update_ratio_and_priorities(self, indices: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
        assert self.ratio is not None and self.replay.offline is not None
        k, rng = self.config.ratio_batch_size, self.replay.rng
        online = self._ratio_input(
            self.replay.online.gather(self.replay.online.sample_uniform(k, rng), self.config.freeze_encoder)
        )
        offline = self._ratio_input(
            self.replay.offline.gather(self.replay.offline.sample_uniform(k, rng), self.config.freeze_encoder)
        )
        w = self.ratio.weights(self._ratio_input(data))  # the sampled batch's weights, before the ratio step
        w_offline, metrics = self.ratio.update(online, offline)
        p = priorities(w, w_offline, self.replay.config.temperature).cpu().numpy()
        self.replay.update_priorities(indices, p)
        is_offline = self.replay.is_offline(indices)
        metrics["ratio/w_batch"] = float(w.mean())
        metrics["replay/max_priority"] = self.replay.max_priority
        if is_offline.any():
            metrics["replay/priority_offline"] = float(p[is_offline].mean())
        if not is_offline.all():
            metrics["replay/priority_online"] = float(p[~is_offline].mean())
        return metrics

    def _ratio_input(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        """(encoder features, normalised proprioception, action): the ratio tells online from
        offline data by everything the critics see, the arm's pose included."""
        obs = torch.as_tensor(data["obs"], device=self.device)
        parts = [obs.float() if self.config.freeze_encoder else self._encode_tensor(obs)]
        state = self.agent.state_input(torch.as_tensor(data["state"], device=self.device))
        if state is not None:
            parts.append(state)
        parts.append(torch.as_tensor(data["action"], device=self.device))
        return torch.cat(parts, dim=-1)

    def _encode(self, images: np.ndarray) -> np.ndarray:
        return self._encode_tensor(torch.as_tensor(images, device=self.device)).cpu().numpy().astype(np.float16)

    @torch.no_grad()
    def _encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        return self.agent.flat_features(images)

    def start_alpha(self, alpha: float) -> None:
        """Start every temperature (the mixture's, or each member's) at `alpha`, carried over
        from pretraining."""
        with torch.no_grad():
            self.sac.log_alpha.fill_(math.log(alpha))

    def state_dict(self) -> dict:
        state = {"sac": self.sac.state_dict(), "train_step": self.train_step}
        if self.ratio is not None:
            state["ratio"] = self.ratio.net.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` (optimisers, temperature, step count, density ratio);
        the replay is refilled by the caller."""
        self.sac.load_state_dict(state["sac"])
        self.train_step = int(state["train_step"])
        if self.ratio is not None and "ratio" in state:
            self.ratio.net.load_state_dict(state["ratio"])


def check_transition(t: Transition, agent: EnsembleAgent) -> str | None:
    """The first thing wrong with a streamed transition, as a short reason, or None."""
    spec, action_spec = agent.observation_spec, agent.action_spec
    if not isinstance(t.episode_id, str) or not t.episode_id:
        return "episode_id is not a non-empty string"
    images = [("image", t.image)] + ([("next_image", t.next_image)] if t.next_image is not None else [])
    for name, image in images:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != spec.image_shape:
            return f"{name} is not uint8{list(spec.image_shape)}"
    states = [("state", t.state)] + ([("next_state", t.next_state)] if t.next_state is not None else [])
    for name, state in states:
        if not isinstance(state, np.ndarray) or state.shape != (spec.state_dim,) or not np.isfinite(state).all():
            return f"{name} is not finite float[{spec.state_dim}]"
    action = t.action
    if not isinstance(action, np.ndarray) or action.shape != (action_spec.dim,) or not np.isfinite(action).all():
        return f"action is not finite float[{action_spec.dim}]"
    if (action < action_spec.low - 1e-6).any() or (action > action_spec.high + 1e-6).any():
        return f"action outside [{action_spec.low}, {action_spec.high}]"
    if not isinstance(t.reward, (int, float, np.number)) or not math.isfinite(float(t.reward)):
        return "reward is not a finite number"
    if not isinstance(t.step, (int, np.integer)) or t.step < 0:
        return "step is not a non-negative integer"
    return None
