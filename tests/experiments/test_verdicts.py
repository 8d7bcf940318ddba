"""Verdicts: how margins, noise and parts decide a claim."""

import pytest

from stochnorm.experiments.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    combine,
    compare,
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
