"""CQL makes Q pessimistic off the data: on a toy dataset it lowers Q on unseen actions
relative to the dataset's actions, where plain SAC does not."""

import numpy as np
import pytest
import torch
from trainer_helpers import torch_single_thread  # noqa: F401  (autouse)

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.config import FinetuneConfig, PretrainConfig
from robot_node.dataset import Episode
from trainer.cql import CQLConfig, cql_gap
from trainer.frame_store import FrameStore
from trainer.networks import NetworkConfig
from trainer.sac import Batch, EnsembleSAC, SACConfig

OBS = ObservationSpec((8, 8, 3), ())
NET = NetworkConfig(ensemble_size=2, channels=4, strides=(2, 1), feature_dim=8, hidden_dim=64)
DATA_ACTION = 0.5


def toy_batch(agent: EnsembleAgent, generator: torch.Generator, size: int = 128) -> Batch:
    """One-step episodes: every data action lies near 0.5 and earns reward 1 - |a - 0.5|."""
    features = torch.randn(1, size, agent.feature_dim, generator=generator)
    actions = (DATA_ACTION + 0.05 * torch.randn(1, size, 4, generator=generator)).clamp(-1, 1)
    reward = 1.0 - (actions - DATA_ACTION).abs().mean(-1)
    return Batch(
        features, torch.zeros(1, size, 0), actions, reward, torch.zeros(1, size), features, torch.zeros(1, size, 0)
    )


def q_gap_after_training(cql: CQLConfig | None, steps: int = 100) -> tuple[float, float]:
    torch.manual_seed(0)
    agent = EnsembleAgent(OBS, ActionSpec(), NET)
    sac = EnsembleSAC(agent, SACConfig(critic_lr=1e-3, actor_lr=1e-3), policy="members", cql=cql, train_encoder=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        sac.update(toy_batch(agent, generator))
    test = toy_batch(agent, generator, 1000)
    far = torch.rand(2, 1000, 4) * 0.8 - 1.0  # actions in [-1, -0.2]^4: never in the data
    with torch.no_grad():
        features = agent.features(test.obs)
        q_data = agent.critic(features, None, test.action.expand(2, -1, -1)).mean().item()
        q_far = agent.critic(features, None, far).mean().item()
    return q_data, q_far


def test_cql_lowers_q_on_out_of_distribution_actions_relative_to_data_actions():
    q_data_sac, q_far_sac = q_gap_after_training(None)
    q_data_cql, q_far_cql = q_gap_after_training(CQLConfig(alpha=5.0))
    gap_sac, gap_cql = q_data_sac - q_far_sac, q_data_cql - q_far_cql
    assert gap_cql > gap_sac + 1.0
    assert q_far_cql < q_far_sac - 1.0


def test_lagrange_variant_tunes_its_multiplier():
    torch.manual_seed(0)
    agent = EnsembleAgent(OBS, ActionSpec(), NET)
    sac = EnsembleSAC(
        agent, SACConfig(), policy="members", cql=CQLConfig(lagrange=True, target_action_gap=1.0, lagrange_lr=1e-2)
    )
    generator = torch.Generator().manual_seed(0)
    metrics = [sac.update(toy_batch(agent, generator)) for _ in range(30)]
    assert metrics[0]["cql/multiplier"] == pytest.approx(1.0, abs=0.02)
    assert metrics[-1]["cql/multiplier"] != pytest.approx(1.0, abs=0.05)
    assert sac.log_cql_multiplier is not None and "log_cql_multiplier" in sac.state_dict()


def test_lagrange_multiplier_loss_averages_the_twins():
    # One multiplier per member weighs both twin heads' gaps: its gradient is the twins' mean
    # gap against the target (the reference's 0.5 * (twin 1 + twin 2)), not their sum.
    agent = EnsembleAgent(OBS, ActionSpec(), NET)
    sac = EnsembleSAC(agent, SACConfig(), policy="members", cql=CQLConfig(alpha=1.0, lagrange=True, target_action_gap=0.0))
    gap = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    sac._cql_loss(gap, {})
    assert sac.log_cql_multiplier is not None and sac.log_cql_multiplier.grad is not None
    torch.testing.assert_close(sac.log_cql_multiplier.grad, torch.tensor([-2.0, -2.0]))


def td_target_with_zero_target_critic(config: SACConfig) -> float:
    """The mean TD target of one update where the target critic answers 0 for every action,
    so the target is r + discount * (0 - α log π) with the soft backup and r without it."""
    torch.manual_seed(0)
    agent = EnsembleAgent(OBS, ActionSpec(), NET)
    last = agent.critic_target.heads.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    sac = EnsembleSAC(agent, config, policy="members", cql=CQLConfig(), train_encoder=False)
    features = torch.randn(1, 64, agent.feature_dim)
    no_state = torch.zeros(1, 64, 0)
    reward, discount = torch.ones(1, 64), torch.full((1, 64), 0.99)
    batch = Batch(features, no_state, torch.zeros(1, 64, 4), reward, discount, features, no_state)
    return sac.update(batch)["q_target"]


def test_pretraining_backs_up_no_entropy_as_the_cql_reference_does():
    """With a sparse 0/1 reward the soft target's -α log π, summed over the horizon, outweighs
    the reward and drove pretrained Q-values negative; the CQL reference's deterministic
    backup leaves it out, and online fine-tuning (SAC, as the paper) keeps it."""
    assert td_target_with_zero_target_critic(PretrainConfig().sac) == pytest.approx(1.0, abs=1e-6)
    assert td_target_with_zero_target_critic(FinetuneConfig().sac) != pytest.approx(1.0, abs=1e-3)


def test_cloning_steps_bring_every_members_actions_to_the_datas_and_train_the_encoder():
    """Without reward there is nothing to maximise: only cloning brings the actions to the data's."""
    pixels = ObservationSpec((16, 16, 3), ())
    actions = {}
    for clone in (False, True):
        torch.manual_seed(0)
        agent = EnsembleAgent(pixels, ActionSpec(), NET)
        sac = EnsembleSAC(agent, SACConfig(actor_lr=3e-3), policy="members", cql=CQLConfig())
        encoder = [p.detach().clone() for p in agent.encoder.parameters()]
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (1, 64, 16, 16, 3), dtype=torch.uint8, generator=generator)
        data = torch.full((1, 64, 4), DATA_ACTION)
        no_state, zeros = torch.zeros(1, 64, 0), torch.zeros(1, 64)
        batch = Batch(images, no_state, data, zeros, torch.full((1, 64), 0.99), images, no_state)
        first = sac.update(batch, clone_data=clone)
        if clone:  # the cloning loss reached the encoder alongside the critic's
            moved = [(p - q).abs().max() for p, q in zip(agent.encoder.parameters(), encoder)]
            assert min(moved) > 0 and first["actor_loss"] > 0
        for _ in range(100):
            sac.update(batch, clone_data=clone)
        with torch.no_grad():
            mean, _ = agent.policy(agent.features(images), None)
        actions[clone] = torch.tanh(mean)
    assert (actions[True] - DATA_ACTION).abs().mean() < 0.1  # every member, every action dimension
    assert (actions[False] - DATA_ACTION).abs().mean() > 0.2
    with pytest.raises(ValueError, match="offline pretraining"):
        EnsembleSAC(agent, SACConfig(), policy="mixture").update(batch, clone_data=True)


def test_monte_carlo_returns_follow_each_episode_to_its_end():
    store = FrameStore(20, (8, 8, 3), 0, 4)
    for rewards, terminal in (([0.0, 0.0, 1.0], True), ([1.0, 0.0], False)):
        frames = np.zeros((len(rewards) + 1, 8, 8, 3), np.uint8)
        terminals, truncations = np.zeros(len(rewards), bool), np.zeros(len(rewards), bool)
        terminals[-1], truncations[-1] = terminal, not terminal
        states, actions = np.zeros((len(rewards) + 1, 0), np.float32), np.zeros((len(rewards), 4), np.float32)
        store.add_episode(Episode(frames, states, actions, np.asarray(rewards, np.float32), terminals, truncations))
    returns = store.monte_carlo_returns(gamma=0.5)
    np.testing.assert_allclose(returns[:3], [0.25, 0.5, 1.0])  # 0 + 0.5 * (0 + 0.5 * 1)
    np.testing.assert_allclose(returns[4:6], [1.0, 0.0])  # time-limited: nothing counted beyond
    assert returns[3] == 0.0 and returns[6] == 0.0  # last frames start no transition


def test_cal_ql_raises_the_policys_q_values_to_the_datas_return():
    torch.manual_seed(0)
    agent = EnsembleAgent(OBS, ActionSpec(), NET)
    features = torch.randn(1, 32, agent.feature_dim)
    embedding = agent.critic.embed(features, None)
    q = agent.critic.q(embedding, torch.zeros(2, 32, 4))
    policy = (torch.zeros(2, 32, 4), torch.zeros(2, 32, 4))
    plain, _ = cql_gap(agent.critic, embedding, q, policy, policy, CQLConfig())
    bound = torch.full((1, 32), 100.0)  # far above any Q of a fresh critic
    calibrated, metrics = cql_gap(
        agent.critic, embedding, q, policy, policy, CQLConfig(calibrated=True), lower_bound=bound
    )
    assert metrics["cql/bounded_fraction"] == 1.0
    assert (calibrated > plain + 50.0).all()  # the bounded policy terms dominate the logsumexp
    with pytest.raises(ValueError, match="Monte-Carlo"):
        cql_gap(agent.critic, embedding, q, policy, policy, CQLConfig(calibrated=True))
