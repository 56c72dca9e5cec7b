"""bench.storing.statistics' percentile bootstrap (scipy.stats.bootstrap): seeded, a point for constant
data, none unbounded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bench.storing.statistics import BOOTSTRAP_RESAMPLES, CONFIDENCE, bootstrap_interval, estimate


def test_bootstrap_interval_is_the_percentile_interval_of_the_resampled_statistic():
    # Efron & Tibshirani's percentile interval: the 2.5% and 97.5% quantiles of the statistic over
    # resamples drawn with replacement, here rebuilt from the same seeded generator scipy is given
    # (scipy draws each resample's indices with Generator.integers, as rng.choice did in the
    # hand-written bootstrap this replaced, so the intervals are the ones it gave).
    data = np.array([10.0, 12.0, 11.0, 13.0, 9.0, 10.5, 14.0])
    rng = np.random.default_rng(5)
    medians = np.median(data[rng.integers(0, data.size, (BOOTSTRAP_RESAMPLES, data.size))], axis=1)
    tail = (1 - CONFIDENCE) / 2
    expected = np.quantile(medians, [tail, 1 - tail])
    assert bootstrap_interval((data,), np.median, seed=5) == pytest.approx(tuple(expected))
    assert bootstrap_interval((data,), np.median, seed=5) == bootstrap_interval((data,), np.median, seed=5)


def test_estimate_of_constant_and_tiny_samples_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DegenerateDataWarning, no NaN, no deprecated random_state
        constant = estimate([5.0, 5.0, 5.0])
        assert (constant.median, constant.ci_low, constant.ci_high, constant.cv) == (5.0, 5.0, 5.0, 0.0)
        two = estimate([10.0, 12.0])
        assert (two.ci_low, two.ci_high) == (10.0, 12.0)
    single = estimate([7.0, float("nan")])
    assert single.n == 1 and single.ci_low is None and single.ci_high is None
    assert estimate([]).n == 0 and estimate([]).ci_low is None


def test_bootstrap_interval_is_none_when_some_resamples_have_no_value():
    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(a, axis=axis) / np.mean(b, axis=axis)

    assert bootstrap_interval((np.array([1.0, 2.0]), np.array([0.0, 0.0, 1.0])), ratio) is None
    assert bootstrap_interval((np.array([0.0, 0.0]), np.array([0.0, 0.0])), ratio) is None  # 0/0: NaN
    assert bootstrap_interval((np.array([3.0, 3.0]), np.array([1.5, 1.5])), ratio) == (2.0, 2.0)
