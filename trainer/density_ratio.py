"""The density-ratio estimator behind balanced replay: w(s, a) ≈ d_online(s, a) / d_offline(s, a).

A small network with a non-negative output is trained on the variational lower bound of the
Jensen–Shannon divergence, with online samples as P and offline samples as Q (Lee et al.
2021, Eq. 5):

    maximise  E_P[ log(2 w / (w + 1)) ] − E_Q[ −log(2 / (w + 1)) ]

whose maximiser is exactly w = dP/dQ. The last bias starts so that w ≈ 1 everywhere: before
any online data has been seen, nothing is preferred.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-10


def js_ratio_loss(w_online: torch.Tensor, w_offline: torch.Tensor) -> torch.Tensor:
    """The negated JS lower bound; minimising it drives w towards d_online / d_offline."""
    offline_term = -torch.log(2.0 / (w_offline + 1.0) + _EPS)
    online_term = torch.log(2.0 * w_online / (w_online + 1.0) + _EPS)
    return offline_term.mean() - online_term.mean()


class DensityRatio(nn.Module):
    """MLP on (encoder features, action) -> w >= 0 through a softplus."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        last = self.net[-1]
        nn.init.uniform_(last.weight, -1e-3, 1e-3)
        nn.init.constant_(last.bias, math.log(math.e - 1.0))  # softplus(bias) = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(x)).squeeze(-1)


class DensityRatioEstimator:
    """The network, its optimiser and the priority rule of balanced replay."""

    def __init__(
        self, in_features: int, hidden: int = 256, lr: float = 3e-4, device: str | torch.device = "cpu"
    ) -> None:
        self.net = DensityRatio(in_features, hidden).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)

    def update(self, online: torch.Tensor, offline: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One step on separate online and offline minibatches; returns the offline minibatch's
        weights before the step (detached: the normaliser for priorities) and diagnostics."""
        w_online, w_offline = self.net(online), self.net(offline)
        loss = js_ratio_loss(w_online, w_offline)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        metrics = {
            "ratio/loss": loss.item(),
            "ratio/w_online": w_online.mean().item(),
            "ratio/w_offline": w_offline.mean().item(),
        }
        return w_offline.detach(), metrics

    @torch.no_grad()
    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def priorities(w: torch.Tensor, w_offline: torch.Tensor, temperature: float) -> torch.Tensor:
    """w^(1/T), self-normalised by the mean over an offline minibatch (clamping is the replay's)."""
    return w.pow(1.0 / temperature) / (w_offline.pow(1.0 / temperature).mean() + _EPS)
