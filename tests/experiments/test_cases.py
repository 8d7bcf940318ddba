"""The shared runs: their measurement settings as the CLI has them."""

import json

import pytest

from stochnorm.cli import build_parser
from stochnorm.config import TrainConfig
from stochnorm.errors import ConfigError
from stochnorm.experiments import Lab
from stochnorm.experiments.cases import (
    NOISE_CANDIDATES,
    NOISE_SEARCH_BASE,
    PROFILE_SETTINGS,
    SEARCH_SEED_OFFSET,
    noise_search,
    run_config,
)
from stochnorm.labelled import label_config
from stochnorm.runs import RunDir


def test_quick_and_full_measure_bn_noise_as_the_cli_does():
    # so that the BN-like sigmas equal those of `stochnorm diagnose bn-noise RUN`
    args = build_parser().parse_args(["diagnose", "bn-noise", "RUN"])
    for profile in ("quick", "full"):
        s = PROFILE_SETTINGS[profile]
        assert list(s["bn_batch_sizes"]) == args.batch_sizes
        assert s["bn_batches"] == args.batches
    assert 32 in PROFILE_SETTINGS["demo"]["bn_batch_sizes"]  # the training batch size


TINY = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 50, "eval_size": 200}


def test_tuned_noise_is_the_candidate_of_lowest_validation_nll(tmp_path):
    lab = Lab("demo", tmp_path, overrides=TINY)
    search = noise_search(lab)
    assert set(search["candidates"]) == set(NOISE_CANDIDATES)
    # the validation NLLs are the runs' own, read back independently; the search's seed
    for suffix, c in search["candidates"].items():
        run = RunDir(c["run"])
        assert run.config() == run_config(lab, NOISE_SEARCH_BASE + suffix).replace(
            lr=c["lr"], seed=lab.seed + SEARCH_SEED_OFFSET)  # fmt: skip
        assert c["val_nll"] == run.metrics()["final"]["val"]["nll"]
    lowest = min(search["candidates"], key=lambda k: search["candidates"][k]["val_nll"])
    assert search["chosen"] == lowest
    # make Adam from BN's sigma_U the winner: -bayes-tuned follows it, for weight norm too
    path = RunDir(search["candidates"]["-bayes-sbn-adam"]["run"]).metrics_path
    saved = json.loads(path.read_text())
    saved["final"]["val"]["nll"] = 0.0
    path.write_text(json.dumps(saved))
    assert noise_search(lab)["chosen"] == "-bayes-sbn-adam"
    tuned = run_config(lab, "analytic-proj-bayes-tuned")
    assert tuned == run_config(lab, "analytic-proj-bayes-sbn-adam")
    assert tuned.seed == lab.seed and tuned.noise_optimizer == "adam"
    weight = run_config(lab, "weight-proj-bayes-tuned")
    assert (weight.norm, weight.noise, weight.noise_optimizer) == ("weight", "bayes", "adam")
    assert weight.sigma_s == tuned.sigma_s != TrainConfig().sigma_s  # BN's sigma_U per layer
    # the judged run is trained afresh at the lab's seed, not the search's winner reused
    judged = lab.train_seeds(tuned, label="analytic-proj-bayes-tuned")[0]
    assert judged.path != path.parent and judged.config().seed == lab.seed
    # a diverged run is never chosen, however low its validation NLL
    path.write_text(json.dumps({**saved, "diverged": True}))
    others = {k: c["val_nll"] for k, c in search["candidates"].items() if k != "-bayes-sbn-adam"}
    assert noise_search(lab)["chosen"] == min(others, key=others.get)


def test_tuned_noise_outside_the_lab_is_an_error_that_says_so():
    with pytest.raises(ConfigError, match="noise search"):
        label_config("analytic-proj-bayes-tuned", "demo")
    with pytest.raises(ConfigError, match="-tuned takes its noise settings from the search"):
        label_config("analytic-proj-bayes-f30-tuned", "demo")
