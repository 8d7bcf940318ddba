"""Verdicts: how margins, noise and parts decide a claim."""

import math
import statistics

import pytest

from stochnorm.experiments.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    ITERATE_RULE,
    TAIL_SEED_RULE,
    combine,
    compare,
    diverged_parts,
    improvement_verdict,
)


def _history(key, values):
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_improvement_verdict_compares_tail_means_with_the_iterate_spread():
    wobble = [0.01 * (-1) ** i for i in range(10)]  # spread ~0.0105
    runs = {
        "a": {"history": _history("val_acc", [0.90 + w for w in wobble])},
        "b": {"history": _history("val_acc", [0.85 + w for w in wobble])},
        "c": {"history": _history("val_acc", [0.905 + w for w in wobble])},
    }
    assert improvement_verdict(runs, "a", "b", "val_acc").status == HOLDS
    assert improvement_verdict(runs, "b", "a", "val_acc").status == FAILS
    assert improvement_verdict(runs, "c", "a", "val_acc").status == INCONCLUSIVE
    # tolerant: within the spread is enough, a clear loss is not
    assert improvement_verdict(runs, "a", "c", "val_acc", tolerant=True).status == HOLDS
    assert improvement_verdict(runs, "b", "a", "val_acc", tolerant=True).status == FAILS
    losses = {
        "a": {"history": _history("val_loss", [0.3 + w for w in wobble])},
        "b": {"history": _history("val_loss", [0.4 + w for w in wobble])},
    }
    verdict = improvement_verdict(losses, "a", "b", "val_loss")
    assert verdict.status == HOLDS and verdict.margin == pytest.approx(0.1)


def test_verdicts_compare_the_margin_with_the_noise():
    assert compare(0.02, 0.01, "x").status == HOLDS
    assert compare(-0.02, 0.01, "x").status == FAILS
    assert compare(0.005, 0.01, "x").status == INCONCLUSIVE
    assert compare(0.5, 0.1, "x", threshold=0.3).status == HOLDS
    hold, fail, unsure = compare(1, 0, "a"), compare(-1, 0, "b"), compare(0, 1, "c")
    assert combine([hold, hold]).status == HOLDS
    assert combine([hold, unsure]).status == INCONCLUSIVE
    assert combine([unsure, fail]).status == FAILS
    # a combined verdict keeps its parts, flattened, for the report to list one by one
    nested = combine([hold, combine([fail, unsure])])
    assert [v.summary for v in nested.leaves()] == ["a", "b", "c"]
    assert nested.to_dict()["parts"] == [
        {"status": HOLDS, "summary": "a"}, {"status": FAILS, "summary": "b"},
        {"status": INCONCLUSIVE, "summary": "c"},
    ]  # fmt: skip
    assert "parts" not in hold.to_dict()


def _seeded(values: dict[str, list[float]]) -> dict:
    """A run summary with one seed entry per value of each key (and a flat history)."""
    n = len(next(iter(values.values())))
    seeds = [{"seed": i, **{k: v[i] for k, v in values.items()}} for i in range(n)]
    return {"history": [{k: v[0] for k, v in values.items()}] * 12, "seeds": seeds}


def test_paired_seeds_decide_against_two_standard_errors_of_the_mean_difference():
    better = _seeded({"val_acc": [0.90, 0.91, 0.92], "val_loss": [0.30, 0.31, 0.29]})
    worse = _seeded({"val_acc": [0.89, 0.905, 0.90], "val_loss": [0.30, 0.30, 0.31]})
    numbers = {"a": better, "b": worse}
    acc = improvement_verdict(numbers, "a", "b", "val_acc")
    diffs = [0.01, 0.005, 0.02]
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(3)
    assert acc.margin == pytest.approx(mean) and acc.noise == pytest.approx(2 * se)
    assert acc.status == HOLDS and acc.rule == TAIL_SEED_RULE  # 0.0117 > 2 x 0.0044
    assert "2 SE over 3 seeds" in acc.summary
    loss = improvement_verdict(numbers, "a", "b", "val_loss")  # lower is better
    assert loss.margin == pytest.approx(statistics.fmean([0.0, -0.01, 0.02]))
    assert loss.status == INCONCLUSIVE
    assert improvement_verdict(numbers, "b", "a", "val_acc").status == FAILS
    # the rule travels with the record, part by part
    record = combine([acc, loss]).to_dict()
    assert [p["rule"] for p in record["parts"]] == [TAIL_SEED_RULE, TAIL_SEED_RULE]


def test_one_seed_falls_back_to_the_iterate_spread_and_says_so():
    history = [{"val_acc": 0.9 + 0.001 * (i % 2)} for i in range(12)]
    other = [{"val_acc": 0.8} for _ in range(12)]
    numbers = {"a": {"history": history, "seeds": [{"val_acc": 0.9005}]},
               "b": {"history": other, "seeds": [{"val_acc": 0.8}]}}  # fmt: skip
    found = improvement_verdict(numbers, "a", "b", "val_acc")
    assert found.rule == ITERATE_RULE and found.status == HOLDS
    assert found.noise == pytest.approx(statistics.stdev([r["val_acc"] for r in history[-10:]]))


def test_seeds_pair_by_number_and_a_diverged_seed_is_named():
    better = {"history": [], "seeds": [{"seed": 0, "val_acc": 0.91}, {"seed": 1, "diverged": True},
                                       {"seed": 2, "val_acc": 0.93}]}  # fmt: skip
    worse = {"history": [], "seeds": [{"seed": 0, "val_acc": 0.90}, {"seed": 1, "val_acc": 0.95},
                                      {"seed": 2, "val_acc": 0.91}]}  # fmt: skip
    found = improvement_verdict({"a": better, "b": worse}, "a", "b", "val_acc")
    assert found.margin == pytest.approx(statistics.fmean([0.01, 0.02]))  # seeds 0 and 2 only
    assert "over 2 seeds" in found.summary
    parts = diverged_parts({"a": better, "b": worse})
    assert [p.summary for p in parts] == ["a diverged (compared at its last finite epoch)"]
