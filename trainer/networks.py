"""The ensemble's networks: a DrQ-v2-style pixel encoder, tanh-Gaussian actors and twin-Q critics.

All N members live in one module with stacked parameters: every per-member layer is an
`EnsembleLinear` whose weight is [N, in, out] and whose forward is one batched matmul over
inputs shaped [N, B, in]. Nothing loops over members in Python, so an ensemble of five costs
little more than one agent (bench/learner.py measures it).

The encoder is either one network shared by all members (the CPU default) or one per member
(the paper-faithful ablation), computed as a grouped convolution. Members always own their
trunks and heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


@dataclass(frozen=True)
class NetworkConfig:
    """The shape of the ensemble; saved with every checkpoint and fixed for a run's lifetime."""

    ensemble_size: int = 5
    encoder: str = "shared"  # shared | per_member
    channels: int = 32
    strides: tuple[int, ...] = (2, 2, 1, 1)  # DrQ-v2 uses 2,1,1,1; 2,2,1,1 is ~2.5x cheaper on CPU
    feature_dim: int = 50  # trunk output (Linear + LayerNorm + tanh), as in DrQ-v2
    hidden_dim: int = 256
    use_state: bool = True  # concatenate proprioception after the encoder's trunk

    def __post_init__(self) -> None:
        if self.encoder not in ("shared", "per_member"):
            raise ValueError(f"encoder must be 'shared' or 'per_member', got {self.encoder!r}")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {self.ensemble_size}")
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))


class EnsembleLinear(nn.Module):
    """N independent linear layers as one batched matmul: [N, B, in] -> [N, B, out].

    An input shared by all members ([1, B, in], e.g. one encoder's features) goes through
    one matmul against all members' weights side by side, reading the input once.
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, in_features, out_features = self.weight.shape
        if x.shape[0] == 1 and members > 1:
            y = x[0] @ self.weight.permute(1, 0, 2).reshape(in_features, members * out_features)
            return y.reshape(x.shape[1], members, out_features).transpose(0, 1) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dimension with a separate affine transform per member."""

    def __init__(self, members: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """members × (Linear-ReLU-Linear-ReLU-Linear)."""

    def __init__(self, members: int, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                EnsembleLinear(members, in_features, hidden),
                EnsembleLinear(members, hidden, hidden),
                EnsembleLinear(members, hidden, out_features),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class Trunk(nn.Module):
    """Per-member Linear + LayerNorm + tanh on the encoder output (DrQ-v2), then the state:
    [1 or N, B, D] -> [N, B, F (+ S)].

    Without the trunk the first head layer alone would hold tens of millions of parameters.
    """

    def __init__(self, members: int, in_features: int, feature_dim: int) -> None:
        super().__init__()
        self.linear = EnsembleLinear(members, in_features, feature_dim)
        self.norm = EnsembleLayerNorm(members, feature_dim)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        h = torch.tanh(self.norm(self.linear(features)))
        if state is None:
            return h
        return torch.cat([h, state.expand(h.shape[0], -1, -1)], dim=-1)


class PixelEncoder(nn.Module):
    """Four 3x3 convolutions with ReLU on uint8 RGB [M, B, H, W, 3] -> features [M or N, B, D].

    Normalisation (x / 255 - 0.5) happens here, so exported graphs take camera bytes as they
    come. A shared encoder folds the member axis M (1: one minibatch for all, N: one each)
    into the batch and keeps it; a per-member encoder folds the members into the channels,
    runs grouped convolutions and always returns N rows.
    """

    def __init__(self, image_shape: tuple[int, int, int], config: NetworkConfig) -> None:
        super().__init__()
        self.members = config.ensemble_size
        self.groups = config.ensemble_size if config.encoder == "per_member" else 1
        height, width, channels_in = image_shape
        layers: list[nn.Module] = []
        c_in = channels_in
        for stride in config.strides:
            layers += [
                nn.Conv2d(c_in * self.groups, config.channels * self.groups, 3, stride=stride, groups=self.groups),
                nn.ReLU(),
            ]
            c_in = config.channels
            height, width = (height - 3) // stride + 1, (width - 3) // stride + 1
        if height < 1 or width < 1:
            raise ValueError(f"a {image_shape[0]}x{image_shape[1]} image is too small for --strides {config.strides}")
        self.convs = nn.Sequential(*layers)
        self.out_dim = config.channels * height * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 or float in [0, 255], [M, B, H, W, 3] with M = 1 or N."""
        m, b = images.shape[:2]
        x = images.float().div(255.0).sub(0.5).permute(0, 1, 4, 2, 3)  # [M, B, 3, H, W]
        if self.groups == 1:
            return self.convs(x.reshape(m * b, *x.shape[2:])).reshape(m, b, -1)
        x = x.expand(self.members, -1, -1, -1, -1).transpose(0, 1).reshape(b, -1, *x.shape[3:])
        out = self.convs(x)  # [B, N*C, h, w]
        return out.reshape(b, self.members, -1).transpose(0, 1)


class Actor(nn.Module):
    """N tanh-Gaussian policies: features [N, B, D] (+ state) -> pre-tanh mean, log std [N, B, A]."""

    def __init__(self, encoder_dim: int, state_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        n = config.ensemble_size
        self.trunk = Trunk(n, encoder_dim, config.feature_dim)
        self.head = EnsembleMLP(n, config.feature_dim + state_dim, config.hidden_dim, 2 * action_dim)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_std = self.head(self.trunk(features, state)).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1.0)
        return mean, log_std


class Critic(nn.Module):
    """N members × twin Q heads on one per-member trunk: Q(s, a) -> [N, 2, B]."""

    def __init__(self, encoder_dim: int, state_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        self.members = config.ensemble_size
        self.trunk = Trunk(self.members, encoder_dim, config.feature_dim)
        self.heads = EnsembleMLP(2 * self.members, config.feature_dim + state_dim + action_dim, config.hidden_dim, 1)

    def embed(self, features: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """The per-member trunk output [N, B, F]; compute once, evaluate many actions."""
        return self.trunk(features, state)

    def q(self, embedding: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """embedding [N, B, F], actions [N, B, A] or [N, B, K, A] -> Q [N, 2, B] or [N, 2, B, K]."""
        n, b, f = embedding.shape
        sample_shape = actions.shape[2:-1]
        k = math.prod(sample_shape)
        if sample_shape:
            embedding = embedding.unsqueeze(2).expand(n, b, k, f)
        x = torch.cat([embedding.reshape(n, b * k, f), actions.reshape(n, b * k, -1)], dim=-1)
        x = x.unsqueeze(1).expand(n, 2, b * k, x.shape[-1]).reshape(2 * n, b * k, -1)
        return self.heads(x).reshape(n, 2, b, *sample_shape)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        return self.q(self.embed(features, state), actions)
