"""The ensemble agent: one encoder, N actors and N twin critics with their target copies.

It holds parameters and answers "what would you do here"; how it learns lives in
trainer/sac.py. The same object is pretrained offline, fine-tuned online and exported.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.augment import random_shift
from trainer.distributions import moment_match, sample_tanh_gaussian
from trainer.networks import Actor, Critic, NetworkConfig, PixelEncoder


class EnsembleAgent(nn.Module):
    def __init__(self, observation_spec: ObservationSpec, action_spec: ActionSpec, config: NetworkConfig) -> None:
        """Raises ValueError when the network does not fit the observation (image too small)."""
        super().__init__()
        self.observation_spec = observation_spec
        self.action_spec = action_spec
        self.config = config
        self.state_dim = observation_spec.state_dim if config.use_state else 0
        self.encoder = PixelEncoder(observation_spec.image_shape, config)
        self.actor = Actor(self.encoder.out_dim, self.state_dim, action_spec.dim, config)
        self.critic = Critic(self.encoder.out_dim, self.state_dim, action_spec.dim, config)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # Proprioception in its own units mixes radians with a finger opening in metres (its
        # spread 25x smaller); normalised by the offline data's statistics, fixed before
        # training and saved and exported with the weights.
        self.register_buffer("state_mean", torch.zeros(self.state_dim))
        self.register_buffer("state_std", torch.ones(self.state_dim))

    @property
    def ensemble_size(self) -> int:
        return self.config.ensemble_size

    @property
    def feature_dim(self) -> int:
        """Width of one frame's encoder output, as cached in replay when the encoder is frozen."""
        return self.encoder.out_dim * (self.ensemble_size if self.config.encoder == "per_member" else 1)

    def features(self, obs: torch.Tensor, augment_pad: int = 0) -> torch.Tensor:
        """uint8 images [M, B, H, W, 3] or cached features [1, B, feature_dim] -> encoder
        output [M, B, D] for a shared encoder (M = 1: shared by all members), [N, B, D] else."""
        if obs.dtype == torch.uint8:
            return self.encoder(random_shift(obs, augment_pad) if augment_pad else obs)
        n = self.ensemble_size
        if self.config.encoder == "per_member":  # cached as [1, B, N * D]; member i owns slice i
            if obs.shape[0] != 1:
                raise ValueError("cached per-member features are sampled as one minibatch shared by all members")
            return obs.float()[0].reshape(obs.shape[1], n, -1).transpose(0, 1)
        return obs.float()

    def normalise_states_like(self, states: np.ndarray) -> None:
        """Fix the state normalisation to these states' per-dimension mean and spread."""
        if self.state_dim:
            self.state_mean.copy_(torch.as_tensor(states.mean(axis=0)))
            self.state_std.copy_(torch.as_tensor(states.std(axis=0)).clamp_min(1e-3))

    def state_input(self, state: torch.Tensor | None) -> torch.Tensor | None:
        """The proprioception the networks see: normalised, or None when they use none."""
        return (state - self.state_mean) / self.state_std if self.state_dim else None

    def policy(self, features: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's pre-tanh Gaussian, [N, B, A] each."""
        return self.actor(features, self.state_input(state))

    def mixture(self, images: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The acting policy on uint8 images [B, H, W, 3]: the moment-matched mixture, [B, A] each."""
        features = self.features(images.unsqueeze(0))
        return moment_match(*self.policy(features, None if state is None else state.unsqueeze(0)))

    @torch.no_grad()
    def act(self, image: np.ndarray, state: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """One action in [-1, 1]^A for one observation, as the robot's ONNX policy computes it."""
        device = next(self.parameters()).device
        images = torch.as_tensor(image, device=device).unsqueeze(0)
        states = torch.as_tensor(state, dtype=torch.float32, device=device).unsqueeze(0)
        mean, log_std = self.mixture(images, states)
        action = torch.tanh(mean) if deterministic else sample_tanh_gaussian(mean, log_std)[0]
        return action[0].cpu().numpy().astype(np.float32)

    def flat_features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output for uint8 images [B, H, W, 3] as one row per image [B, feature_dim]
        (per-member encoders: the members' features side by side)."""
        features = self.encoder(images.unsqueeze(0))  # [1 or N, B, D]
        return features[0] if self.config.encoder == "shared" else features.transpose(0, 1).reshape(images.shape[0], -1)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Encoder output of stored frames [F, H, W, 3] -> float16 [F, feature_dim], for the cache."""
        device = next(self.parameters()).device
        out = np.empty((len(frames), self.feature_dim), np.float16)
        starts = range(0, len(frames), batch_size)
        for start in tqdm(starts, desc="encoding frames", unit="batch", leave=False, disable=len(starts) < 10):
            images = torch.as_tensor(frames[start : start + batch_size], device=device)
            out[start : start + batch_size] = self.flat_features(images).cpu().numpy()
        return out
