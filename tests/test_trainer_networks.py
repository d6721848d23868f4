"""The batched ensemble equals N separate networks; the mixture and the squashed Gaussian are
what they claim; augmentation shifts images."""

import dataclasses

import pytest
import torch
from trainer_helpers import torch_single_thread  # noqa: F401  (autouse)

from robot_node.spec import ActionSpec, ObservationSpec
from trainer.agent import EnsembleAgent
from trainer.augment import random_shift
from trainer.checkpoint import select_members
from trainer.distributions import moment_match, sample_tanh_gaussian
from trainer.networks import NetworkConfig

OBS = ObservationSpec((24, 24, 3), ("a", "b", "c"))
SMALL = NetworkConfig(ensemble_size=3, channels=8, strides=(2, 1), feature_dim=16, hidden_dim=32)


@pytest.mark.parametrize("encoder", ["shared", "per_member"])
def test_vectorised_ensemble_equals_separate_members_with_the_same_weights(encoder):
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, encoder=encoder)
    ensemble = EnsembleAgent(OBS, ActionSpec(), config)
    images = torch.randint(0, 256, (5, 24, 24, 3), dtype=torch.uint8)
    state = torch.randn(1, 5, 3)
    actions = torch.rand(3, 5, 4) * 2 - 1
    with torch.no_grad():
        features = ensemble.features(images.unsqueeze(0))
        mean, log_std = ensemble.policy(features, state)
        q = ensemble.critic(features, state, actions)
    single = dataclasses.replace(config, ensemble_size=1)
    for i in range(3):
        member = EnsembleAgent(OBS, ActionSpec(), single)
        member.load_state_dict(select_members(ensemble.state_dict(), config, [i]))
        with torch.no_grad():
            f = member.features(images.unsqueeze(0))
            m, s = member.policy(f, state)
            qi = member.critic(f, state, actions[i : i + 1])
        torch.testing.assert_close(m[0], mean[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[0], log_std[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(qi[0], q[i], rtol=1e-5, atol=1e-5)
    # Members are initialised independently, so this comparison can fail.
    assert (mean[0] - mean[1]).abs().max() > 1e-3


def test_independent_minibatches_reach_their_own_members():
    torch.manual_seed(1)
    agent = EnsembleAgent(OBS, ActionSpec(), SMALL)
    images = torch.randint(0, 256, (3, 4, 24, 24, 3), dtype=torch.uint8)  # [N, B, ...]
    with torch.no_grad():
        own = agent.features(images)
        for i in range(3):
            torch.testing.assert_close(own[i], agent.features(images[i : i + 1])[0])


def test_moment_matching_equals_a_monte_carlo_estimate_of_the_mixture():
    torch.manual_seed(2)
    n, a = 5, 4
    means = torch.randn(n, 1, a) * 1.5
    log_stds = torch.rand(n, 1, a) * 1.5 - 1.0
    mixture_mean, mixture_log_std = moment_match(means, log_stds)
    member = torch.randint(0, n, (400_000,))  # sample the equal-weight mixture itself
    samples = means[member, 0] + log_stds[member, 0].exp() * torch.randn(400_000, a)
    torch.testing.assert_close(mixture_mean[0], samples.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(mixture_log_std[0].exp(), samples.std(0), atol=0.02, rtol=0)
    # The mixture is wider than its average member whenever the means disagree.
    assert (mixture_log_std[0].exp() > log_stds[:, 0].exp().mean(0)).all()


def test_moment_matching_keeps_its_precision_far_from_zero():
    # Members that agree on a large mean and the narrowest spread: the mixture is that member.
    # E[σ² + μ²] − μ̄² in float32 gave log σ ≈ −4.5 here (at |μ| = 10: −4.996) instead of −5.
    means = torch.full((5, 1, 4), 30.0)
    log_stds = torch.full((5, 1, 4), -5.0)
    _, mixture_log_std = moment_match(means, log_stds)
    torch.testing.assert_close(mixture_log_std, torch.full((1, 4), -5.0), atol=1e-4, rtol=0)


def test_squashed_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(3)
    mean, log_std = torch.randn(6, 4), torch.rand(6, 4) - 1.0
    action, log_prob = sample_tanh_gaussian(mean, log_std)
    base = torch.distributions.Normal(mean, log_std.exp())
    squashed = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform(cache_size=1)])
    expected = squashed.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-3)
    many, many_log_prob = sample_tanh_gaussian(mean, log_std, samples=7)
    assert many.shape == (6, 7, 4) and many_log_prob.shape == (6, 7) and many.abs().max() < 1


def test_random_shift_moves_images_by_at_most_pad_pixels():
    torch.manual_seed(4)
    image = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    image[0, 8, 8] = 255  # one bright pixel in the middle
    shifted = random_shift(image.expand(200, -1, -1, -1).contiguous(), pad=2)
    rows, cols = torch.nonzero(shifted[..., 0] == 255, as_tuple=True)[1:]
    assert len(rows) == 200  # exactly one bright pixel per image survives
    offsets = set(zip((rows - 8).tolist(), (cols - 8).tolist()))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in offsets)
    assert len(offsets) > 10  # and the shifts really vary
    assert torch.equal(random_shift(image, pad=0), image)


def test_encoder_sizes_for_the_supported_image_sizes():
    for size in (64, 84, 128):
        spec = ObservationSpec((size, size, 3), ())
        agent = EnsembleAgent(spec, ActionSpec(), NetworkConfig(ensemble_size=2))
        with torch.no_grad():
            mean, log_std = agent.mixture(torch.zeros(2, size, size, 3, dtype=torch.uint8), None)
        assert mean.shape == (2, 4) and torch.isfinite(log_std).all()
        out = (size - 3) // 2 + 1
        out = (out - 3) // 2 + 1
        assert agent.encoder.out_dim == 32 * (out - 4) ** 2
