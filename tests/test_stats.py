"""The statistics helpers against scipy, Monte-Carlo draws and hand computations."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from stochnorm.stats import (
    binomial_se,
    chi2_cdf,
    chi2_quantile,
    iterate_spread,
    ks_statistic,
    linear_fit,
    loglog_fit,
    mean_and_error,
    tail_mean,
)


def test_loglog_fit_matches_scipy_linregress_on_a_noisy_power_law():
    g = np.random.default_rng(0)
    x = np.array([4.0, 8, 16, 32, 64, 128, 256])
    y = 3.0 * x**-0.9 * np.exp(0.05 * g.standard_normal(len(x)))
    slope, se = loglog_fit(x.tolist(), y.tolist())
    ref = stats.linregress(np.log(x), np.log(y))
    assert slope == pytest.approx(ref.slope, abs=1e-12)
    assert se == pytest.approx(ref.stderr, rel=1e-10)
    # an exact power law: the slope exactly, no error; two points: no error estimate
    assert loglog_fit([1, 10, 100], [5, 0.5, 0.05]) == pytest.approx((-1.0, 0.0), abs=1e-12)
    assert math.isnan(loglog_fit([1, 10], [1, 2])[1])


def test_loglog_fit_standard_error_is_the_spread_of_slopes_over_noise_draws():
    # Monte Carlo: the slopes of many noisy draws spread as the standard error says
    g = np.random.default_rng(1)
    x = np.array([4.0, 8, 16, 32, 64])
    slopes, ses = [], []
    for _ in range(4000):
        y = x**-1.0 * np.exp(0.1 * g.standard_normal(len(x)))
        s, se = loglog_fit(x.tolist(), y.tolist())
        slopes.append(s)
        ses.append(se)
    true_se = 0.1 / math.sqrt(((np.log(x) - np.log(x).mean()) ** 2).sum())
    assert np.std(slopes) == pytest.approx(true_se, rel=0.05)
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(true_se, rel=0.05)


def test_binomial_se_matches_the_spread_of_simulated_error_rates():
    g = np.random.default_rng(2)
    rates = g.binomial(600, 0.03, size=20_000) / 600
    assert binomial_se(0.03, 600) == pytest.approx(rates.std(), rel=0.03)


def test_chi2_helpers_against_scipy():
    x = torch.tensor([0.5, 3.0, 10.0, 40.0], dtype=torch.float64)
    assert torch.allclose(chi2_cdf(x, 7), torch.tensor(stats.chi2(7).cdf(x.numpy())), atol=1e-10)
    p = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    assert torch.allclose(
        chi2_quantile(p, 1567), torch.tensor(stats.chi2(1567).ppf(p.numpy())), rtol=1e-8
    )
    samples = torch.tensor(stats.norm.rvs(size=500, random_state=1))
    ref = stats.kstest(samples.numpy(), "norm").statistic
    normal_cdf = lambda t: 0.5 * torch.erfc(-t / math.sqrt(2))  # noqa: E731
    assert ks_statistic(samples, normal_cdf) == pytest.approx(ref, rel=1e-9)


def test_linear_fit_matches_scipy_and_is_exact_on_a_line():
    assert linear_fit([1, 2, 3, 4], [3, 5, 7, 9]) == pytest.approx((2.0, 0.0), abs=1e-12)
    g = np.random.default_rng(3)
    x, y = np.arange(8.0), 0.5 * np.arange(8.0) + g.standard_normal(8)
    ref = stats.linregress(x, y)
    assert linear_fit(x.tolist(), y.tolist()) == pytest.approx((ref.slope, ref.stderr), rel=1e-10)
    with pytest.raises(ValueError, match="distinct x"):
        linear_fit([1, 1], [2, 3])


def test_mean_and_error_and_the_tail_of_a_history():
    assert mean_and_error([1.0, 2.0, 3.0, 6.0]) == pytest.approx(
        (3.0, np.std([1, 2, 3, 6], ddof=1) / 2)
    )
    assert mean_and_error([4.0]) == (4.0, 0.0)
    history = [{"val_acc": v} for v in (0.1, 0.2, 0.5, 0.7, 0.6)]
    assert tail_mean(history, "val_acc", 3) == pytest.approx(0.6)
    assert iterate_spread(history, "val_acc", 3) == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert iterate_spread(history[:1], "val_acc", 3) == 0.0
