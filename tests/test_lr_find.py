import json
import math

import pytest

from stochnorm import TrainConfig, TrainResult, lr_find
from stochnorm import lr_search as lr_find_module


def _fake_train(best_log_lr: float, diverge_above: float = math.inf):
    """A stand-in for training whose final loss is a parabola in log10(lr)."""
    calls = []

    def train(cfg, *args, **kwargs):
        calls.append(cfg)
        diverged = cfg.lr > diverge_above
        loss = (math.log10(cfg.lr) - best_log_lr) ** 2 + 0.1
        history = [] if diverged else [{"epoch": cfg.epochs, "train_loss": loss}]
        return TrainResult(model=None, metrics={"history": history, "diverged": diverged})

    return train, calls


def test_search_finds_the_minimum_within_the_refined_bracket(monkeypatch):
    fake, calls = _fake_train(best_log_lr=-1.3)
    monkeypatch.setattr(lr_find_module, "train", fake)
    seen = []
    result = lr_find(
        TrainConfig(profile="quick"), data=object(), refine=4,
        on_trial=lambda lr, loss: seen.append((lr, loss)),
    )  # fmt: skip
    assert [c.lr for c in calls] == [lr for lr, _ in seen]  # reported as each trial ends
    assert sorted(seen) == [(t["lr"], t["train_loss"]) for t in result["trials"]]
    # grid spacing 0.5 decades, narrowed four times: within 0.5 / 2**2 of the optimum
    assert abs(math.log10(result["lr"]) + 1.3) <= 0.125
    assert not result["at_edge"]
    assert all(c.epochs == 5 for c in calls)  # the quick profile's trial length
    assert len(calls) == 7 + 4  # 1e-3 .. 1 at two points per decade, then 4 refinements
    assert result["trials"] == sorted(result["trials"], key=lambda t: t["lr"])


def test_diverged_trials_never_win_and_edge_is_reported(monkeypatch):
    fake, _ = _fake_train(best_log_lr=1.0, diverge_above=0.5)
    monkeypatch.setattr(lr_find_module, "train", fake)
    result = lr_find(TrainConfig(profile="demo"), data=object(), refine=0)
    assert result["lr"] == pytest.approx(10**-0.5)
    assert [t["train_loss"] for t in result["trials"]][-1] == math.inf
    fake, _ = _fake_train(best_log_lr=-5)
    monkeypatch.setattr(lr_find_module, "train", fake)
    assert lr_find(TrainConfig(profile="demo"), data=object(), refine=0)["at_edge"]


def test_real_search_on_a_few_images(tiny_fashion):
    cfg = TrainConfig(width=0.1, norm="batch", eval_train_size=0, profile="demo")
    result = lr_find(cfg, data=tiny_fashion, lr_min=1e-3, lr_max=1e-1, per_decade=1, refine=1)
    losses = {t["lr"]: t["train_loss"] for t in result["trials"]}
    assert len(losses) == 4 and result["lr"] in losses
    assert losses[result["lr"]] == min(losses.values())


def test_trials_already_known_are_not_trained_again(monkeypatch):
    fake, calls = _fake_train(best_log_lr=-1.3)
    monkeypatch.setattr(lr_find_module, "train", fake)
    full = lr_find(TrainConfig(profile="quick"), data=object(), refine=2)
    first_three = {t["lr"]: t["train_loss"] for t in full["trials"][:3]}
    calls.clear()
    resumed = lr_find(TrainConfig(profile="quick"), data=object(), refine=2, known=first_three)
    assert resumed == full
    trained = {c.lr for c in calls}
    assert len(calls) == len(full["trials"]) - 3
    assert not trained & set(first_three)


def test_an_interrupted_search_of_the_lab_resumes_from_its_saved_trials(tmp_path, monkeypatch):
    from stochnorm.experiments import Lab

    fake, calls = _fake_train(best_log_lr=-1.3)

    def crash_after_four(cfg, *args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        return fake(cfg, *args, **kwargs)

    lab = Lab("demo", tmp_path, lr_search=True)
    cfg = lab.config(norm="batch")
    monkeypatch.setattr(lr_find_module, "prepare_data", lambda cfg: object())
    monkeypatch.setattr(lr_find_module, "train", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        lab.lr(cfg)
    (saved,) = tmp_path.glob("lr-trials-*.json")
    assert len(json.loads(saved.read_text())["trials"]) == 4
    monkeypatch.setattr(lr_find_module, "train", fake)
    lr = lab.lr(cfg)
    assert len(calls) == 7 + 3  # the grid and the refinements, each trained once
    assert abs(math.log10(lr) + 1.3) <= 0.25
    assert not list(tmp_path.glob("lr-trials-*.json"))  # the finished search replaces it
    assert len(list(tmp_path.glob("lr-find-*.json"))) == 1
