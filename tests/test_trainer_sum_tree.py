"""The vectorised sum tree: sampling follows priorities, updates show, edge cases hold."""

import math

import numpy as np
import pytest

from trainer.sum_tree import SumTree


def chi_square_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Upper-tail p-value of Pearson's statistic (Wilson–Hilferty approximation of chi²)."""
    statistic = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_p(tree: SumTree, priorities: np.ndarray, draws: int, seed: int = 0) -> float:
    counts = np.bincount(tree.sample(draws, np.random.default_rng(seed)), minlength=len(priorities))
    expected = priorities / priorities.sum() * draws
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a zero-priority leaf"
    return chi_square_pvalue(counts[support], expected[support])


def test_sampling_frequencies_match_priorities():
    rng = np.random.default_rng(1)
    priorities = rng.uniform(0.1, 5.0, 37)  # not a power of two
    tree = SumTree(len(priorities))
    tree.update(np.arange(len(priorities)), priorities)
    assert tree.total == pytest.approx(priorities.sum())
    assert chi_square_p(tree, priorities, 200_000) > 1e-3


def test_skewed_priorities_are_not_uniform():
    # The check above must be able to fail: a uniform sampler is rejected on skewed priorities.
    priorities = np.geomspace(1.0, 100.0, 20)
    tree = SumTree(20)
    tree.update(np.arange(20), np.ones(20))
    assert chi_square_p(tree, priorities, 50_000) < 1e-6


def test_updates_are_reflected_in_later_draws():
    tree = SumTree(8)
    tree.update(np.arange(8), np.ones(8))
    tree.update(np.array([3]), 0.0)
    tree.update(np.array([5, 6]), np.array([10.0, 20.0]))
    priorities = np.array([1, 1, 1, 0, 1, 10, 20, 1], float)
    np.testing.assert_allclose(tree.priorities(), priorities)
    assert tree.total == pytest.approx(priorities.sum())
    assert chi_square_p(tree, priorities, 100_000) > 1e-3


def test_zero_priorities_are_never_drawn():
    tree = SumTree(1000)
    tree.update(np.array([0, 999]), np.array([1e-12, 1.0]))  # a tiny one next to empty leaves
    draws = tree.sample(100_000, np.random.default_rng(2))
    assert set(np.unique(draws)) <= {0, 999}


def test_single_element_and_all_zero():
    tree = SumTree(1)
    with pytest.raises(ValueError, match="every priority is zero"):
        tree.sample(1, np.random.default_rng(0))
    tree.update(np.array([0]), 3.0)
    assert (tree.sample(10, np.random.default_rng(0)) == 0).all()


def test_repeated_indices_in_one_update_keep_the_last_value_and_consistent_sums():
    tree = SumTree(4)
    tree.update(np.array([1, 1, 2, 1]), np.array([5.0, 6.0, 2.0, 7.0]))
    np.testing.assert_allclose(tree.priorities(), [0, 7, 2, 0])
    assert tree.total == pytest.approx(9.0)


def test_overwriting_every_leaf_again_keeps_the_sums_exact():
    # A ring buffer rewrites the same leaves over and over: the sums must not drift.
    rng = np.random.default_rng(3)
    tree = SumTree(100)
    for _ in range(50):
        tree.update(rng.integers(0, 100, 64), rng.uniform(0, 2, 64))
    assert tree.total == pytest.approx(tree.priorities().sum(), rel=1e-12)


def test_bad_priorities_and_indices_are_refused():
    tree = SumTree(4)
    with pytest.raises(ValueError):
        tree.update(np.array([0]), -1.0)
    with pytest.raises(ValueError):
        tree.update(np.array([0]), np.nan)
    with pytest.raises(IndexError):
        tree.update(np.array([4]), 1.0)
    assert tree.total == 0.0
