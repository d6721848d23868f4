"""Learner benchmark: updates/s of the batched N-member ensemble against N separate networks.

Each comparison is timed in interleaved rounds (one update of each variant per round, median
over rounds) so that other work on a shared machine slows both alike.

- The issue's figure (`updates_per_s_vectorised`, `updates_per_s_looped`, `speedup`; target
  >= 3x at N=5): one pixel SAC update of the ensemble as it is built (one module: a shared
  encoder and stacked member heads, all members in one batched step) against N separate
  one-member networks on 64x64 pixels, each with its own encoder, updated one after another.
- Batching alone (`heads_only_*`, `cql_heads_only_*`): the same math on cached encoder
  features, N one-member heads evaluated in a Python loop with outputs stacked and the
  identical update code on top, so only the batching differs; the online fine-tuning update
  (what runs once per robot step with a frozen encoder) and the offline CQL update. On a CPU
  at these sizes the matmuls are compute-bound and this ratio stays near 1: the saving of the
  ensemble design on a CPU comes from the shared encoder; batching pays where per-operation
  overhead dominates (small batches, GPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch
from torch import nn

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.cql import CQLConfig
from trainer.networks import NetworkConfig
from trainer.sac import Batch, EnsembleSAC, SACConfig

SPEC = ObservationSpec((64, 64, 3), ("waist", "shoulder", "elbow", "wrist_angle", "wrist_rotate", "finger_left"))
ACTIONS = ActionSpec()


def _member_slice(x: torch.Tensor | None, i: int) -> torch.Tensor | None:
    """Member i's rows of a [N or 1, ...] input (a shared leading 1 goes to everyone)."""
    return x if x is None or x.shape[0] == 1 else x[i : i + 1]


class LoopedActor(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(_member_slice(features, i), _member_slice(state, i)) for i, m in enumerate(self.members)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class LoopedCritic(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def embed(self, features: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return torch.cat(
            [m.embed(_member_slice(features, i), _member_slice(state, i)) for i, m in enumerate(self.members)]
        )

    def q(self, embedding: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.q(embedding[i : i + 1], actions[i : i + 1]) for i, m in enumerate(self.members)])

    def forward(self, features: torch.Tensor, state: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        return self.q(self.embed(features, state), actions)


def make_agent(config: NetworkConfig, looped: bool) -> EnsembleAgent:
    agent = EnsembleAgent(SPEC, ACTIONS, config)
    if looped:
        singles = [
            EnsembleAgent(SPEC, ACTIONS, dataclasses.replace(config, ensemble_size=1))
            for _ in range(config.ensemble_size)
        ]
        agent.actor = LoopedActor([s.actor for s in singles])
        agent.critic = LoopedCritic([s.critic for s in singles])
        agent.critic_target = LoopedCritic([s.critic_target for s in singles]).requires_grad_(False)
    return agent


def random_batch(agent: EnsembleAgent, members: int, size: int, pixels: bool) -> Batch:
    def obs() -> torch.Tensor:
        if pixels:
            return torch.randint(0, 256, (members, size, *SPEC.image_shape), dtype=torch.uint8)
        return torch.randn(members, size, agent.feature_dim)

    def state() -> torch.Tensor:
        return torch.randn(members, size, SPEC.state_dim)

    return Batch(
        obs(),
        state(),
        torch.rand(members, size, 4) * 2 - 1,
        torch.rand(members, size),
        torch.ones(members, size),
        obs(),
        state(),
    )


def ensemble_step(config: NetworkConfig, looped: bool, policy: str, batch_size: int, cql: bool, pixels: bool):
    """One update of the ensemble (batched or looped members) on a fixed random batch."""
    torch.manual_seed(0)
    agent = make_agent(config, looped)
    sac = EnsembleSAC(agent, SACConfig(), policy=policy, cql=CQLConfig() if cql else None, train_encoder=pixels)
    batch = random_batch(agent, 1, batch_size, pixels)
    return lambda: sac.update(batch)


def separate_networks_step(config: NetworkConfig, batch_size: int):
    """One update of N one-member SAC agents on pixels, each with its own encoder, one by one."""
    torch.manual_seed(0)
    single = dataclasses.replace(config, ensemble_size=1)
    agents = [EnsembleAgent(SPEC, ACTIONS, single) for _ in range(config.ensemble_size)]
    learners = [EnsembleSAC(a, SACConfig(), policy="members") for a in agents]
    batches = [random_batch(a, 1, batch_size, pixels=True) for a in agents]

    def update_all() -> None:
        for learner, batch in zip(learners, batches):
            learner.update(batch)

    return update_all


def interleaved_rates(steps: dict[str, object], repeats: int) -> dict[str, float]:
    """Updates/s of each step, timed in alternation (one of each per round, median over rounds),
    so that other work on a shared machine slows all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up: allocations, kernel selection
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1.0 / statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller offline and pixel batches")
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=NetworkConfig.hidden_dim)
    args = parser.parse_args()
    config = NetworkConfig(ensemble_size=args.ensemble_size, hidden_dim=args.hidden_dim)
    repeats = 5 if args.quick else 20
    small_batch = 32 if args.quick else args.batch_size
    threads = torch.get_num_threads()
    print(f"N={args.ensemble_size}, torch threads={threads}, {repeats} interleaved rounds per comparison", flush=True)
    figures: dict[str, float | int] = {}
    print(f"pixel SAC update, batch {small_batch}: ensemble against {args.ensemble_size} separate networks ...", flush=True)
    rates = interleaved_rates(
        {
            "vectorised": ensemble_step(config, False, "members", small_batch, False, True),
            "looped": separate_networks_step(config, small_batch),
        },
        repeats,
    )
    figures["updates_per_s_vectorised"] = round(rates["vectorised"], 2)
    figures["updates_per_s_looped"] = round(rates["looped"], 2)
    figures["speedup"] = round(rates["vectorised"] / rates["looped"], 2)
    comparisons = {  # prefix: (policy, batch, cql, pixels)
        "heads_only_": ("mixture", args.batch_size, False, False),
        "cql_heads_only_": ("members", small_batch, True, False),
    }
    for prefix, (policy, batch_size, cql, pixels) in comparisons.items():
        print(f"{prefix}update on cached features, batch {batch_size}: batched against looped heads ...", flush=True)
        rates = interleaved_rates(
            {
                "vectorised": ensemble_step(config, False, policy, batch_size, cql, pixels),
                "looped": ensemble_step(config, True, policy, batch_size, cql, pixels),
            },
            repeats,
        )
        figures[f"{prefix}updates_per_s_vectorised"] = round(rates["vectorised"], 2)
        figures[f"{prefix}updates_per_s_looped"] = round(rates["looped"], 2)
        figures[f"{prefix}speedup"] = round(rates["vectorised"] / rates["looped"], 2)
    figures.update(
        ensemble_size=args.ensemble_size,
        batch_size=args.batch_size,
        offline_and_pixel_batch_size=small_batch,
        hidden_dim=args.hidden_dim,
        threads=threads,
        load_average_1min=round(os.getloadavg()[0], 2),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
