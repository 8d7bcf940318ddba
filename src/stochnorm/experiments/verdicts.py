"""Verdicts: how a claim is decided from measured numbers. A verdict holds, does not hold
or is inconclusive; combined claims keep their parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..stats import iterate_spread, mean_and_error, tail_mean

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def claim_sentence(status: str) -> str:
    """ "the claim holds", "the claim does not hold", "the claim is inconclusive"."""
    return f"the claim {'is ' if status == INCONCLUSIVE else ''}{status}"


TAIL = 10  # epochs over which end points are averaged (stats.tail_mean's default)


@dataclass(frozen=True)
class Verdict:
    """`status`: holds / does not hold / inconclusive; `summary`: the numbers it rests on;
    `margin`: the measured difference in favour of the claim (None if not one number);
    `noise`: the spread it was compared against; `parts`: the verdicts of a claim's parts
    (a combined claim); `notes`: numbers reported beside it that do not count toward it;
    `rule`: how margin and noise decided it (SEED_RULE, ITERATE_RULE, ...), where stated."""

    status: str
    summary: str
    margin: float | None = None
    noise: float | None = None
    parts: tuple[Verdict, ...] = ()
    notes: tuple[str, ...] = ()
    rule: str | None = None

    def leaves(self) -> list[Verdict]:
        """The single-part verdicts this one is made of (itself if it has no parts)."""
        return [leaf for part in self.parts for leaf in part.leaves()] if self.parts else [self]

    def to_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "summary": self.summary, "margin": self.margin,
               "noise": self.noise}  # fmt: skip
        if self.rule:
            out["rule"] = self.rule
        if self.parts:
            out["parts"] = [
                {"status": v.status, "summary": v.summary, **({"rule": v.rule} if v.rule else {})}
                for v in self.leaves()
            ]
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def compare(
    margin: float, noise: float, summary: str, *, threshold: float = 0.0, rule: str | None = None
) -> Verdict:
    """The claim "margin > threshold": holds when the margin exceeds it by more than `noise`,
    does not hold when it falls short by more than `noise`, else inconclusive."""
    if margin - threshold > noise:
        status = HOLDS
    elif margin - threshold < -noise:
        status = FAILS
    else:
        status = INCONCLUSIVE
    return Verdict(status, summary, margin, noise, rule=rule)


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """All parts of a claim: holds if every part holds, does not hold if any part fails."""
    statuses = {v.status for v in verdicts}
    status = FAILS if FAILS in statuses else HOLDS if statuses == {HOLDS} else INCONCLUSIVE
    summary = "; ".join(f"{v.summary} [{v.status}]" for v in verdicts)
    return Verdict(status, summary, parts=tuple(verdicts))


SEED_RULE = (
    "paired seeds: the mean over seeds of the difference of the two runs' final values against "
    "2 standard errors of that mean (holds, or better, beyond +2 SE in the claimed direction; "
    "does not hold, or worse, beyond 2 SE the other way; inconclusive between, or with fewer "
    "than 2 pairs)"
)
TAIL_SEED_RULE = SEED_RULE.replace("final values", "last-10-epoch means")
TOLERANCE_RULE = (
    "one seed: a test-set difference against a fixed tolerance (an accuracy: the binomial "
    "standard error of the difference; an NLL: 2% of it)"
)
ITERATE_RULE = (
    "one seed: the difference of the last-10-epoch means against the larger iterate spread "
    "(standard deviation over those epochs) of the two runs"
)


def _seed_values(entry: Mapping[str, Any], key: str) -> dict[int, float]:
    """The last-TAIL-epoch means of `key` of every seed of a run summary
    (`cases.seeded_summary`) by seed number, or {} for a summary without seeds."""
    seeds = entry.get("seeds", ())
    return {s.get("seed", i): s[key] for i, s in enumerate(seeds) if key in s}


def paired_seeds(
    a: Mapping[int, float], b: Mapping[int, float]
) -> tuple[float, float, list[int]] | None:
    """(mean of a[s] - b[s] over the seeds s both have, 2 standard errors of it, those
    seeds), or None with fewer than two in common (then a caller falls back to a one-run
    rule)."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    mean, se = mean_and_error([a[s] - b[s] for s in common])
    return mean, 2 * se, common


def tail_difference(
    numbers: Mapping[str, Any], better: str, worse: str, key: str, lower: bool
) -> tuple[float, float, float, float, str, int]:
    """(margin in favour of `better`, its noise, the two means, the rule, seeds) for `key`
    over the last TAIL epochs; `lower`: smaller values are better. With two or more seeds of
    each run (paired by seed) the margin is the mean paired difference and the noise twice
    its standard error (TAIL_SEED_RULE); with one, the difference of the tail means against the
    larger iterate spread (ITERATE_RULE)."""
    sign = -1.0 if lower else 1.0
    a, b = _seed_values(numbers[better], key), _seed_values(numbers[worse], key)
    paired = paired_seeds(a, b)
    if paired is not None:
        margin, noise, common = paired
        ma = mean_and_error([a[s] for s in common])[0]
        mb = mean_and_error([b[s] for s in common])[0]
        return sign * margin, noise, ma, mb, TAIL_SEED_RULE, len(common)
    ha, hb = numbers[better]["history"], numbers[worse]["history"]
    ma, mb = tail_mean(ha, key, TAIL), tail_mean(hb, key, TAIL)
    noise = max(iterate_spread(ha, key, TAIL), iterate_spread(hb, key, TAIL))
    return sign * (ma - mb), noise, ma, mb, ITERATE_RULE, 1


def improvement_verdict(
    numbers: Mapping[str, Any], better: str, worse: str, key: str, *, tolerant: bool = False
) -> Verdict:
    """The claim "`better` improves `key` (val_acc: higher, losses: lower) over `worse`" on
    the means of the last TAIL epochs (`tail_difference`: paired seeds, or one seed's
    iterate spread). `tolerant`: the weaker claim "`better` is not worse by more than the
    noise" (an insignificant improvement, as the paper says of analytic norm in Fig. 5)."""
    lower = key != "val_acc"
    margin, noise, ma, mb, rule, seeds = tail_difference(numbers, better, worse, key, lower)
    scale, unit = (100, "%") if key == "val_acc" else (1, "")
    spread = f"2 SE over {seeds} seeds" if seeds > 1 else "iterate spread"
    text = (
        f"{key} {better} {scale * ma:.3f}{unit} vs {worse} {scale * mb:.3f}{unit} (margin "
        f"{scale * margin:+.3f}, {spread} {scale * noise:.3f})"
    )
    return decide(margin, noise, text, rule=rule, tolerant=tolerant)


def decide(
    margin: float, noise: float, summary: str, *, rule: str | None, tolerant: bool = False
) -> Verdict:
    """`compare` for the claim "margin > 0"; with `tolerant`, the weaker claim "not worse by
    more than the noise" (holds unless margin < -noise)."""
    if tolerant:
        return Verdict(HOLDS if margin >= -noise else FAILS, summary + ", not worse by more "
                       "than the noise", margin, noise, rule=rule)  # fmt: skip
    return compare(margin, noise, summary, rule=rule)


def diverged_parts(runs: Mapping[str, Mapping[str, Any]]) -> list[Verdict]:
    """An inconclusive part for every run that diverged, in any of its seeds (its
    comparisons rest on the last finite epoch)."""
    return [
        Verdict(INCONCLUSIVE, f"{label} diverged (compared at its last finite epoch)")
        for label, entry in runs.items()
        if entry.get("diverged") or any(s.get("diverged") for s in entry.get("seeds", ()))
    ]
