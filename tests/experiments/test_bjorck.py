"""The math behind the Bjorck et al. experiments: the signal-by-depth measurement against
hand computations and finite differences, products of random Gaussian matrices against
random-matrix theory, and the verdict logic on made-up numbers."""

import math

import torch

from stochnorm.experiments.bjorck import (
    high_rate_accuracy_verdict,
    order_of_magnitude_verdict,
    stable_bracket,
)
from stochnorm.experiments.bjorck_conditioning import (
    Conditioning,
    lyapunov_exponents,
    product_conditioning,
)
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE
from stochnorm.stats import linear_fit

# --- layer_signal and sgd_step_ ------------------------------------------------------------


# --- products of random Gaussian matrices ---------------------------------------------------


def test_largest_singular_value_of_one_gaussian_matrix_is_near_the_edge_2():
    """Marchenko-Pastur: a square n x n matrix with N(0, 1/n) entries has its largest
    singular value at 2 + O(n^(-2/3)); n = 200, mean of 8 draws (each spread by about
    0.03): within 0.06."""
    g = torch.Generator().manual_seed(0)
    result = product_conditioning(200, 1, 8, g)
    sigma_max = [math.exp(chain[0]) for chain in result["log_max"]]
    assert abs(sum(sigma_max) / len(sigma_max) - 2) < 0.06, sigma_max


def test_mean_squared_singular_value_is_one_at_every_depth():
    """E ||W x||^2 = ||x||^2, hence E ||M_d||_F^2 / n = 1 for every d: the Monte-Carlo mean
    over 400 chains lies within 5 standard errors of 1 at each depth."""
    g = torch.Generator().manual_seed(1)
    chains = 400
    mean_sq = torch.tensor(product_conditioning(16, 6, chains, g)["mean_sq"])
    mean, error = mean_sq.mean(0), mean_sq.std(0) / math.sqrt(chains)
    assert ((mean - 1).abs() < 5 * error).all(), (mean, error)


def test_stable_condition_numbers_agree_with_a_direct_svd_of_the_product():
    """At small depth (condition number far from 1/eps) the sigma_min from the product of
    inverses equals the direct SVD's; the generator's draws are replayed in order."""
    n, depth, seed = 8, 4, 3
    result = product_conditioning(n, depth, 2, torch.Generator().manual_seed(seed),
                                  spectra_at=(2,))  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    for c in range(2):
        product = torch.eye(n, dtype=torch.float64)
        for d in range(depth):
            w = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
            product = w @ product
            sv = torch.linalg.svdvals(product)
            assert math.isclose(result["log_cond"][c][d], (sv[0] / sv[-1]).log().item(),
                                rel_tol=1e-9)  # fmt: skip
            assert math.isclose(result["log_max"][c][d], sv[0].log().item(), rel_tol=1e-9)
            assert math.isclose(result["mean_sq"][c][d], sv.pow(2).mean().item(), rel_tol=1e-9)
            if d + 1 == 2:
                torch.testing.assert_close(torch.tensor(result["spectra"]["2"][c], dtype=sv.dtype), sv.log(),
                                           rtol=0, atol=1e-9)  # fmt: skip


def test_lyapunov_exponents_match_a_qr_monte_carlo():
    """The QR method (Benettin et al.): accumulate ln|R_kk| of W Q over 2000 products of
    4 x 4 Gaussian matrices; per exponent the standard error is at most 0.025 (the variance
    of ln R_44 is psi'(1/2) / 4 = 1.23), tolerance 0.1."""
    n, steps = 4, 2000
    g = torch.Generator().manual_seed(4)
    q, total = torch.eye(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        w = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        q, r = torch.linalg.qr(w @ q)
        total += r.diagonal().abs().log()
    torch.testing.assert_close(total / steps, lyapunov_exponents(n), rtol=0, atol=0.1)
    assert (lyapunov_exponents(n).diff() < 0).all()


def test_log_condition_number_grows_linearly_at_the_lyapunov_rate():
    """For n = 4 (well separated exponents), the slope of the mean ln condition number over
    depths 10-30 equals mu_1 - mu_4 = (psi(2) - psi(1/2)) / 2 = 1.193 within 6% (about
    3.5 standard errors with 200 chains)."""
    n, depth = 4, 30
    result = product_conditioning(n, depth, 200, torch.Generator().manual_seed(5))
    mean = torch.tensor(result["log_cond"]).mean(0)
    slope = linear_fit(range(10, depth + 1), mean[9:].tolist())[0]
    mu = lyapunov_exponents(n)
    assert math.isclose((mu[0] - mu[-1]).item(), 1.1931, rel_tol=1e-3)
    assert math.isclose(slope, (mu[0] - mu[-1]).item(), rel_tol=0.06), slope


def test_conditioning_verdict_compares_the_slope_with_ln_2():
    numbers = {"n": 4, "depths": [1, 2, 3], "theory_slope": 1.19,
               "mean_sq": [[1, 1, 1]] * 2}  # fmt: skip
    grows = {**numbers, "log_cond": [[1.0, 2.2, 3.4], [1.1, 2.3, 3.5]]}
    flat = {**numbers, "log_cond": [[1.0, 1.1, 1.2], [1.1, 1.2, 1.3]]}
    assert Conditioning().verdict(grows).status == HOLDS
    assert Conditioning().verdict(flat).status == FAILS


# --- the learning-rate verdicts on made-up grids --------------------------------------------

GRID = [-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0]


def _numbers(bn_stable, plain_stable, bn_acc=None):
    bn_acc = bn_acc or [0.8] * len(GRID)

    def rows(stable, acc):
        return [{"lr": 10**e, "stable": s, "val_acc": a if s else None, "val_acc_spread": 0.01}
                for e, s, a in zip(GRID, stable, acc, strict=True)]  # fmt: skip

    return {"grid_log10": GRID, "runs": {"batch": rows(bn_stable, bn_acc),
                                         "none": rows(plain_stable, [0.7] * len(GRID))}}  # fmt: skip


def test_stable_bracket():
    assert stable_bracket(GRID, [1, 1, 1, 0, 0, 0, 0, 0]) == (-1.5, -1.0)
    assert stable_bracket(GRID, [1] * 8) == (1.0, math.inf)
    assert stable_bracket(GRID, [0] * 8) == (-math.inf, -2.5)


def test_order_of_magnitude_verdict_uses_the_grid_brackets():
    plain = [1, 1, 1, 0, 0, 0, 0, 0]  # largest stable 10^-1.5, in [10^-1.5, 10^-1)
    # BN stable up to 10^0: ratio in (10^1, 10^2) -> holds
    assert order_of_magnitude_verdict(_numbers([1] * 6 + [0, 0], plain)).status == HOLDS
    # BN stable up to 10^-0.5: ratio in (10^0.5, 10^1.5) -> inconclusive
    assert order_of_magnitude_verdict(_numbers([1] * 5 + [0] * 3, plain)).status == INCONCLUSIVE
    # BN stable up to 10^-1: ratio in (10^0, 10^1) -> does not hold
    assert order_of_magnitude_verdict(_numbers([1] * 4 + [0] * 4, plain)).status == FAILS
    # BN stable at the top of the grid: the ratio has no upper bound
    verdict = order_of_magnitude_verdict(_numbers([1] * 8, [1] * 6 + [0, 0]))
    assert verdict.status == INCONCLUSIVE and verdict.noise == 0.5


def test_high_rate_accuracy_verdict():
    plain = [1, 1, 1, 0, 0, 0, 0, 0]
    better_high = [0.70, 0.72, 0.74, 0.80, 0.85, 0.83, 0.5, 0.4]
    better_low = [0.80, 0.85, 0.84, 0.70, 0.70, 0.60, 0.5, 0.4]
    assert high_rate_accuracy_verdict(_numbers([1] * 8, plain, better_high)).status == HOLDS
    assert high_rate_accuracy_verdict(_numbers([1] * 8, plain, better_low)).status == FAILS
    no_plain = _numbers([1] * 8, [0] * 8)
    assert high_rate_accuracy_verdict(no_plain).status == INCONCLUSIVE
