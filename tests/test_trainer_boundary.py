"""The options that govern the pretrain -> fine-tune boundary each change what they claim to:
a delayed actor start, an actor learning-rate ramp, the pretrained temperature carried over,
each member's own next action, a CQL term kept online, the dense evaluation schedule."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_trainer_cli import SMALL
from test_trainer_learner import make_learner, transition
from trainer_helpers import ENV_ID, torch_single_thread, write_reach_dataset  # noqa: F401  (autouse)

from trainer.checkpoint import read_checkpoint
from trainer.cli import main
from trainer.config import FinetuneConfig
from trainer.finetune import evaluation_due
from trainer.learner import LearnerConfig, OnlineLearner
from trainer.metrics import read_metrics
from trainer.online import pretrained_agent


def filled_learner(tmp_path, **learner_changes):
    learner = make_learner(tmp_path, warmup=10)
    learner.config = dataclasses.replace(learner.config, **learner_changes)
    for step in range(12):
        learner.add_transition(transition(step, last=step == 11))
    return learner


def rebuilt_learner(tmp_path, **learner_changes) -> OnlineLearner:
    """A learner built with these LearnerConfig fields changed (those its constructor reads)."""
    base = make_learner(tmp_path)
    config = dataclasses.replace(base.config, **learner_changes)
    return OnlineLearner(base.agent, config, base.sac.config, base.replay.config, base.replay.offline)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], value) for name, value in module.state_dict().items())


def test_actor_schedule_is_a_delay_then_a_linear_ramp():
    config = LearnerConfig(actor_delay=3, actor_ramp=4)
    assert [config.actor_scale(u) for u in range(9)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert LearnerConfig().actor_scale(0) == 1.0
    with pytest.raises(ValueError):
        LearnerConfig(actor_delay=-1)


def test_a_delayed_actor_start_trains_only_the_critics_for_those_updates(tmp_path):
    learner = filled_learner(tmp_path, actor_delay=3)
    actor, critic, alpha = snapshot(learner.agent.actor), snapshot(learner.agent.critic), learner.sac.log_alpha.item()
    for _ in range(3):
        metrics = learner.update()
        assert metrics is not None and metrics["actor_scale"] == 0.0 and "actor_loss" not in metrics
    assert not changed(actor, learner.agent.actor)
    assert learner.sac.log_alpha.item() == alpha
    assert changed(critic, learner.agent.critic)
    metrics = learner.update()  # the fourth: the actor starts
    assert metrics["actor_scale"] == 1.0 and changed(actor, learner.agent.actor)


def test_a_ramped_actor_takes_smaller_first_steps(tmp_path):
    def first_step_size(ramp: int) -> float:
        torch.manual_seed(0)
        learner = filled_learner(tmp_path / str(ramp), actor_ramp=ramp)
        before = learner.agent.actor.head.layers[0].weight.detach().clone()
        learner.update()
        return (learner.agent.actor.head.layers[0].weight - before).abs().max().item()

    # Adam's first step is about lr in size whatever the gradient: a ramp of 10 starts at lr / 10.
    assert first_step_size(10) == pytest.approx(first_step_size(0) / 10, rel=0.05)


def test_each_members_next_action_changes_the_target(tmp_path):
    targets = {}
    for next_action in ("mixture", "member"):
        torch.manual_seed(0)
        learner = filled_learner(tmp_path / next_action)
        learner.sac.config = dataclasses.replace(learner.sac.config, next_action=next_action)
        targets[next_action] = learner.update()["q_target"]
    assert targets["mixture"] != targets["member"]


def test_online_cql_adds_its_term_only_when_asked(tmp_path):
    plain = make_learner(tmp_path / "plain")
    assert plain.sac.cql is None
    learner = rebuilt_learner(tmp_path / "cql", online_cql_alpha=0.5)
    assert learner.sac.cql is not None and learner.sac.cql.alpha == 0.5
    for step in range(31):
        learner.add_transition(transition(step, last=step == 30))
    assert "cql/gap" in learner.update()


def test_carry_alpha_starts_fine_tuning_at_the_pretrained_temperature(tmp_path):
    data = write_reach_dataset(tmp_path / "data", scripted=2, random=2)
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", str(data), "--out", str(pre), "--steps", "30", "--eval-every", "0", *SMALL]) == 0
    log_alphas = read_checkpoint(pre)["learner"]["sac"]["log_alpha"]
    expected = math.exp(float(log_alphas.mean()))
    assert pretrained_agent(str(pre), "", FinetuneConfig().network, set()).alpha == pytest.approx(expected)
    assert expected != pytest.approx(FinetuneConfig().sac.init_alpha, rel=1e-3)  # the test could fail
    common = ["finetune-local", "--env", ENV_ID, "--init", str(pre), "--steps", "12", "--warmup", "10"]
    common += ["--batch-size", "16", "--ratio-batch-size", "16", "--eval-episodes", "1", "--log-every", "1"]
    common += ["--actor-delay", "5"]  # α stays where it started while the actor waits
    for name, flags in (("carried", ["--carry-alpha"]), ("fresh", [])):
        assert main([*common, "--out", str(tmp_path / name), *flags]) == 0
    first = {name: read_metrics(tmp_path / name)["alpha"][1][0] for name in ("carried", "fresh")}
    assert first["carried"] == pytest.approx(expected, rel=1e-4)
    assert first["fresh"] == pytest.approx(FinetuneConfig().sac.init_alpha, rel=1e-4)


def test_evaluations_are_dense_early_then_every_eval_every():
    config = FinetuneConfig(steps=3_500, eval_every=1_000, eval_dense_every=250, eval_dense_until=1_000)
    due = [step for step in range(1, config.steps + 1) if evaluation_due(step, config)]
    assert due == [250, 500, 750, 1000, 2000, 3000, 3500]
    sparse = dataclasses.replace(config, eval_dense_every=0)
    assert [s for s in range(1, 3_501) if evaluation_due(s, sparse)] == [1000, 2000, 3000, 3500]


def test_evaluating_more_often_leaves_the_training_run_unchanged(tmp_path):
    data = write_reach_dataset(tmp_path / "data", scripted=2, random=2)
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", str(data), "--out", str(pre), "--steps", "5", "--eval-every", "0", *SMALL]) == 0
    common = ["finetune-local", "--env", ENV_ID, "--init", str(pre), "--steps", "40", "--warmup", "10"]
    common += ["--batch-size", "16", "--ratio-batch-size", "16", "--eval-dense-until", "0"]
    assert main([*common, "--out", str(tmp_path / "rare"), "--eval-every", "40", "--eval-episodes", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "often"), "--eval-every", "5", "--eval-episodes", "3"]) == 0
    rare, often = (read_checkpoint(tmp_path / name)["agent"] for name in ("rare", "often"))
    for name in rare:
        np.testing.assert_array_equal(rare[name].numpy(), often[name].numpy(), err_msg=name)


def test_cal_ql_pretraining_bounds_the_policys_q_values(tmp_path):
    data = write_reach_dataset(tmp_path / "data", scripted=2, random=2)
    flags = ["pretrain", "--data", str(data), "--steps", "10", "--eval-every", "0", "--log-every", "5", *SMALL]
    assert main([*flags, "--out", str(tmp_path / "calql"), "--cal-ql"]) == 0
    assert main([*flags, "--out", str(tmp_path / "cql")]) == 0
    assert "cql/bounded_fraction" in read_metrics(tmp_path / "calql")
    assert "cql/bounded_fraction" not in read_metrics(tmp_path / "cql")


def test_members_online_policy_trains_each_member_with_its_own_temperature(tmp_path):
    learner = rebuilt_learner(tmp_path, policy="members")
    assert learner.sac.policy_mode == "members" and learner.sac.log_alpha.shape == (2,)
    for step in range(31):
        learner.add_transition(transition(step, last=step == 30))
    actor = snapshot(learner.agent.actor)
    assert learner.update() is not None and changed(actor, learner.agent.actor)
    with pytest.raises(ValueError, match="policy"):
        LearnerConfig(policy="average")


def test_a_cloning_term_pulls_the_actor_towards_the_batchs_actions(tmp_path):
    def distance_after(bc_weight: float) -> float:
        torch.manual_seed(0)
        learner = filled_learner(tmp_path / str(bc_weight))
        learner.sac.config = dataclasses.replace(learner.sac.config, bc_weight=bc_weight, actor_lr=1e-2)
        for group in learner.sac.actor_optimizer.param_groups:
            group["lr"] = 1e-2
        for _ in range(20):
            metrics = learner.update()
        assert ("actor_cloning" in metrics) == (bc_weight > 0)
        data = learner.replay.offline.gather(np.arange(20), True)
        with torch.no_grad():
            features = learner.agent.features(torch.as_tensor(data["obs"])[None])
            mean, _ = learner.agent.policy(features, torch.as_tensor(data["state"])[None])
        return float((torch.tanh(mean) - torch.as_tensor(data["action"])).square().mean())

    assert distance_after(10.0) < distance_after(0.0)
