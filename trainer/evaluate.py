"""The environment a run is judged in, and the judgement: the deterministic action on fixed seeds.

Both training commands evaluate the same way (tanh of the mixture mean, as the robot's
`action` output), so a pretraining curve and a fine-tuning curve can be read side by side.
"""

from __future__ import annotations

import importlib
import json

import gymnasium as gym
import numpy as np

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.checkpoint import RunError

EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes use their own fixed seeds


def make_env(env_id: str, kwargs_json: str = "", what: str = "") -> gym.Env:
    """gym.make, registering the project's simulator (`import sim`) for o2o_rl/ ids. Errors
    start with `what` (default: the --env flag)."""
    what = what or f"--env {env_id}"
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as exc:
        raise RunError(f"--env-kwargs: not JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise RunError("--env-kwargs: must be a JSON object")
    if ":" not in env_id and env_id.startswith("o2o_rl/") and env_id not in gym.registry:
        importlib.import_module("sim")
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ModuleNotFoundError, TypeError) as exc:
        raise RunError(f"{what}: {exc}") from None
    if not hasattr(env.unwrapped, "observation_spec") or not hasattr(env.unwrapped, "action_spec"):
        raise RunError(f"{what}: the environment publishes no observation_spec/action_spec")
    return env


def check_env_specs(env: gym.Env, observation_spec: ObservationSpec, action_spec: ActionSpec, what: str) -> None:
    """Refuse an environment whose observations or actions differ from what the agent was built for."""
    spec = env.unwrapped.observation_spec
    if spec != observation_spec or env.unwrapped.action_spec != action_spec:
        raise RunError(f"{what}: trained for {observation_spec.to_json()}, the env has {spec.to_json()}")


def split_obs(obs: dict) -> tuple[np.ndarray, np.ndarray]:
    return obs["pixels"], np.asarray(obs.get("state", np.zeros(0)), np.float32)


def evaluate(agent: EnsembleAgent, env: gym.Env, episodes: int) -> dict[str, float]:
    """Mean return and success rate of the deterministic action over fixed-seed episodes."""
    returns, successes = [], []
    for i in range(episodes):
        obs, info = env.reset(seed=EVAL_SEED_OFFSET + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(*split_obs(obs), deterministic=True))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        successes.append(bool(info.get("success", False)))
    return {"eval/return": float(np.mean(returns)), "eval/success_rate": float(np.mean(successes))}
