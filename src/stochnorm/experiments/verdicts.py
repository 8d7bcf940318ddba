"""Verdicts: how a claim is decided from measured numbers. A verdict holds, does not hold
or is inconclusive; combined claims keep their parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..stats import iterate_spread, tail_mean

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

TAIL = 10  # epochs over which end points are averaged (stats.tail_mean's default)


@dataclass(frozen=True)
class Verdict:
    """`status`: holds / does not hold / inconclusive; `summary`: the numbers it rests on;
    `margin`: the measured difference in favour of the claim (None if not one number);
    `noise`: the spread it was compared against; `parts`: the verdicts of a claim's parts
    (a combined claim); `notes`: numbers reported beside it that do not count toward it."""

    status: str
    summary: str
    margin: float | None = None
    noise: float | None = None
    parts: tuple[Verdict, ...] = ()
    notes: tuple[str, ...] = ()

    def leaves(self) -> list[Verdict]:
        """The single-part verdicts this one is made of (itself if it has no parts)."""
        return [leaf for part in self.parts for leaf in part.leaves()] if self.parts else [self]

    def to_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "summary": self.summary, "margin": self.margin,
               "noise": self.noise}  # fmt: skip
        if self.parts:
            out["parts"] = [{"status": v.status, "summary": v.summary} for v in self.leaves()]
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def compare(margin: float, noise: float, summary: str, *, threshold: float = 0.0) -> Verdict:
    """The claim "margin > threshold": holds when the margin exceeds it by more than `noise`,
    does not hold when it falls short by more than `noise`, else inconclusive."""
    if margin - threshold > noise:
        status = HOLDS
    elif margin - threshold < -noise:
        status = FAILS
    else:
        status = INCONCLUSIVE
    return Verdict(status, summary, margin, noise)


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """All parts of a claim: holds if every part holds, does not hold if any part fails."""
    statuses = {v.status for v in verdicts}
    status = FAILS if FAILS in statuses else HOLDS if statuses == {HOLDS} else INCONCLUSIVE
    summary = "; ".join(f"{v.summary} [{v.status}]" for v in verdicts)
    return Verdict(status, summary, parts=tuple(verdicts))


def _tail(numbers: Mapping[str, Any], better: str, worse: str, key: str, lower: bool):
    """(margin in favour of `better`, the larger iterate spread, the two tail means) of
    `key` over the last TAIL epochs; `lower`: smaller values are better."""
    a, b = numbers[better]["history"], numbers[worse]["history"]
    ma, mb = tail_mean(a, key, TAIL), tail_mean(b, key, TAIL)
    noise = max(iterate_spread(a, key, TAIL), iterate_spread(b, key, TAIL))
    return (mb - ma if lower else ma - mb), noise, ma, mb


def improvement_verdict(
    numbers: Mapping[str, Any], better: str, worse: str, key: str, *, tolerant: bool = False
) -> Verdict:
    """The claim "`better` improves `key` (val_acc: higher, val_loss: lower) over `worse`"
    on the means of the last TAIL epochs against the larger iterate spread of the two.
    `tolerant`: the weaker claim "`better` is not worse by more than the spread" (an
    insignificant improvement, as the paper says of analytic norm in Fig. 5)."""
    lower = key != "val_acc"
    margin, noise, ma, mb = _tail(numbers, better, worse, key, lower)
    scale, unit = (100, "%") if key == "val_acc" else (1, "")
    text = (
        f"{key} {better} {scale * ma:.3f}{unit} vs {worse} {scale * mb:.3f}{unit} (margin "
        f"{scale * margin:+.3f}, iterate spread {scale * noise:.3f})"
    )
    if tolerant:
        return Verdict(HOLDS if margin >= -noise else FAILS, text + ", not worse by more "
                       "than the spread", margin, noise)  # fmt: skip
    return compare(margin, noise, text)


def diverged_parts(runs: Mapping[str, Mapping[str, Any]]) -> list[Verdict]:
    """An inconclusive part for every run that diverged (its comparisons rest on the last
    finite epoch)."""
    return [
        Verdict(INCONCLUSIVE, f"{label} diverged (compared at its last finite epoch)")
        for label, entry in runs.items()
        if entry.get("diverged")
    ]


def val_acc_verdict(numbers: dict, better: str, worse: str, last: int = 10) -> Verdict:
    """The claim "run `better` reaches a higher validation accuracy than `worse`", on the
    mean of the last `last` epochs against the larger iterate spread of the two."""
    a, b = numbers[better]["history"], numbers[worse]["history"]
    margin = tail_mean(a, "val_acc", last) - tail_mean(b, "val_acc", last)
    noise = max(iterate_spread(a, "val_acc", last), iterate_spread(b, "val_acc", last))
    return compare(
        margin, noise,
        f"val acc {better} {100 * tail_mean(a, 'val_acc', last):.2f}% vs {worse} "
        f"{100 * tail_mean(b, 'val_acc', last):.2f}% (margin {100 * margin:+.2f}, iterate "
        f"spread {100 * noise:.2f})",
    )  # fmt: skip
