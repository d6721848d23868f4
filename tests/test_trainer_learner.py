"""The online learner's narrow surface: add a transition, update, export a policy."""

import dataclasses
import hashlib

import numpy as np
import pytest
from trainer_helpers import ReachEnv, torch_single_thread, write_reach_dataset  # noqa: F401  (autouse)

from robot_node.link_interface import Transition
from robot_node.policy import load_policy
from trainer.agent import EnsembleAgent
from trainer.learner import LearnerConfig, OnlineLearner
from trainer.networks import NetworkConfig
from trainer.offline_data import load_offline
from trainer.replay import ReplayConfig
from trainer.sac import SACConfig

NET = NetworkConfig(ensemble_size=2, channels=4, strides=(2, 1), feature_dim=8, hidden_dim=32)
SPEC = ReachEnv().observation_spec


def make_learner(tmp_path, mode="balanced", freeze=True, warmup=30, encoder="shared") -> OnlineLearner:
    agent = EnsembleAgent(SPEC, ReachEnv().action_spec, dataclasses.replace(NET, encoder=encoder))
    offline = None
    if mode != "online_only":
        _, offline = load_offline(write_reach_dataset(tmp_path / "data", scripted=3, random=3), progress=False)
    config = LearnerConfig(batch_size=32, warmup=warmup, freeze_encoder=freeze, ratio_batch_size=32, ratio_hidden=32)
    return OnlineLearner(agent, config, SACConfig(), ReplayConfig(mode=mode, online_capacity=500), offline, seed=0)


def transition(step: int, episode: str = "ep", last: bool = False, **changes) -> Transition:
    rng = np.random.default_rng(step)
    t = Transition(
        episode_id=episode,
        step=step,
        image=rng.integers(0, 256, SPEC.image_shape, dtype=np.uint8),
        state=rng.standard_normal(4).astype(np.float32),
        action=rng.uniform(-1, 1, 4).astype(np.float32),
        reward=float(step % 2),
        terminal=False,
        truncated=last,
        policy_version=1,
        stamp=0.0,
        next_image=np.zeros(SPEC.image_shape, np.uint8) if last else None,
        next_state=np.zeros(4, np.float32) if last else None,
    )
    return dataclasses.replace(t, **changes)


def test_malformed_transitions_are_refused_counted_and_harmless(tmp_path):
    learner = make_learner(tmp_path)
    bad = [
        transition(0, image=np.zeros((8, 8, 3), np.uint8)),
        transition(0, image=np.zeros(SPEC.image_shape, np.float32)),
        transition(0, state=np.array([np.nan, 0, 0, 0], np.float32)),
        transition(0, action=np.array([0, 0, 0, np.inf], np.float32)),
        transition(0, action=np.array([0, 0, 0, 2.0], np.float32)),
        transition(0, action=np.zeros(3, np.float32)),
        transition(0, reward=float("nan")),
        transition(0, reward="1.0"),
        transition(0, episode=["not", "hashable"]),
        transition(0, last=True, next_image=np.zeros((2, 2, 3), np.uint8)),
    ]
    assert not any(learner.add_transition(t) for t in bad)
    assert sum(learner.rejected.values()) == len(bad)
    assert any("image" in reason for reason in learner.rejected) and any(
        "reward" in reason for reason in learner.rejected
    )
    for step in range(10):
        assert learner.add_transition(transition(step, last=step == 9))
    assert learner.replay.counters["transitions"] == 10  # the good data all arrived


@pytest.mark.parametrize("encoder", ["shared", "per_member"])
def test_no_update_before_warmup_then_every_network_learns(tmp_path, encoder):
    learner = make_learner(tmp_path, warmup=30, encoder=encoder)
    for step in range(29):
        learner.add_transition(transition(step))
    assert learner.update() is None  # 28 complete transitions so far
    learner.add_transition(transition(29))
    learner.add_transition(transition(30, last=True))
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    metrics = learner.update()
    assert metrics is not None and 0.0 <= metrics["replay/offline_fraction"] <= 1.0
    for key in ("critic_loss", "actor_loss", "alpha", "ratio/loss", "ratio/w_online", "replay/max_priority"):
        assert np.isfinite(metrics[key]), key
    after = learner.agent.state_dict()
    assert not np.allclose(before["actor.head.layers.0.weight"], after["actor.head.layers.0.weight"])
    assert not np.allclose(before["critic.trunk.linear.weight"], after["critic.trunk.linear.weight"])
    assert np.array_equal(before["encoder.convs.0.weight"], after["encoder.convs.0.weight"])  # frozen


@pytest.mark.parametrize("mode", ["uniform", "online_only"])
def test_baselines_update_without_a_density_ratio(tmp_path, mode):
    learner = make_learner(tmp_path, mode=mode, freeze=False, warmup=5)
    for step in range(6):
        learner.add_transition(transition(step, last=step == 5))
    metrics = learner.update()
    assert learner.ratio is None and "ratio/loss" not in metrics
    if mode == "online_only":
        assert metrics["replay/offline_fraction"] == 0.0


def test_the_robot_node_accepts_the_exported_policy_and_acts_as_the_trainer_does(tmp_path):
    learner = make_learner(tmp_path, mode="online_only")
    weights = learner.export_policy(version=3)
    assert weights.version == 3 and weights.sha256 == hashlib.sha256(weights.onnx).hexdigest()
    runner = load_policy(weights, SPEC, ReachEnv().action_spec)  # the robot's own model checks
    assert (runner.version, runner.ensemble_size) == (3, 2)
    t = transition(0)
    output = runner.infer(t.image, t.state)
    np.testing.assert_allclose(output.action, learner.agent.act(t.image, t.state, deterministic=True), atol=1e-4)
