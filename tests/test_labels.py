"""The run-label grammar: parsing and producing labels, its errors, and that every committed
quick-profile run has exactly the configuration its label produces (so `make results-*`
resumes those runs instead of refusing them)."""

from pathlib import Path

import pytest

from stochnorm.checkpoint import load_json
from stochnorm.config import TrainConfig
from stochnorm.errors import ConfigError
from stochnorm.labelled import label_config
from stochnorm.labels import (
    POPULATION_GAMMA_DECAY,
    SIGMA_FROM_BN,
    format_label,
    parse_label,
    without_search,
)

RESULTS = Path(__file__).resolve().parent.parent / "results" / "quick"
BN_NOISE = RESULTS.parent / "bn-noise" / "bn-noise.json"


@pytest.mark.parametrize(
    "label, settings",
    [
        ("batch", {"norm": "batch"}),
        ("analytic-proj-bayes-f30", {"norm": "analytic", "project": True, "noise": "bayes",
                                     "noise_lr_factor": 30.0}),
        ("analytic-proj-bayes-s0.03-f10-k0", {"norm": "analytic", "project": True,
                                              "noise": "bayes", "sigma_s": 0.03,
                                              "noise_lr_factor": 10.0, "kl_factor": 0.0}),
        ("population-detached", {"norm": "population", "gamma_decay": POPULATION_GAMMA_DECAY,
                                 "population_gradient": False}),
        ("population-gd0", {"norm": "population", "gamma_decay": 0.0}),
        ("population-proj-gd0.001", {"norm": "population", "project": True,
                                     "gamma_decay": 0.001}),
        ("weight-proj-bnlike", {"norm": "weight", "project": True, "noise": "bn-like"}),
        ("group-proj-g8-bayes", {"norm": "group", "project": True, "groups": 8,
                                 "noise": "bayes"}),
        ("layer", {"norm": "layer"}),
    ],
)  # fmt: skip
def test_labels_parse_to_their_settings_and_back(label, settings):
    assert parse_label(label) == settings
    assert format_label(settings) == label
    assert format_label(TrainConfig(**settings).to_dict()) == label  # from a whole config


@pytest.mark.parametrize(
    "label, message",
    [
        ("instance", "unknown norm 'instance'"),
        ("batch-bayes-proj", "does not read as"),
        ("batch-g8", "groups of group norm only"),
        ("weight-detached", "population norm only"),
        ("analytic-proj-bayes-fast", "does not read as"),
    ],
)
def test_labels_that_do_not_fit_the_grammar_say_so(label, message):
    with pytest.raises(ConfigError, match=message):
        parse_label(label)


def _committed(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/config.json"))


def _expected(run: Path, overrides: dict, lr_file: Path) -> TrainConfig:
    cfg = label_config(run.name, "quick", overrides, noise_from=BN_NOISE)
    return cfg.replace(lr=load_json(lr_file)["lr"])


def test_every_committed_quick_run_has_the_configuration_of_its_label():
    runs = _committed(RESULTS)
    assert len(runs) >= 15
    for run in runs:
        expected = _expected(run, {}, RESULTS / f"lr-find-{run.name}.json")
        assert TrainConfig.load(run / "config.json") == expected, run.name
        # and its search was of the same configuration
        searched = TrainConfig.from_dict(load_json(RESULTS / f"lr-find-{run.name}.json")["config"])
        assert searched == expected.replace(lr=searched.lr), run.name


@pytest.mark.parametrize(
    "folder, overrides, lr",
    [
        ("bayes-screen", {"epochs": 20, "lr_decay_epochs": 10}, "lr-find-analytic-proj-bayes.json"),
        ("long", {"epochs": 120, "lr_decay_epochs": 60}, None),
    ],
)
def test_the_committed_screen_and_long_runs_follow_from_their_labels(folder, overrides, lr):
    runs = _committed(RESULTS / folder)
    assert runs
    for run in runs:
        lr_file = RESULTS / (lr or f"lr-find-{run.name}.json")
        assert TrainConfig.load(run / "config.json") == _expected(run, overrides, lr_file), run


def test_learned_noise_from_bns_level_with_adam():
    label = "analytic-proj-bayes-sbn-f30-adam"
    assert parse_label(label) == {"norm": "analytic", "project": True, "noise": "bayes",
                                  "sigma_s": SIGMA_FROM_BN, "noise_lr_factor": 30.0,
                                  "noise_optimizer": "adam"}  # fmt: skip
    cfg = label_config(label, "quick", noise_from=BN_NOISE)
    measured = load_json(BN_NOISE)["summary"]["sigma_u"]
    assert cfg.sigma_s == tuple(measured) and len(cfg.sigma_s) == 9
    assert format_label(cfg.to_dict()) == label
    with pytest.raises(ConfigError, match="needs --noise-from"):
        label_config(label, "quick")


def test_a_tuned_label_needs_the_labs_noise_search():
    assert without_search("analytic-proj-bayes-sbn-adam") == parse_label(
        "analytic-proj-bayes-sbn-adam"
    )
    assert parse_label("weight-proj-bayes-tuned")["noise"] == "bayes"
    with pytest.raises(ConfigError, match="noise search of `stochnorm reproduce table1-bayes`"):
        without_search("weight-proj-bayes-tuned")
    for combined in ("analytic-proj-bayes-sbn-tuned", "analytic-proj-bayes-adam-tuned"):
        with pytest.raises(ConfigError, match="-tuned takes its noise settings"):
            parse_label(combined)
