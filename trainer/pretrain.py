"""Offline pretraining: N CQL agents trained independently on one episode dataset.

Each member has its own initialisation and, by default, its own minibatch (the paper's N
independent CQL runs), computed together as one batched network. The run directory gets a
resumable checkpoint, metrics (CSV and TensorBoard) and the resolved config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from trainer.checkpoint import RunError, read_checkpoint, save_checkpoint
from trainer.config import PretrainConfig, write_config
from trainer.evaluate import check_env_specs, evaluate, make_env
from trainer.metrics import MetricsLogger, RunningMean
from trainer.networks import NetworkConfig
from trainer.offline_data import load_offline
from trainer.plot import plot_runs
from trainer.run import check_finite, new_agent, prepare_run_dir, progress, resolve_device, seed_everything, set_threads
from trainer.sac import Batch, EnsembleSAC


def pretrain(config: PretrainConfig) -> Path:
    run_dir = prepare_run_dir(config.out, config.resume)
    device = resolve_device(config.device)
    set_threads(config.threads)
    rng = seed_everything(config.seed)
    payload = read_checkpoint(run_dir) if config.resume else None
    if payload is not None:
        if payload["kind"] != "pretrain":
            raise RunError(f"{run_dir}: holds a {payload['kind']} run, not a pretraining run")
        if NetworkConfig(**payload["network"]) != config.network:
            raise RunError(f"{run_dir}: the network flags differ from the run being resumed")
    dataset, store = load_offline(config.data)
    agent = new_agent(dataset.observation_spec, dataset.action_spec, config.network).to(device)
    agent.normalise_states_like(store.states[: store.num_frames])
    eval_env = None
    if config.eval_every > 0:
        what = f"evaluation env {dataset.env_id} of the dataset (--eval-every 0 pretrains without one)"
        eval_env = make_env(dataset.env_id, config.env_kwargs, what)
        check_env_specs(eval_env, dataset.observation_spec, dataset.action_spec, what)
    sac = EnsembleSAC(agent, config.sac, policy="members", cql=config.cql, train_encoder=True)
    start = 0
    if payload is not None:
        agent.load_state_dict(payload["agent"])
        sac.load_state_dict(payload["learner"]["sac"])
        start = int(payload["step"])
        rng.bit_generator.state = payload["numpy_rng"]
        torch.set_rng_state(payload["torch_rng"])
    data_root = str(Path(config.data).resolve())
    write_config(run_dir, config, device, dataset=data_root, transitions=dataset.num_transitions, start_step=start)

    def checkpoint(step: int) -> None:
        extra = {"dataset": data_root, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        save_checkpoint(
            run_dir, agent, kind="pretrain", step=step, learner_state={"sac": sac.state_dict()}, extra=extra
        )

    members = config.network.ensemble_size if config.member_batches == "independent" else 1
    mc_returns = store.monte_carlo_returns(config.sac.gamma) if config.cql.calibrated else None
    logger = MetricsLogger(run_dir, append=payload is not None)
    means = RunningMean()
    bar = progress(config.steps, start, "pretrain", "step")
    try:
        for step in range(start + 1, config.steps + 1):
            slots = store.sample_uniform(members * config.batch_size, rng).reshape(members, config.batch_size)
            data = store.gather(slots, False, config.sac.n_step, config.sac.gamma)
            if mc_returns is not None:
                data["mc_return"] = mc_returns[slots]
            metrics = sac.update(Batch.from_numpy(data, device), clone_data=step <= config.bc_steps)
            check_finite(metrics, step)
            means.add(metrics)
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                summary = means.pop()
                logger.log(step, summary)
                bar.set_postfix(
                    q=f"{summary['q_data']:.2f}", gap=f"{summary['cql/gap']:.2f}", alpha=f"{summary['alpha']:.3f}"
                )
            if eval_env is not None and (step % config.eval_every == 0 or step == config.steps):
                scores = evaluate(agent, eval_env, config.eval_episodes)
                logger.log(step, scores)
                tqdm.write(f"step {step}: success {scores['eval/success_rate']:.2f}, return {scores['eval/return']:.1f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint(step)
    finally:
        bar.close()
        logger.close()
        if eval_env is not None:
            eval_env.close()
    plot_runs([run_dir], run_dir / "curves.png")
    return run_dir
