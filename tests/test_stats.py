"""hoitool.eval.stats against hand computations and the normal approximation (no scipy needed)."""

import numpy as np
import pytest

from hoitool.eval.stats import (
    Interval,
    at_chance,
    bootstrap_mean,
    chance_level,
    context_accuracy,
    paired_difference,
)


def test_one_seed_matches_the_normal_approximation():
    """For 400 Bernoulli(0.3) values the bootstrap of the mean is close to mean ± 1.96 sqrt(p(1-p)/n)."""
    values = (np.random.default_rng(3).random(400) < 0.3).astype(float)
    mean, low, high = bootstrap_mean(values, resamples=4000)
    p = values.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / values.size)
    assert mean == pytest.approx(p)
    assert low == pytest.approx(p - half, abs=0.006) and high == pytest.approx(p + half, abs=0.006)


def test_one_seed_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    values = (np.random.default_rng(3).random(400) < 0.3).astype(float)
    reference = stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=4000, random_state=1
    ).confidence_interval
    _, low, high = bootstrap_mean(values, resamples=4000)
    assert low == pytest.approx(reference.low, abs=0.01) and high == pytest.approx(reference.high, abs=0.01)


def test_seeds_are_resampled_as_well_as_videos():
    """By hand: two seeds, all right in one and all wrong in the other. Drawing seeds gives means 0, 1/2, 1
    with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]; videos alone would give the point 1/2."""
    assert tuple(bootstrap_mean(np.stack([np.zeros(50), np.ones(50)]), resamples=4000)) == pytest.approx((0.5, 0, 1))
    assert tuple(bootstrap_mean(np.full((3, 20), 0.25))) == pytest.approx((0.25, 0.25, 0.25))


def test_a_paired_difference_is_tight_where_the_methods_agree_video_by_video():
    """b is right on a random half of the videos and a on the same half plus 10 more: the difference is
    exactly 10/200 on every resample of the pairs, while each accuracy alone varies by about ±0.07."""
    b = np.zeros(200)
    b[np.random.default_rng(0).permutation(200)[:100]] = 1
    a = b.copy()
    a[np.flatnonzero(b == 0)[:10]] = 1
    difference = paired_difference(a, b)
    assert tuple(difference) == pytest.approx((0.05, 0.025, 0.08), abs=0.011)
    assert bootstrap_mean(b).high - bootstrap_mean(b).low > 0.12
    assert difference.text(signed=True).startswith("+0.050 [")
    with pytest.raises(ValueError, match="same shape"):
        paired_difference(a, b[:-1])


def test_context_accuracy_by_hand():
    correct = np.array([[1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]])
    contexts = np.array(["local", "local", "cross-frame", "cross-frame", "order", "order"])
    cells = context_accuracy(correct, contexts, order=("local", "cross-frame", "order", "absent"))
    assert list(cells) == ["all", "local", "cross-frame", "order"]
    assert cells["all"].mean == pytest.approx(6 / 12)
    assert cells["local"].mean == pytest.approx(3 / 4) and cells["order"].mean == pytest.approx(3 / 4)
    assert tuple(cells["cross-frame"]) == (0.0, 0.0, 0.0)


def test_chance_level_is_the_best_constant_guess():
    assert chance_level(np.arange(90) % 9, 9) == pytest.approx(1 / 9)
    assert chance_level(np.array([0, 0, 1, 2]), 3) == pytest.approx(0.5)


def test_at_chance_by_the_interval():
    chance = 1 / 9
    stuck = np.zeros(900)
    stuck[:100] = 1  # 0.111: chance itself
    learned = np.zeros(900)
    learned[:400] = 1  # 0.444
    above = np.zeros(900)
    above[:150] = 1  # 0.167: its interval (about ±0.024) stays above 0.111
    assert at_chance(stuck, chance) and not at_chance(learned, chance)
    assert at_chance(np.zeros(50), chance)  # below chance counts as stuck too
    assert Interval(0.2, 0.1, 0.3).contains(0.1) and not Interval(0.2, 0.1, 0.3).contains(0.31)
    assert not at_chance(above, chance)
