"""Main paper, Bayesian learning of the scale noise (sections 3.3-3.5): the training curves
of Figs. 6-7 and Table 1, and from the same runs the error-coverage curves (appendix
Fig. A.3) and the robustness to input perturbations (appendix Fig. A.4). The runs and their
evaluations are shared: `cases.evaluated_runs` trains and evaluates each once."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..plots import (
    plot_curves,
    plot_error_coverage,
    plot_grouped_bars,
    plot_learned_noise,
    plot_robustness,
)
from ..runs import RunDir
from ..stats import binomial_se
from .base import Experiment, Lab
from .cases import (
    ANALYTIC_BAYES,
    WEIGHT_BAYES,
    count_test_images,
    evaluate,
    evaluated_runs,
    noise_search,
    profile_settings,
    run_config,
    seeded_summary,
)
from .verdicts import (
    SEED_RULE,
    TOLERANCE_RULE,
    Verdict,
    combine,
    compare,
    decide,
    diverged_parts,
    improvement_verdict,
    paired_seeds,
)

TABLE1_RUNS = (
    "batch", "batch-proj", "weight-proj-bnlike", "analytic-proj-bnlike", WEIGHT_BAYES,
    ANALYTIC_BAYES,
)  # fmt: skip
COUNTERPARTS = {WEIGHT_BAYES: "weight-proj", ANALYTIC_BAYES: "analytic-proj"}
EVALUATED_RUNS = ("none", *TABLE1_RUNS, *COUNTERPARTS.values())

# Test-set NLLs closer than this fraction are not called different (the evaluation keeps
# no per-image values from which a paired standard error could be computed).
NLL_TOLERANCE = 0.02


def strength_area(rows: Sequence[Mapping[str, float]], key: str) -> float:
    """The area under accuracy against perturbation strength `key` (trapezoid rule) divided
    by the strength range: the mean accuracy over the range (main paper Fig. A.4)."""
    points = [(r[key], r["accuracy"]) for r in rows]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))
    return area / (points[-1][0] - points[0][0])


def error_at(curve: Mapping[str, Sequence[float]], coverage: float) -> float:
    """The error of an error-coverage curve at `coverage`, interpolated linearly between
    its points (the first point's error below its coverage)."""
    cs, es = curve["coverage"], curve["error"]
    if coverage <= cs[0]:
        return es[0]
    for (c0, e0), (c1, e1) in pairwise(zip(cs, es, strict=True)):
        if c0 <= coverage <= c1:
            return e0 if c1 == c0 else e0 + (e1 - e0) * (coverage - c0) / (c1 - c0)
    return es[-1]


def coverage_differences(
    better: Mapping[str, Sequence[float]],
    worse: Mapping[str, Sequence[float]],
    n: int,
    *,
    min_coverage: float = 0.1,
) -> list[tuple[float, float, float]]:
    """(c, d, se) at every coverage c >= `min_coverage` of two error-coverage curves on the
    same n test images (same coverages): d = e_worse(c) - e_better(c) and se =
    sqrt((e_w (1 - e_w) + e_b (1 - e_b)) / (c n)), the binomial standard error of the
    difference of two independent error rates on c n images (conservative: the two runs
    are judged on the same images)."""
    rows = []
    for c, eb, ew in zip(better["coverage"], better["error"], worse["error"], strict=True):
        if c >= min_coverage:
            var = max(ew * (1 - ew) + eb * (1 - eb), 1e-12)  # no zero SE at zero error
            rows.append((c, ew - eb, math.sqrt(var / (c * n))))
    return rows


def coverage_verdict(
    better: str,
    worse: str,
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    n: int,
    *,
    min_coverage: float = 0.1,
) -> Verdict:
    """The claim "run `better` has a lower error than `worse` at every coverage" on the
    error-coverage curves `curves[label]` of n test images, at the curves' coverages c >=
    `min_coverage` (below it the kept sets are too small to compare), summarized by one
    statistic before it is tested: the mean error difference over those coverages (the
    difference of the two areas under the curves there) against the mean of the pointwise
    binomial SEs (`coverage_differences`; conservative, since the mean of correlated
    differences varies less than one of them). Testing each of ~90 correlated coverages at
    2 SE would fail a claim on chance alone; the least favourable coverage is reported."""
    rows = coverage_differences(curves[better], curves[worse], n, min_coverage=min_coverage)
    c, d, se = min(rows, key=lambda r: r[1] / r[2])
    lower = sum(r[1] > 0 for r in rows) / len(rows)
    margin, noise = sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)
    text = (
        f"{better} vs {worse}: mean error difference over coverages >= {min_coverage:g} "
        f"{100 * margin:+.2f} points (mean SE {100 * noise:.2f}); error lower at "
        f"{100 * lower:.0f}% of them; least favourable at coverage {c:.2f}: {100 * d:+.2f} "
        f"points (SE {100 * se:.2f})"
    )
    return compare(margin, noise, text)


# ---------------------------------------------------------------- Figs. 6-7, Table 1

# Main paper section 3.5: the learned sigma_S / s per layer of All-CNN on CIFAR-10.
PAPER_SIGMA_S_OVER_S = (0.39, 0.34, 0.18, 0.29, 0.27, 0.29, 0.31, 0.61, 0.024)

FIG6_RUNS = ("weight", "weight-proj", "weight-proj-bnlike", WEIGHT_BAYES)
FIG7_RUNS = ("analytic", "analytic-proj", "analytic-proj-bnlike", ANALYTIC_BAYES)


def mode_name(mode: str) -> str:
    """The display name of a prediction mode: "single" -> "single pass", "mc10" -> "MC-10"."""
    return "single pass" if mode == "single" else f"MC-{mode.removeprefix('mc')}"


class BayesTable(Experiment):
    """Sections 3.3-3.5, Figs. 6-7 and Table 1: learned scale noise (variational Bayes)
    after weight and analytic normalization, against BN and BN-like noise; test metrics
    of the single pass (mean parameters) and of MC averages."""

    name = "table1-bayes"
    runs = tuple(dict.fromkeys((*TABLE1_RUNS, *COUNTERPARTS.values(), *FIG6_RUNS, *FIG7_RUNS)))
    paper = "main"
    figure = "Figs. 6-7, Table 1"
    claim = (
        "Bayesian learning of the scale noise improves the validation accuracy and especially "
        "the validation loss of weight and analytic normalization (with projection); MC "
        "averages over the scale posterior lower the NLL further (CIFAR-10: weight norm val "
        "loss 0.4 single pass, 0.25 MC-10); analytic norm + projection + Bayes reaches BN + "
        "projection's test accuracy (CIFAR-10: 94.4% vs 94.1%) at a much lower NLL (MC-10 "
        "0.22 vs 0.29)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        numbers: dict[str, Any] = {
            "samples": list(profile_settings(lab)["samples"]),
            "noise_search": noise_search(lab),
            "runs": {},
            "table": {},
        }
        for label in self.runs:
            seeds = lab.train_seeds(run_config(lab, label), label=label)
            entry = {**seeded_summary(seeds), "noise": seeds[0].config().noise}
            if label in TABLE1_RUNS or label in COUNTERPARTS.values():
                for run, seed in zip(seeds, entry["seeds"], strict=True):
                    evaluation = evaluate(lab, run)
                    seed["test"] = {mode: {k: e[k] for k in ("accuracy", "nll", "ece")}
                                    for mode, e in evaluation["test"].items()}  # fmt: skip
                    if "temperature_scaled" in evaluation:
                        seed["temperature_scaled"] = evaluation["temperature_scaled"]
                    if run == seeds[0]:
                        entry["test"] = {
                            mode: {k: v for k, v in e.items() if not k.startswith("curve_")}
                            for mode, e in evaluation["test"].items()
                        }  # fmt: skip
                        entry["learned_noise"] = evaluation["learned_noise"]
                row = {"accuracy": entry["test"]["single"]["accuracy"]}
                for mode, e in entry["test"].items():
                    row[f"nll_{mode}"] = e["nll"]
                    row[f"ece_{mode}"] = e["ece"]
                numbers["table"][label] = row
            numbers["runs"][label] = entry
        numbers["test_size"] = count_test_images(RunDir(numbers["runs"]["batch"]["run"]))
        return numbers

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        runs = numbers["runs"]
        figures = [
            plot_curves({k: runs[k]["history"] for k in group if k in runs}, out / name)
            for group, name in ((FIG6_RUNS, "fig6.png"), (FIG7_RUNS, "fig7.png"))
        ]
        bars = {
            label: {mode_name(mode): e["nll"] for mode, e in runs[label]["test"].items()}
            for label in numbers["table"]
        }
        tracked = {k: runs[k]["history"] for k in COUNTERPARTS
                   if k in runs and any("sigma_s_over_s" in r for r in runs[k]["history"])}  # fmt: skip
        if tracked:  # runs trained before the history kept it have only the final values
            figures.append(plot_learned_noise(
                tracked, out / "table1-sigma.png", reference=PAPER_SIGMA_S_OVER_S,
                reference_name="paper, CIFAR-10",
            ))  # fmt: skip
        figures.append(plot_grouped_bars(
            bars, out / "table1-nll.png", ylabel="test NLL",
            title=f"Test NLL: single pass and MC averages ({numbers['test_size']} images)",
        ))  # fmt: skip
        return figures

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        """The paper's claims decide it (Bayes improves WN and AN in val accuracy and loss,
        MC averages lower the test NLL, AN + Bayes reaches BN + projection's accuracy at a
        lower NLL); our goal (MC NLL at most 0.75 x BN + projection's, 0.9 x its
        temperature-scaled NLL) is reported beside it as notes."""
        runs, n = numbers["runs"], numbers["test_size"]
        mc = f"mc{numbers['samples'][0]}"
        parts = []
        for bayes, det in COUNTERPARTS.items():
            parts += [improvement_verdict(runs, bayes, det, key) for key in ("val_acc", "val_loss")]
        for bayes in COUNTERPARTS:
            parts.append(_test_verdict(
                runs, bayes, mc, bayes, "single", "nll", n,
                f"{bayes} test NLL {mode_name(mc)} below the single pass",
            ))  # fmt: skip
        parts.append(_test_verdict(
            runs, ANALYTIC_BAYES, "single", "batch-proj", "single", "accuracy", n,
            f"test acc {ANALYTIC_BAYES} reaches batch-proj's", tolerant=True,
        ))  # fmt: skip
        parts.append(_test_verdict(
            runs, ANALYTIC_BAYES, mc, "batch-proj", "single", "nll", n,
            f"{mode_name(mc)} test NLL {ANALYTIC_BAYES} below batch-proj's single pass",
        ))  # fmt: skip
        notes = [*_search_notes(numbers), *_goal_notes(runs, mc), *_noise_notes(runs)]
        return dataclasses.replace(combine(parts + diverged_parts(runs)), notes=tuple(notes))


def _test_values(entry: Mapping[str, Any], mode: str, key: str) -> dict[int, float]:
    """The test `key` of `mode` of every evaluated seed of a run summary, by seed number."""
    return {s["seed"]: s["test"][mode][key] for s in entry.get("seeds", ()) if "test" in s}


def _test_verdict(
    runs: Mapping[str, Any], a: str, a_mode: str, b: str, b_mode: str, key: str, n: int,
    text: str, *, tolerant: bool = False,
) -> Verdict:  # fmt: skip
    """The claim that run `a` in mode `a_mode` beats `b` in `b_mode` on test `key` (accuracy:
    higher; nll: lower), or with `tolerant` is not worse beyond the noise: paired over
    seeds against 2 SE (SEED_RULE), with one seed against the binomial standard error of
    an accuracy difference on n images or NLL_TOLERANCE of an NLL (TOLERANCE_RULE)."""
    sign = 1.0 if key == "accuracy" else -1.0
    va, vb = _test_values(runs[a], a_mode, key), _test_values(runs[b], b_mode, key)
    paired = paired_seeds(va, vb)
    if paired is not None:
        diff, noise, common = paired
        rule, spread = SEED_RULE, f"2 SE over {len(common)} seeds"
    else:
        x, y = runs[a]["test"][a_mode][key], runs[b]["test"][b_mode][key]
        diff = x - y
        if key == "accuracy":
            noise = math.hypot(binomial_se(x, n), binomial_se(y, n))
        else:
            noise = NLL_TOLERANCE * max(x, y)
        rule, spread = TOLERANCE_RULE, "tolerance"
    margin = sign * diff
    scale = 100 if key == "accuracy" else 1
    summary = (
        f"{text}: {a} {scale * _mean_or(list(va.values()), runs[a]['test'][a_mode][key]):.3f}"
        f" vs {b} {scale * _mean_or(list(vb.values()), runs[b]['test'][b_mode][key]):.3f} (margin "
        f"{scale * margin:+.3f}, {spread} {scale * noise:.3f})"
    )
    return decide(margin, noise, summary, rule=rule, tolerant=tolerant)


def _mean_or(values: Sequence[float], default: float) -> float:
    """The mean over seeds, or `default` (the first seed's value) without two of them."""
    return statistics.fmean(values) if len(values) > 1 else default


def _goal_notes(runs: Mapping[str, Any], mc: str) -> list[str]:
    """Our goal for the proposed method, beside the paper's claims: its MC test NLL at most
    0.75 x BN + projection's single pass and 0.9 x BN + projection's after temperature
    scaling (the NLL a practitioner would get from BN), as mean ratios over seeds."""
    an = _test_values(runs[ANALYTIC_BAYES], mc, "nll")
    bn = _test_values(runs["batch-proj"], "single", "nll")
    notes = []
    if set(an) & set(bn):
        ratios = [an[s] / bn[s] for s in sorted(set(an) & set(bn))]
        notes.append(
            f"our goal: {mode_name(mc)} test NLL {ANALYTIC_BAYES} / batch-proj = "
            f"{sum(ratios) / len(ratios):.2f} over {len(ratios)} seed(s) (goal <= 0.75)"
        )
    scaled = {s["seed"]: s["temperature_scaled"]["test"]["nll"]
              for s in runs["batch-proj"]["seeds"] if "temperature_scaled" in s}  # fmt: skip
    if set(an) & set(scaled):
        ratios = [an[s] / scaled[s] for s in sorted(set(an) & set(scaled))]
        notes.append(
            f"our goal: {mode_name(mc)} test NLL {ANALYTIC_BAYES} / temperature-scaled "
            f"batch-proj = {sum(ratios) / len(ratios):.2f} (goal <= 0.9)"
        )
    else:
        notes.append("our goal against temperature-scaled batch-proj: not evaluated yet")
    return notes


def _search_notes(numbers: Mapping[str, Any]) -> list[str]:
    """Which noise configuration the judged Bayes runs use, and the validation NLL of every
    candidate of the search that chose it (records before the search: nothing)."""
    search = numbers.get("noise_search")
    if not search:
        return []
    found = ", ".join(
        f"{suffix} {c['val_nll']:.3f}" + (" (diverged)" if c["diverged"] else "")
        for suffix, c in search["candidates"].items()
    )
    return [
        f"noise configuration of the -bayes-tuned runs: {search['base']}{search['chosen']}, "
        f"chosen by {search['rule']} (seed {search.get('seed', '?')}; val NLL: {found}); "
        "the validation parts compare a setting chosen on the validation set"
    ]


def _noise_notes(runs: Mapping[str, Any]) -> list[str]:
    """The learned sigma_S / s per layer of each Bayes run (its first seed, at the end of
    training) beside the paper's (PAPER_SIGMA_S_OVER_S)."""
    paper = " ".join(f"{v:.2g}" for v in PAPER_SIGMA_S_OVER_S)
    notes = []
    for label in COUNTERPARTS:
        learned = runs.get(label, {}).get("learned_noise")
        if learned:
            ours = " ".join(f"{r['sigma_s_over_s']:.2g}" for r in learned)
            notes.append(f"learned sigma_S / s per layer, {label}: {ours} (paper: {paper})")
    return notes


# ---------------------------------------------------------------- Fig. A.3

COVERAGE = 0.6  # "close to zero error rates are possible with ... about 60% of the cases"
NEAR_ZERO = 0.01  # error at that coverage we call near zero
AURC_MARGIN = 0.25  # "on par": AURC within this fraction of BN's
REGULARIZED_PAIRS = (
    ("batch", "none"),
    (WEIGHT_BAYES, "weight-proj"),
    (ANALYTIC_BAYES, "analytic-proj"),
)


class ErrorCoverage(Experiment):
    """Appendix A.1, Fig. A.3: error of the kept test images against the kept fraction,
    rejecting by the entropy of the single-pass predictive distribution."""

    name = "figA3-error-coverage"
    runs = EVALUATED_RUNS
    paper = "main"
    figure = "Fig. A.3"
    claim = (
        "Rejecting the test images with the highest predictive entropy (deterministic single "
        "pass), regularization (BN vs no normalization, Bayesian learning vs the same "
        "deterministic normalization) lowers the error at every coverage; analytic norm + "
        "projection + Bayes is on par with BN; the error is close to zero at about 60% "
        "coverage."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        found = evaluated_runs(lab, EVALUATED_RUNS)
        runs = {}
        for label, entry in found.items():
            single = entry["evaluation"]["test"]["single"]
            runs[label] = {
                "single": {k: single[k] for k in ("accuracy", "aurc_entropy", "aurc_max-prob",
                                                  "curve_entropy", "curve_max-prob")},
                "error_at_60": error_at(single["curve_entropy"], COVERAGE),
            }  # fmt: skip
        size = count_test_images(lab.train(run_config(lab, "batch"), label="batch"))
        return {"test_size": size, "coverage": COVERAGE, "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        reports = {label: {"single": e["single"]} for label, e in numbers["runs"].items()}
        return [plot_error_coverage(reports, out / "figA3.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["test_size"]
        curves = {label: e["single"]["curve_entropy"] for label, e in runs.items()}
        parts = [coverage_verdict(better, worse, curves, n) for better, worse in REGULARIZED_PAIRS]
        a_an = runs[ANALYTIC_BAYES]["single"]["aurc_entropy"]
        a_bn = runs["batch"]["single"]["aurc_entropy"]
        rows = coverage_differences(curves["batch"], curves[ANALYTIC_BAYES], n)
        se = sum(r[2] for r in rows) / len(rows)
        parts.append(compare(
            AURC_MARGIN * a_bn - abs(a_an - a_bn), se,
            f"AURC (entropy) {ANALYTIC_BAYES} {100 * a_an:.2f}% vs batch {100 * a_bn:.2f}% "
            f"('on par' = within {100 * AURC_MARGIN:.0f}% of BN's; noise: mean SE of the "
            "error difference over coverages >= 0.1)",
        ))  # fmt: skip
        c = numbers["coverage"]
        at = ", ".join(f"{k} {100 * e['error_at_60']:.2f}%" for k, e in runs.items())
        for label in ("batch", ANALYTIC_BAYES):
            e = runs[label]["error_at_60"]
            parts.append(compare(
                NEAR_ZERO - e, binomial_se(NEAR_ZERO, round(c * n)),
                f"error at {100 * c:.0f}% coverage of {label} {100 * e:.2f}% ('near zero' = "
                f"<= {100 * NEAR_ZERO:.0f}%; all runs: {at})",
            ))  # fmt: skip
        return combine(parts)


# ---------------------------------------------------------------- Fig. A.4

ROBUSTNESS_MARGIN = 0.02  # "does not improve": the area under accuracy vs strength is not
# higher by more than 2 points of accuracy


class Robustness(Experiment):
    """Appendix A.1, Fig. A.4: accuracy of the deterministic single pass under Gaussian
    input noise and FGSM, for the runs of Fig. A.3."""

    name = "figA4-robustness"
    runs = EVALUATED_RUNS
    paper = "main"
    figure = "Fig. A.4"
    claim = (
        "Under Gaussian input noise and the fast gradient sign attack, all models lose "
        "accuracy fast and alike; Bayesian learning does not make the deterministic (mean "
        "parameter) prediction more robust than the same normalization without it."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        found = evaluated_runs(lab, EVALUATED_RUNS)
        runs, images = {}, 0
        for label, entry in found.items():
            robustness = entry["evaluation"]["robustness"]
            images = robustness["images"]
            single = {kind: robustness[kind]["single"] for kind in ("gaussian", "fgsm")}
            runs[label] = {
                **{kind: robustness[kind] for kind in ("gaussian", "fgsm")},
                "area_gaussian": strength_area(single["gaussian"], "std"),
                "area_fgsm": strength_area(single["fgsm"], "eps"),
            }
        return {"images": images, "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        reports = {
            label: {kind: {"single": e[kind]["single"]} for kind in ("gaussian", "fgsm")}
            for label, e in numbers["runs"].items()
        }
        return [plot_robustness(reports, out / "figA4.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["images"]
        parts = []
        for kind in ("gaussian", "fgsm"):
            areas = [e[f"area_{kind}"] for e in runs.values()]
            for bayes, det in COUNTERPARTS.items():
                a, b = runs[bayes][f"area_{kind}"], runs[det][f"area_{kind}"]
                p = (a + b) / 2
                parts.append(compare(
                    ROBUSTNESS_MARGIN - (a - b), math.sqrt(2) * binomial_se(p, n),
                    f"{kind}: mean accuracy over the strengths {bayes} {100 * a:.1f}% vs {det} "
                    f"{100 * b:.1f}% (not higher by more than {100 * ROBUSTNESS_MARGIN:.0f} "
                    f"points; {n} images; all runs {100 * min(areas):.1f}-"
                    f"{100 * max(areas):.1f}%)",
                ))  # fmt: skip
        return combine(parts)


EXPERIMENTS: list[Experiment] = [BayesTable(), ErrorCoverage(), Robustness()]
