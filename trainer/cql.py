"""The CQL(H) regulariser (Kumar et al. 2020) that keeps offline Q-values pessimistic.

For every member and twin head: logsumexp of Q over sampled actions, importance-weighted by
the density they were drawn from (uniform, the current policy at s, the current policy at s'),
minus Q on the dataset's actions. Minimising it pushes Q down on actions the data does not
support and up on the ones it does. The paper's online phase drops it (`--online-cql-alpha`
keeps a small weight).

Cal-QL (Nakamoto et al. 2023) calibrates the regulariser: the Q-values of the policy's actions
that it pushes down are first raised to at least the data's Monte-Carlo return from s, so the
pretrained Q never sits below the value the behaviour in the data reached. Fine-tuning then
does not start by "discovering" that Q was too low everywhere, which is what unlearns a
policy in the first online updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from trainer.distributions import sample_tanh_gaussian
from trainer.networks import Critic


@dataclass(frozen=True)
class CQLConfig:
    alpha: float = 5.0  # min_q_weight in the CQL reference
    num_actions: int = 10  # sampled per source (uniform, π(s), π(s')) per transition
    temperature: float = 1.0
    lagrange: bool = False  # tune a multiplier so that the gap stays near target_action_gap
    target_action_gap: float = 5.0
    lagrange_lr: float = 3e-4
    calibrated: bool = field(
        default=False,
        metadata={"help": "Cal-QL: the policy's Q-values in the regulariser are bounded below by the data's MC return"},
    )


def cql_gap(
    critic: Critic,
    embedding: torch.Tensor,
    q_data: torch.Tensor,
    policy_at_s: tuple[torch.Tensor, torch.Tensor],
    policy_at_next: tuple[torch.Tensor, torch.Tensor],
    config: CQLConfig,
    lower_bound: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per member and twin head, logsumexp_a Q(s, a) − Q(s, a_data), averaged over the batch.

    embedding: the critic's trunk output at s [N, B, F] (gradients flow to the critic);
    q_data: Q(s, a_data) [N, 2, B]; policy_at_*: each member's pre-tanh mean and log std at s
    and s' [N, B, A], detached; lower_bound: Cal-QL's Monte-Carlo return at s [M, B] (M = 1
    or N), required when `config.calibrated`. Returns the gap [N, 2] and diagnostics.
    """
    n, b, _ = embedding.shape
    action_dim = policy_at_s[0].shape[-1]
    k = config.num_actions
    with torch.no_grad():
        uniform = torch.rand(n, b, k, action_dim, device=embedding.device) * 2.0 - 1.0
        uniform_log_density = -action_dim * math.log(2.0)  # uniform on [-1, 1]^A
        actions_s, log_prob_s = sample_tanh_gaussian(*policy_at_s, samples=k)
        actions_next, log_prob_next = sample_tanh_gaussian(*policy_at_next, samples=k)
    q_uniform = critic.q(embedding, uniform)  # [N, 2, B, K]
    q_s = critic.q(embedding, actions_s)
    q_next = critic.q(embedding, actions_next)  # actions from π(s'), valued at s, as in CQL
    metrics = {}
    if config.calibrated:
        if lower_bound is None:
            raise ValueError("Cal-QL needs the data's Monte-Carlo returns (lower_bound)")
        bound = lower_bound[:, None, :, None]  # [M, 1, B, 1] against Q [N, 2, B, K]
        metrics["cql/bounded_fraction"] = (q_s < bound).float().mean().item()
        q_s, q_next = torch.maximum(q_s, bound), torch.maximum(q_next, bound)
    weighted = torch.cat(
        [q_uniform - uniform_log_density, q_next - log_prob_next.unsqueeze(1), q_s - log_prob_s.unsqueeze(1)], dim=-1
    )
    t = config.temperature
    logsumexp = torch.logsumexp(weighted / t, dim=-1) * t  # [N, 2, B]
    gap = logsumexp.mean(dim=-1) - q_data.mean(dim=-1)
    metrics.update(
        {"cql/gap": gap.mean().item(), "cql/q_uniform": q_uniform.mean().item(), "cql/q_policy": q_s.mean().item()}
    )
    return gap, metrics
