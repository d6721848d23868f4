"""The density-ratio estimator recovers a known ratio between two Gaussians."""

import numpy as np
import pytest
import torch
from trainer_helpers import torch_single_thread  # noqa: F401  (autouse)

from trainer.density_ratio import DensityRatio, DensityRatioEstimator, js_ratio_loss, priorities

MU_ONLINE = torch.tensor([0.5, 0.0])
MU_OFFLINE = torch.tensor([-0.5, 0.0])


def analytic_log_ratio(x: torch.Tensor) -> torch.Tensor:
    """log N(x; μP, I) − log N(x; μQ, I)."""
    return -0.5 * ((x - MU_ONLINE) ** 2).sum(-1) + 0.5 * ((x - MU_OFFLINE) ** 2).sum(-1)


@pytest.fixture(scope="module")
def trained() -> DensityRatioEstimator:
    torch.manual_seed(0)
    estimator = DensityRatioEstimator(2, hidden=64, lr=3e-3)
    for _ in range(500):
        estimator.update(torch.randn(256, 2) + MU_ONLINE, torch.randn(256, 2) + MU_OFFLINE)
    return estimator


def test_learned_ratio_matches_the_analytic_ratio(trained):
    torch.manual_seed(1)
    x = torch.cat([torch.randn(2000, 2) + MU_ONLINE, torch.randn(2000, 2) + MU_OFFLINE])
    x = x[(x[:, 0].abs() < 2.0)]  # where both densities have data to learn from
    learned = torch.log(trained.weights(x))
    truth = analytic_log_ratio(x)
    correlation = np.corrcoef(learned.numpy(), truth.numpy())[0, 1]
    assert correlation > 0.98
    relative_error = ((learned.exp() - truth.exp()).abs() / truth.exp()).median().item()
    assert relative_error < 0.12


def test_an_untrained_estimator_is_near_one_everywhere_and_far_from_the_truth():
    net = DensityRatio(2)
    x = torch.randn(1000, 2) * 2
    w = net(x).detach()
    assert ((w - 1).abs() < 0.05).all()  # w starts near 1: no preference before online data
    truth = analytic_log_ratio(x).exp()
    assert ((w - truth).abs() / truth).median() > 0.3  # so the test above can fail


def test_loss_is_lowest_at_the_true_ratio():
    torch.manual_seed(2)
    online, offline = torch.randn(20000, 2) + MU_ONLINE, torch.randn(20000, 2) + MU_OFFLINE
    truth = js_ratio_loss(analytic_log_ratio(online).exp(), analytic_log_ratio(offline).exp())
    for scale in (0.5, 2.0):
        assert (
            js_ratio_loss(scale * analytic_log_ratio(online).exp(), scale * analytic_log_ratio(offline).exp()) > truth
        )
    assert js_ratio_loss(torch.ones(10), torch.ones(10)) > truth


def test_priorities_are_self_normalised_over_the_offline_batch():
    w_offline = torch.tensor([0.5, 1.0, 2.0, 4.0])
    p = priorities(w_offline, w_offline, temperature=5.0)
    assert p.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.all(p[1:] > p[:-1])  # monotone in w, flattened by the temperature
    assert (p.max() / p.min()).item() == pytest.approx(8.0 ** (1 / 5), rel=1e-6)
