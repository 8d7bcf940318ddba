"""Run-level tasks: `measure_bn_noise` against `bn_noise` on the loaded run itself, and
the temperature scaling that `evaluate_run` reports."""

import dataclasses

import pytest
import torch

from stochnorm import data as datasets
from stochnorm import metrics
from stochnorm.checkpoint import save_checkpoint, save_json
from stochnorm.config import TrainConfig
from stochnorm.diagnostics import bn_noise, summarize_bn_noise
from stochnorm.errors import ConfigError
from stochnorm.evaluation import load_run, measure_bn_noise, single_pass
from stochnorm.experiments.main_noise import fig4_numbers
from stochnorm.prediction import predict_probs
from stochnorm.train import build_model


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """A run directory of a tiny BN network whose running statistics have seen training
    batches (no optimization step), as measure_bn_noise reads it."""
    path = tmp_path_factory.mktemp("bn-run")
    cfg = TrainConfig.from_profile("demo", width=0.1, subset=0.005, eval_train_size=50)
    data = datasets.prepare(cfg.dataset, subset=cfg.subset, split_seed=cfg.split_seed)
    model = build_model(cfg, data).train()
    with torch.no_grad():
        for start in range(0, len(data.train), 32):
            model(data.train.x[start : start + 32])
    save_json(cfg.to_dict(), path / "config.json")
    save_checkpoint({"model": model.state_dict()}, path / "checkpoint.pt")
    return path


def test_measure_bn_noise_is_bn_noise_of_the_loaded_run_with_chi2_at_the_batch_size(bn_run):
    found = measure_bn_noise(bn_run, (8, 32, 64), batches=4, seed=3)
    cfg, data, model = load_run(bn_run)
    direct = bn_noise(model, data, (8, 32, 64), batches=4, seed=3)
    assert found["run"] == str(bn_run)
    assert found["summary"] == summarize_bn_noise(direct, cfg.batch_size)
    for mine, ref in zip(found["measurements"]["layers"], direct["layers"], strict=True):
        for e, r in zip(mine["per_batch_size"], ref["per_batch_size"], strict=True):
            assert e["sigma_v"] == r["sigma_v"] and e["output_var"] == r["output_var"]
            assert ("chi2" in e) == (e["k"] == 32)
    numbers = fig4_numbers(found)
    assert "chi2" in next(  # fig4_numbers keeps the samples of the Q-Q layer only
        e for e in numbers["measurements"]["layers"][5]["per_batch_size"] if e["k"] == 32
    )
    assert all("chi2" not in e for e in numbers["measurements"]["layers"][0]["per_batch_size"])
    assert all("chi2" in e for e in found["measurements"]["layers"][0]["per_batch_size"]
               if e["k"] == 32)  # the input is not changed  # fmt: skip
    for row in numbers["summary"]["layers"]:  # the same slope as summarize_bn_noise's
        ref = next(r for r in found["summary"]["layers"] if r["layer"] == row["layer"])
        assert row["var_vs_k_slope"] == pytest.approx(ref["var_vs_k_slope"], abs=1e-12)
        assert row["chi2_samples"] == 4 * model_channels(model, row["layer"])
    assert numbers["var_times_k_vs_z"]["slope"] == pytest.approx(
        found["summary"]["var_times_k_vs_z_slope"], abs=1e-12
    )


def test_measure_bn_noise_refuses_other_norms_and_batch_sizes_without_the_runs(bn_run, tmp_path):
    with pytest.raises(ConfigError, match="batch size 32"):
        measure_bn_noise(bn_run, (8, 16), batches=2)
    cfg = TrainConfig.from_profile("demo", norm="weight", width=0.1, subset=0.005)
    _, data, _ = load_run(bn_run)
    save_json(cfg.to_dict(), tmp_path / "config.json")
    save_checkpoint({"model": build_model(cfg, data).state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="norm=weight"):
        measure_bn_noise(tmp_path, batches=2)


def model_channels(model, layer):
    from stochnorm.norms import BatchNorm

    return [m for m in model.modules() if isinstance(m, BatchNorm)][layer - 1].num_features


def test_temperature_scaling_is_fitted_on_validation_and_applied_to_test(bn_run):
    cfg, data, model = load_run(bn_run)
    cfg = cfg.replace(eval_size=500)
    data = dataclasses.replace(data, val=data.val.head(500), test=data.test.head(500))
    found = single_pass(model, data, 250, "cpu")["temperature_scaled"]
    val = predict_probs(model, data.val)
    assert found["temperature"] == pytest.approx(metrics.fit_temperature(val, data.val.y))
    test = metrics.temperature_scale(predict_probs(model, data.test), found["temperature"])
    assert found["test"] == pytest.approx(metrics.summary(test, data.test.y))
    # the argmax, hence the accuracy, is that of the unscaled single pass
    plain = metrics.summary(predict_probs(model, data.test), data.test.y)
    assert found["test"]["accuracy"] == plain["accuracy"]
