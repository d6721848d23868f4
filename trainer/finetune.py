"""Local online fine-tuning: the learner against a gymnasium environment in one process.

No ROS and no network: the env stands in for the robot, and its steps reach the learner as
the same `Transition`s a robot would stream, so what is studied here is what runs later.
Evaluations with the deterministic action (tanh of the mixture mean, as the robot's
`action` output) run on fixed seeds at step 0, densely over the first online steps and every
`eval_every` steps after. They draw nothing from the training run's random streams (the
evaluation env has its own seeds, the deterministic action samples nothing), so evaluating
more often or with more episodes leaves the training run itself unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from robot_node.link_interface import Transition
from trainer.checkpoint import save_checkpoint
from trainer.config import FinetuneConfig, write_config
from trainer.evaluate import check_env_specs, evaluate, make_env, split_obs
from trainer.metrics import MetricsLogger, RunningMean
from trainer.online import Pretrained, build_learner, pretrained_agent, train, write_summary
from trainer.run import new_agent, prepare_run_dir, progress, resolve_device, seed_everything, set_threads


def agent_and_data(config: FinetuneConfig, given: set[str], env: gym.Env) -> Pretrained:
    """The agent to fine-tune and the offline dataset that goes with it (from scratch: a new
    agent, --data, and --init-alpha)."""
    if not config.init:
        agent = new_agent(env.unwrapped.observation_spec, env.unwrapped.action_spec, config.network)
        return Pretrained(agent, config.data, config.sac.init_alpha)
    pretrained = pretrained_agent(config.init, config.data, config.network, given)
    check_env_specs(env, pretrained.agent.observation_spec, pretrained.agent.action_spec, f"--init {config.init}")
    return pretrained


def evaluation_due(step: int, config: FinetuneConfig) -> bool:
    """Evaluations every --eval-dense-every steps up to --eval-dense-until, where a pretrained
    policy is most at risk, then every --eval-every, and at the last step."""
    if step == config.steps:
        return True
    if step <= config.eval_dense_until and config.eval_dense_every > 0 and step % config.eval_dense_every == 0:
        return True
    return config.eval_every > 0 and step % config.eval_every == 0


def finetune_local(config: FinetuneConfig, given: set[str] = frozenset()) -> Path:
    run_dir = prepare_run_dir(config.out)
    device = resolve_device(config.device)
    set_threads(config.threads)
    rng = seed_everything(config.seed)
    env, eval_env = make_env(config.env, config.env_kwargs), make_env(config.env, config.env_kwargs)
    start = agent_and_data(config, given, env)
    agent, data = start.agent.to(device), start.data
    learner = build_learner(config, agent, data, pretrained=bool(config.init), alpha=start.alpha)
    dataset = str(Path(data).resolve()) if data else ""
    write_config(
        run_dir,
        config,
        device,
        freeze_encoder_online=learner.config.freeze_encoder,
        dataset=dataset,
        network=dataclasses.asdict(agent.config),
    )

    logger = MetricsLogger(run_dir)
    means = RunningMean()
    initial = evaluate(agent, eval_env, config.eval_episodes)
    logger.log(0, initial)
    bar = progress(config.steps, 0, "finetune", "env step")
    obs, _ = env.reset(seed=config.seed)
    episode, episode_step, episode_return = 0, 0, 0.0
    random_warmup = not config.init  # from scratch, the first actions are uniform as in SAC
    started = time.monotonic()
    final = initial
    try:
        for step in range(1, config.steps + 1):
            image, state = split_obs(obs)
            if random_warmup and step <= config.learner.warmup:
                action = rng.uniform(agent.action_spec.low, agent.action_spec.high, agent.action_spec.dim).astype(
                    np.float32
                )
            else:
                action = agent.act(image, state)
            obs, reward, terminated, truncated, info = env.step(action)
            episode_return += float(reward)
            done = terminated or truncated
            next_image, next_state = split_obs(obs) if done else (None, None)
            learner.add_transition(
                Transition(
                    episode_id=f"local-{config.seed}-{episode}",
                    step=episode_step,
                    image=image,
                    state=state,
                    action=action,
                    reward=float(reward),
                    terminal=bool(terminated),
                    truncated=bool(truncated),
                    policy_version=0,
                    stamp=time.time(),
                    next_image=next_image,
                    next_state=next_state,
                )
            )
            episode_step += 1
            if done:
                logger.log(
                    step, {"episode/return": episode_return, "episode/success": float(bool(info.get("success", False)))}
                )
                obs, _ = env.reset()
                episode, episode_step, episode_return = episode + 1, 0, 0.0
            train(learner, means, config.updates_per_step)
            bar.update(1)
            if step % config.log_every == 0:
                logger.log(step, means.pop())
            if evaluation_due(step, config):
                final = evaluate(agent, eval_env, config.eval_episodes)
                logger.log(step, final)
                bar.set_postfix(success=f"{final['eval/success_rate']:.2f}", ret=f"{final['eval/return']:.2f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                extra = {"dataset": dataset, "env_steps": step}
                save_checkpoint(
                    run_dir,
                    agent,
                    kind="finetune",
                    step=learner.train_step,
                    learner_state=learner.state_dict(),
                    extra=extra,
                )
    finally:
        bar.close()
        logger.close()
        env.close()
        eval_env.close()
    summary = {
        "initial": initial,
        "final": final,
        "env_steps": config.steps,
        "updates": learner.train_step,
        "seconds": round(time.monotonic() - started, 1),
        "replay": learner.replay.counters,
        "rejected": learner.rejected,
    }
    write_summary(run_dir, summary)
    return run_dir
