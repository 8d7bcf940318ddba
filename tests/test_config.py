import json

import pytest

from stochnorm import PROFILES, ConfigError, TrainConfig


def test_gamma_reaches_a_tenth_after_decay_epochs():
    cfg = TrainConfig(lr=0.2, lr_decay_epochs=600, epochs=1200)
    assert cfg.gamma**600 == pytest.approx(0.1, rel=1e-12)
    assert cfg.lr_at(0) == 0.2
    assert cfg.lr_at(600) == pytest.approx(0.02, rel=1e-12)
    assert cfg.lr_at(1200) == pytest.approx(0.002, rel=1e-12)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": 0}, "width"),
        ({"width": float("nan")}, "width"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"subset": 1.5}, "subset"),
        ({"batch_size": 0}, "batch_size"),
        ({"norm_batch": 16}, "norm_batch"),
        ({"dataset": "nope"}, "unknown dataset"),
        ({"norm": "instance"}, "unknown norm"),
        ({"groups": 0}, "groups"),
        ({"model": "vgg"}, "unknown model"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_values_name_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_norm_batch_counts_the_extra_samples():
    assert TrainConfig().extra_norm_samples == 0
    assert TrainConfig(batch_size=32, norm_batch=1024).extra_norm_samples == 992


def test_profiles_and_overrides():
    quick = TrainConfig.from_profile("quick")
    assert (quick.width, quick.subset, quick.epochs) == (1 / 3, 0.1, 60)
    assert quick.profile == "quick"
    assert TrainConfig.from_profile("quick", lr=0.3, epochs=None).lr == 0.3
    full = TrainConfig.from_profile("full")
    assert full.gamma**600 == pytest.approx(0.1) and full.epochs == 1200 and full.width == 1
    assert set(PROFILES) == {"demo", "quick", "bench", "regime", "quick-full", "full"}
    regime = TrainConfig.from_profile("regime")  # the quick model on a fifth of its images
    assert not regime.augment and regime.subset == pytest.approx(0.2 * PROFILES["quick"]["subset"])
    bench = TrainConfig.from_profile("bench")  # quick's data and model, half its schedule
    assert (bench.width, bench.subset, bench.epochs, bench.gamma**15) == pytest.approx(
        (quick.width, quick.subset, 30, 0.1)
    )
    with pytest.raises(ConfigError, match="unknown profile"):
        TrainConfig.from_profile("huge")


def test_json_round_trip(tmp_path):
    cfg = TrainConfig.from_profile("demo", norm="none", norm_batch=64)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.load(path) == cfg
    path.write_text(json.dumps({**cfg.to_dict(), "dropout": 0.5}))
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig.load(path)


def test_per_layer_bn_like_sigmas_round_trip(tmp_path):
    cfg = TrainConfig(norm="weight", noise="bn-like", sigma_v=[0.1, 0.2], sigma_u=0.05)
    assert cfg.sigma_v == (0.1, 0.2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.load(path) == cfg
    with pytest.raises(ConfigError, match="sigma_v"):
        TrainConfig(norm="weight", noise="bn-like", sigma_v=[0.1, -0.2])
    with pytest.raises(ConfigError, match="noise needs a normalization"):
        TrainConfig(norm="none", noise="bayes")


def test_ghost_batches_are_checked_where_they_enter():
    assert TrainConfig(ghost_batch=8).ghost_batch == 8
    for changes, message in [
        ({"ghost_batch": 5}, "must divide batch_size"),
        ({"ghost_batch": 8, "norm": "analytic"}, "batch norm only"),
        ({"ghost_batch": 8, "norm_batch": 64}, "do not combine"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**changes)


def test_settings_that_would_change_nothing_are_refused():
    with pytest.raises(ConfigError, match="applies to --norm group only"):
        TrainConfig(norm="batch", groups=8)
    with pytest.raises(ConfigError, match="needs noise='bayes'"):
        TrainConfig(norm="analytic", noise_optimizer="adam")
    assert TrainConfig(norm="group", groups=8).groups == 8
