"""Tanh-squashed Gaussians, and the Gaussian that moment-matches the ensemble's mixture.

Every policy here is a Gaussian over the pre-tanh action u, and the action is tanh(u). The
ensemble acts with one Gaussian whose first two moments equal those of the equal-weight
mixture of the members' Gaussians (Lee et al. 2021, Sec. 4.2); the exported ONNX graph and
the trainer compute it with the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.networks import LOG_STD_MAX, LOG_STD_MIN

_LOG_2PI = math.log(2.0 * math.pi)


def moment_match(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Members' pre-tanh Gaussians [N, B, A] -> the mixture's mean and log std [B, A].

    mean = E_i[μ_i]; variance = E_i[σ_i²] + Var_i(μ_i), the law of total variance. Written as a
    sum of non-negative terms rather than E_i[σ_i² + μ_i²] − mean², which cancels catastrophically
    when |μ| is large against σ (float32 at |μ| = 10, σ = e⁻⁵ lost a third of log σ's range).
    """
    mixture_mean = mean.mean(dim=0)
    spread = (mean - mixture_mean).square().mean(dim=0)
    variance = torch.exp(2.0 * log_std).mean(dim=0) + spread
    return mixture_mean, (0.5 * torch.log(variance)).clamp(LOG_STD_MIN, LOG_STD_MAX)


def sample_tanh_gaussian(
    mean: torch.Tensor, log_std: torch.Tensor, samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample a = tanh(μ + σ ε) and its log density, summed over the action.

    mean, log_std: [..., A]. With `samples=K` the result is [..., K, A] and log prob [..., K].
    """
    if samples is not None:
        mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
        shape = (*mean.shape[:-2], samples, mean.shape[-1])
    else:
        shape = mean.shape
    eps = torch.randn(shape, dtype=mean.dtype, device=mean.device)
    u = mean + log_std.exp() * eps
    gaussian = -0.5 * eps.square() - log_std - 0.5 * _LOG_2PI
    # log(1 - tanh(u)^2), written so it stays finite for large |u|.
    squash = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return torch.tanh(u), (gaussian - squash).sum(dim=-1)
