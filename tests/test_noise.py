"""Noise layers and the variational scale against independent computations."""

import math

import pytest
import torch
from scipy import integrate, stats

from stochnorm import (
    AllCNN,
    BNLikeNoise,
    ScaleNoise,
    add_noise,
    bn_noise_model,
    elbo_loss_term,
    kl_divergence,
    predict,
    sampling,
)  # the public API, as users import it
from stochnorm.bayes import predict_running
from stochnorm.noise import kl_normal, sigma_from_u, u_from_sigma
from stochnorm.norms import normalizations


@pytest.mark.parametrize("n", [8, 32, 200])
def test_bn_noise_model_matches_its_distributions(n):
    g = torch.Generator().manual_seed(n)
    v, u = bn_noise_model(n, (20_000,), g)
    # V ~ N(0, 1/n)
    assert stats.kstest((v * math.sqrt(n)).numpy(), "norm").pvalue > 1e-3
    # (n - 1) S^2 / sigma^2 = n / U^2 ~ chi2(n - 1)
    assert stats.kstest((n / u.pow(2)).numpy(), stats.chi2(n - 1).cdf).pvalue > 1e-3


def test_bn_noise_model_against_real_batch_statistics():
    # the model describes the sample mean and std of n i.i.d. Gaussian values
    g = torch.Generator().manual_seed(0)
    n = 24
    x = torch.randn(20_000, n, generator=g, dtype=torch.float64) * 3 + 1
    v_real = (1 - x.mean(1)) / 3
    u_real = 3 / x.std(1, unbiased=False)
    v, u = bn_noise_model(n, (20_000,), g)
    assert stats.ks_2samp(v.numpy(), v_real.numpy()).pvalue > 1e-3
    assert stats.ks_2samp(u.numpy(), u_real.numpy()).pvalue > 1e-3


def test_bn_like_noise_statistics_and_spatial_constancy():
    torch.manual_seed(0)
    noise = BNLikeNoise(
        3, sigma_v=torch.tensor([0.1, 0.2, 0.0]), sigma_u=torch.tensor([0.05, 0.0, 0.3])
    )
    z = torch.randn(1, 3, 1, 1).expand(40_000, 3, 4, 4).contiguous()
    s, b = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([0.1, -0.2, 0.3])
    y = noise.train()(z, s, b)
    # constant over space
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))
    # ((z + V) U) s + b with z fixed: mean z s + b, var s^2 (z^2 su^2 + sv^2 (1 + su^2))
    z0 = z[0, :, 0, 0]
    sv, su = noise.sigma_v, noise.sigma_u
    expected_var = s**2 * (z0**2 * su**2 + sv**2 * (1 + su**2))
    got = y[:, :, 0, 0]
    assert torch.allclose(
        got.mean(0), z0 * s + b, atol=4 * (expected_var / 40_000).sqrt().max() + 1e-6
    )
    assert torch.allclose(got.var(0), expected_var, rtol=0.05, atol=1e-7)
    # eval: deterministic
    assert torch.equal(noise.eval()(z, s, b), z * s.view(1, 3, 1, 1) + b.view(1, 3, 1, 1))


def test_scale_noise_statistics():
    torch.manual_seed(1)
    noise = ScaleNoise(2, sigma_s=0.3)
    z = torch.full((50_000, 2, 3, 3), 0.5)
    s, b = torch.tensor([1.5, -1.0]), torch.tensor([0.5, 0.0])
    y = noise.train()(z, s, b)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))
    per = y[:, :, 0, 0]
    # (z + b) S, S ~ N(s, 0.3^2): mean (z + b) s, std |z + b| 0.3
    assert torch.allclose(per.mean(0), (0.5 + b) * s, atol=0.01)
    assert torch.allclose(per.std(0), (0.5 + b).abs() * 0.3, rtol=0.02)
    assert torch.equal(noise.eval()(z, s, b)[0, :, 0, 0], (0.5 + b) * s)


def test_kl_against_numerical_integration():
    for mean, sigma in [(1.0, 0.1), (0.3, 2.0), (-2.0, 0.01), (5.0, 12.0)]:
        q, p = stats.norm(mean, sigma), stats.norm(1.0, 10.0)
        lo, hi = mean - 12 * sigma, mean + 12 * sigma
        ref = integrate.quad(
            lambda s, q=q, p=p: q.pdf(s) * (q.logpdf(s) - p.logpdf(s)),
            lo,
            hi,
            epsabs=1e-12,
            limit=200,
        )[0]
        got = kl_normal(
            torch.tensor(mean, dtype=torch.float64),
            torch.tensor(sigma, dtype=torch.float64),
            1.0,
            10.0,
        )
        assert got.item() == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_sigma_parametrization_is_smooth_with_bounded_derivatives():
    u = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    sigma = sigma_from_u(u)
    (d_sigma,) = torch.autograd.grad(sigma.sum(), u)
    (d_log,) = torch.autograd.grad(torch.log(sigma_from_u(u)).sum(), u)
    u0 = u.detach()
    # closed forms: d sigma/du = exp(u) (u < 0), 1 (u >= 0); d log sigma/du = 1, 1/(u + 1)
    assert torch.allclose(d_sigma, torch.where(u0 < 0, u0.exp(), torch.ones_like(u0)))
    assert torch.allclose(d_log, torch.where(u0 < 0, torch.ones_like(u0), 1 / (u0 + 1)))
    assert d_sigma.max() <= 1 and d_log.max() <= 1
    # continuity of the value and of the first derivative at 0
    eps = torch.tensor([-1e-9, 1e-9], dtype=torch.float64)
    assert torch.allclose(sigma_from_u(eps), torch.ones(2, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(
        u_from_sigma(torch.tensor([0.2, 1.0, 3.5])), torch.tensor([math.log(0.2), 0.0, 2.5])
    )
    with pytest.raises(ValueError):
        u_from_sigma(0.0)


def test_mc_prediction_without_noise_equals_the_single_pass():
    torch.manual_seed(2)
    model = AllCNN(1, 10, width=0.1, norm="weight").eval()
    x = torch.randn(7, 1, 28, 28)
    single = predict(model, x, samples=0)
    assert torch.equal(predict(model, x, samples=10), single)
    assert torch.allclose(single, model(x).exp(), atol=1e-6)
    # noise modules present but with zero variance: every sample is the single pass
    add_noise(model, "bn-like", sigma_v=0.0, sigma_u=0.0)
    assert torch.allclose(predict(model, x, samples=10), single, rtol=1e-6, atol=1e-7)


def test_bayes_model_kl_sampling_and_predict():
    torch.manual_seed(3)
    model = AllCNN(1, 10, width=0.1, norm="analytic")
    x = torch.randn(5, 1, 28, 28)
    model.train()(x)  # analytic norm's statistics from one training forward
    before = model.eval()(x)
    add_noise(model, "bayes", sigma_s=0.2)
    # same function with mean parameters (b divided by s)
    assert torch.allclose(model(x), before, atol=1e-5)
    layers = normalizations(model)
    expected = sum(
        kl_normal(n.weight, torch.full_like(n.weight, 0.2), 1.0, 10.0).sum() for n in layers
    )
    assert kl_divergence(model).item() == pytest.approx(expected.item(), rel=1e-5)
    term = elbo_loss_term(kl_factor=0.5, dataset_size=1000)
    assert term(model).item() == pytest.approx(0.5 * expected.item() / 1000, rel=1e-5)
    # sampling in eval mode: outputs vary, and with a generator they repeat
    with sampling(model, torch.Generator().manual_seed(0)):
        a = model(x)
    with sampling(model, torch.Generator().manual_seed(0)):
        b = model(x)
    assert torch.equal(a, b) and not torch.allclose(a, before)
    assert torch.equal(model(x), model(x))  # off again after the block
    probs = predict(model, x, samples=30, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    # the MC average of probabilities is what eq. 10 says
    g = torch.Generator().manual_seed(1)
    with sampling(model, g):
        manual = torch.stack([torch.softmax(model(x), 1) for _ in range(30)]).mean(0)
    assert torch.allclose(probs, manual, atol=1e-6)


def test_running_mc_averages_share_one_sequence_of_passes():
    torch.manual_seed(5)
    model = AllCNN(1, 10, width=0.1, norm="weight").eval()
    add_noise(model, "bayes", sigma_s=0.3)
    x = torch.randn(9, 1, 28, 28)
    out = predict_running(model, x, (0, 3, 7), generator=torch.Generator().manual_seed(2),
                          batch_size=4)  # fmt: skip
    assert torch.equal(out[0], predict(model, x, samples=0))
    same = predict(model, x, samples=7, generator=torch.Generator().manual_seed(2), batch_size=4)
    assert torch.equal(out[7], same)
    # MC-3: the first 3 of the 7 draws of each batch, drawn batch after batch
    g = torch.Generator().manual_seed(2)
    expected = []
    for xb in x.split(4):
        with sampling(model, g):
            draws = torch.stack([torch.softmax(model(xb), 1) for _ in range(7)])
        expected.append(draws[:3].mean(0))
    assert torch.equal(out[3], torch.cat(expected))
    assert not torch.allclose(out[3], out[7])
    # without noise every count is the single pass
    plain = AllCNN(1, 10, width=0.1, norm="weight").eval()
    runs = predict_running(plain, x, (1, 5))
    assert torch.equal(runs[1], runs[5])


def test_mc_averages_are_summed_batch_by_batch_exactly():
    # the average of each batch's draws, bit for bit: an average over all N at once rounds
    # differently in the last bit (the evaluation records of committed runs used batches)
    torch.manual_seed(6)
    model = AllCNN(1, 10, width=0.1, norm="weight").eval()
    add_noise(model, "bayes", sigma_s=0.3)
    x = torch.randn(1100, 1, 28, 28)
    out = predict_running(model, x, (10,), generator=torch.Generator().manual_seed(3))[10]
    g = torch.Generator().manual_seed(3)
    expected = []
    for xb in x.split(500):
        with sampling(model, g):
            expected.append(torch.stack([torch.softmax(model(xb), 1) for _ in range(10)]).mean(0))
    assert torch.equal(out, torch.cat(expected))


def test_gradients_reach_sigma_and_kl_pushes_it_up():
    torch.manual_seed(4)
    model = AllCNN(1, 10, width=0.1, norm="weight").train()
    add_noise(model, "bayes", sigma_s=0.05, per_channel=False)
    loss = kl_divergence(model)
    loss.backward()
    for n in normalizations(model):
        assert n.noise.u.shape == (1,)
        assert n.noise.u.grad is not None and (n.noise.u.grad < 0).all()  # -log sigma term
