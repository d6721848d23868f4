"""Soft actor-critic for the whole ensemble in one batched update, offline (with CQL) or online.

Two ways to use the N members, chosen by `policy`:

- "members": N independent agents, each with its own policy, temperature, critic and TD
  target (offline pretraining: N CQL agents). With a CQL config the regulariser is added to
  every member's critic loss.
- "mixture": the ensemble agent of Lee et al. 2021 (online fine-tuning). It acts with the
  Gaussian that moment-matches the members' mixture; its actor maximises the mean over members
  of each member's min-twin Q; every member's critic keeps its own target network and TD
  target, bootstrapped with actions from the mixture (`next_action="member"`: from each
  member's own policy, as in pretraining); one temperature for the mixture. A CQL config
  keeps the regulariser online too (a small weight; the paper drops it).

The critic loss trains the encoder (when it is trainable); the actor sees detached features,
as in DrQ-v2, except in pretraining's cloning steps, whose loss reaches the encoder too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.agent import EnsembleAgent
from trainer.cql import CQLConfig, cql_gap
from trainer.distributions import moment_match, sample_tanh_gaussian

NEXT_ACTIONS = ("mixture", "member")
POLICIES = ("mixture", "members")


@dataclass(frozen=True)
class SACConfig:
    gamma: float = 0.99
    n_step: int = field(
        default=1, metadata={"help": "TD targets from n-step returns (DrQ-v2 uses 3); 1: the paper's one-step target"}
    )
    tau: float = 0.01  # target network Polyak rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    target_entropy: float | None = None  # None: −(action dimensions), the SAC heuristic
    augment_pad: int = 4  # random-shift pixels; 0 turns augmentation off
    backup_entropy: bool = True  # the soft TD target (SAC, the paper's online phase); False drops −α log π there
    bc_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a cloning term in the actor loss, (tanh(mean) - a)² on the batch's actions, scaled by "
            "mean |Q| as in TD3+BC (0.4 there is its α = 2.5); 0: none"
        },
    )
    next_action: str = field(
        default="mixture",
        metadata={"help": "online TD targets bootstrap with the mixture's action (the paper) or each member's own"},
    )

    def __post_init__(self) -> None:
        if self.n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {self.n_step}")
        if self.next_action not in NEXT_ACTIONS:
            raise ValueError(f"next_action must be one of {', '.join(NEXT_ACTIONS)}, got {self.next_action!r}")


@dataclass
class Batch:
    """Transitions as tensors with a leading member axis M: 1 (shared minibatch) or N (own)."""

    obs: torch.Tensor  # uint8 images [M, B, H, W, 3] or cached encoder features [M, B, D]
    state: torch.Tensor  # float32 [M, B, S]
    action: torch.Tensor  # [M, B, A]
    reward: torch.Tensor  # [M, B]
    discount: torch.Tensor  # [M, B]: γ^k for a k-step return, 0 where the task ended (no bootstrap)
    next_obs: torch.Tensor
    next_state: torch.Tensor
    mc_return: torch.Tensor | None = None  # [M, B]: the data's discounted return from s (Cal-QL's bound)

    @classmethod
    def from_numpy(cls, data: dict[str, np.ndarray], device: torch.device) -> Batch:
        """From FrameStore.gather() output with a leading [M, B] (or [B]: one shared minibatch)."""
        tensors = {key: torch.as_tensor(value).to(device, non_blocking=True) for key, value in data.items()}
        if tensors["reward"].dim() == 1:
            tensors = {key: value.unsqueeze(0) for key, value in tensors.items()}
        return cls(**tensors)


class EnsembleSAC:
    def __init__(
        self,
        agent: EnsembleAgent,
        config: SACConfig,
        policy: str = "mixture",
        cql: CQLConfig | None = None,
        train_encoder: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.agent = agent
        self.config = config
        self.policy_mode = policy
        self.cql = cql
        self.train_encoder = train_encoder
        device = next(agent.parameters()).device
        temperatures = agent.ensemble_size if policy == "members" else 1
        self.log_alpha = torch.full((temperatures,), math.log(config.init_alpha), device=device, requires_grad=True)
        self.target_entropy = -float(agent.action_spec.dim) if config.target_entropy is None else config.target_entropy
        critic_params = list(agent.critic.parameters()) + (list(agent.encoder.parameters()) if train_encoder else [])
        agent.encoder.requires_grad_(train_encoder)
        self.critic_optimizer = torch.optim.Adam(critic_params, lr=config.critic_lr)
        self.actor_optimizer = torch.optim.Adam(agent.actor.parameters(), lr=config.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.log_cql_multiplier: torch.Tensor | None = None
        if cql is not None and cql.lagrange:
            self.log_cql_multiplier = torch.zeros(agent.ensemble_size, device=device, requires_grad=True)
            self.cql_multiplier_optimizer = torch.optim.Adam([self.log_cql_multiplier], lr=cql.lagrange_lr)

    def _sample(self, mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions [N, B, A] and log probs [P, B] from the members' policies or their mixture."""
        if self.policy_mode == "members":
            return sample_tanh_gaussian(mean, log_std)
        action, log_prob = sample_tanh_gaussian(*moment_match(mean, log_std))
        return action.expand(mean.shape[0], -1, -1), log_prob.unsqueeze(0)

    def _sample_next(self, mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The TD target's next actions: the acting policy's, or each member's own."""
        if self.config.next_action == "member":
            return sample_tanh_gaussian(mean, log_std)
        return self._sample(mean, log_std)

    def update(self, batch: Batch, clone_data: bool = False, actor_scale: float = 1.0) -> dict[str, float]:
        """One step of critics, actors and temperatures. With `clone_data` (pretraining's first
        `bc_steps`) the actors regress the data's actions instead of maximising Q, and that loss
        trains the encoder too, which then locates the object long before the critic alone would.

        `actor_scale` multiplies the actor's learning rate for this step: 0 trains the critics
        alone (actor and temperature untouched), so that fine-tuning can let the critics settle
        on the online target before the policy follows them."""
        if clone_data and self.policy_mode != "members":
            raise ValueError("cloning the data's actions is a step of offline pretraining (policy='members')")
        agent, cfg = self.agent, self.config
        n = agent.ensemble_size
        pad = cfg.augment_pad if self.train_encoder else 0
        state, next_state = agent.state_input(batch.state), agent.state_input(batch.next_state)
        features = agent.features(batch.obs, pad)
        alpha = self.log_alpha.exp().detach().unsqueeze(-1)  # [P, 1]

        with torch.no_grad():
            next_features = agent.features(batch.next_obs, pad)
            next_policy = agent.actor(next_features, next_state)
            next_action, next_log_prob = self._sample_next(*next_policy)
            next_q = agent.critic_target(next_features, next_state, next_action).min(dim=1).values  # [N, B]
            if cfg.backup_entropy:
                next_q = next_q - alpha * next_log_prob
            target = batch.reward + batch.discount * next_q

        embedding = agent.critic.embed(features, state)
        q = agent.critic.q(embedding, batch.action.expand(n, -1, -1))  # [N, 2, B]
        critic_loss = (q - target.unsqueeze(1)).square().mean(dim=-1).sum()
        metrics = {
            "critic_loss": critic_loss.item() / (2 * n),
            "q_data": q.mean().item(),
            "q_member_std": q.mean(dim=(1, 2)).std().item() if n > 1 else 0.0,
            "q_target": target.mean().item(),
        }
        # The critic step does not touch the actor, so its output at s serves both steps.
        mean, log_std = agent.actor(features if clone_data else features.detach(), state)
        loss = critic_loss
        if self.cql is not None:
            policy_at_s = (mean.detach(), log_std.detach())
            gap, cql_metrics = cql_gap(
                agent.critic, embedding, q, policy_at_s, next_policy, self.cql, lower_bound=batch.mc_return
            )
            metrics.update(cql_metrics)
            loss = loss + self._cql_loss(gap, metrics)
        if clone_data:  # one backward pass: the cloning loss reaches the encoder with the critic's
            actor_loss = (torch.tanh(mean) - batch.action).square().mean(dim=(-2, -1)).sum()
            loss = loss + actor_loss
            self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        if clone_data:
            self.actor_optimizer.step()
            with torch.no_grad():
                action, log_prob = self._sample(mean, log_std)
        elif actor_scale <= 0.0:
            with torch.no_grad():
                action, log_prob = self._sample(mean, log_std)
            metrics.update(alpha=self.log_alpha.exp().mean().item(), entropy=-log_prob.mean().item(), actor_scale=0.0)
            self._update_targets()
            return metrics
        else:
            for group in self.actor_optimizer.param_groups:
                group["lr"] = cfg.actor_lr * actor_scale
            action, log_prob = self._sample(mean, log_std)
            agent.critic.requires_grad_(False)
            q_policy = agent.critic(features.detach(), state, action).min(dim=1).values  # [N, B]
            agent.critic.requires_grad_(True)
            if self.policy_mode == "mixture":
                q_policy = q_policy.mean(dim=0, keepdim=True)  # the ensemble's Q: mean over members
            actor_loss = (alpha * log_prob - q_policy).mean(dim=-1).sum()
            if cfg.bc_weight > 0:  # every member's mean action near the data's, in Q's units
                cloning = (torch.tanh(mean) - batch.action).square().mean(dim=(-2, -1)).sum()
                metrics["actor_cloning"] = cloning.item() / mean.shape[0]
                actor_loss = actor_loss + cfg.bc_weight * q_policy.abs().mean().detach() * cloning
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()

        alpha_loss = -(self.log_alpha.unsqueeze(-1) * (log_prob.detach() + self.target_entropy)).mean(dim=-1).sum()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        self._update_targets()
        metrics.update(
            actor_loss=actor_loss.item() / log_prob.shape[0],
            alpha=self.log_alpha.exp().mean().item(),
            entropy=-log_prob.mean().item(),
            actor_scale=actor_scale,
        )
        return metrics

    @torch.no_grad()
    def _update_targets(self) -> None:
        for target_param, param in zip(self.agent.critic_target.parameters(), self.agent.critic.parameters()):
            target_param.lerp_(param, self.config.tau)

    def _cql_loss(self, gap: torch.Tensor, metrics: dict[str, float]) -> torch.Tensor:
        """gap [N, 2] -> the weighted regulariser; with Lagrange, also steps the multiplier."""
        cql = self.cql
        assert cql is not None
        if self.log_cql_multiplier is None:
            return cql.alpha * gap.sum()
        multiplier = self.log_cql_multiplier.exp().clamp(0.0, 1e6).unsqueeze(-1)  # [N, 1]
        # One multiplier per member serves both twins: its loss averages them (as the CQL
        # reference's 0.5 * (twin 1 + twin 2)); a sum would double its learning rate.
        multiplier_loss = -(multiplier * (cql.alpha * gap.detach() - cql.target_action_gap)).mean(dim=1).sum()
        self.cql_multiplier_optimizer.zero_grad(set_to_none=True)
        multiplier_loss.backward()
        self.cql_multiplier_optimizer.step()
        metrics["cql/multiplier"] = multiplier.mean().item()
        return (multiplier.detach() * (cql.alpha * gap - cql.target_action_gap)).sum()

    def state_dict(self) -> dict:
        state = {
            "log_alpha": self.log_alpha.detach().clone(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }
        if self.log_cql_multiplier is not None:
            state["log_cql_multiplier"] = self.log_cql_multiplier.detach().clone()
            state["cql_multiplier_optimizer"] = self.cql_multiplier_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            if self.log_cql_multiplier is not None:
                self.log_cql_multiplier.copy_(state["log_cql_multiplier"])
                self.cql_multiplier_optimizer.load_state_dict(state["cql_multiplier_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
