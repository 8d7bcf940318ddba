"""Main paper, Bayesian learning of the scale noise (sections 3.3-3.5): the training curves
of Figs. 6-7 and Table 1, and from the same runs the error-coverage curves (appendix
Fig. A.3) and the robustness to input perturbations (appendix Fig. A.4). The runs and their
evaluations are shared: `cases.evaluated_runs` trains and evaluates each once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..plots import plot_curves, plot_error_coverage, plot_grouped_bars, plot_robustness
from ..stats import binomial_se, iterate_spread, tail_mean
from .base import Experiment, Lab
from .cases import (
    count_test_images,
    evaluate,
    evaluated_runs,
    profile_settings,
    run_config,
    run_summary,
    trained_runs,
)
from .verdicts import (
    FAILS,
    TAIL,
    Verdict,
    combine,
    compare,
    diverged_parts,
    improvement_verdict,
)

TABLE1_RUNS = (
    "batch", "batch-proj", "weight-proj-bnlike", "analytic-proj-bnlike", "weight-proj-bayes",
    "analytic-proj-bayes",
)  # fmt: skip
COUNTERPARTS = {"weight-proj-bayes": "weight-proj", "analytic-proj-bayes": "analytic-proj"}
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
    `min_coverage` (below it the kept sets are too small to compare): it does not hold if
    the error of `better` is higher by more than 2 SE anywhere (`coverage_differences`);
    otherwise it is the mean difference against the mean SE (`compare`)."""
    rows = coverage_differences(curves[better], curves[worse], n, min_coverage=min_coverage)
    c, d, se = min(rows, key=lambda r: r[1] / r[2])
    lower = sum(r[1] > 0 for r in rows) / len(rows)
    margin, noise = sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)
    text = (
        f"{better} vs {worse}: error lower at {100 * lower:.0f}% of coverages >= "
        f"{min_coverage:g}, mean difference {100 * margin:+.2f} points (mean SE "
        f"{100 * noise:.2f}); least favourable at coverage {c:.2f}: {100 * d:+.2f} points "
        f"(SE {100 * se:.2f})"
    )
    if d < -2 * se:
        return Verdict(FAILS, text + ", worse by more than 2 SE there", margin, noise)
    return compare(margin, noise, text)


# ---------------------------------------------------------------- Figs. 6-7, Table 1

FIG6_RUNS = ("weight", "weight-proj", "weight-proj-bnlike", "weight-proj-bayes")
FIG7_RUNS = ("analytic", "analytic-proj", "analytic-proj-bnlike", "analytic-proj-bayes")


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
        "0.22 vs 0.29; our target: at most 0.75 times BN + projection's)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        runs = trained_runs(lab, self.runs)
        numbers: dict[str, Any] = {
            "samples": list(profile_settings(lab)["samples"]),
            "test_size": count_test_images(runs["batch"]),
            "runs": {},
            "table": {},
        }
        for label, run in runs.items():
            entry = {**run_summary(run), "noise": run.config().noise}
            if label in TABLE1_RUNS or label in COUNTERPARTS.values():
                evaluation = evaluate(lab, run)
                test = {mode: {k: v for k, v in e.items() if not k.startswith("curve_")}
                        for mode, e in evaluation["test"].items()}  # fmt: skip
                entry.update(test=test, learned_noise=evaluation["learned_noise"])
                row = {"accuracy": test["single"]["accuracy"]}
                for mode, e in test.items():
                    row[f"nll_{mode}"] = e["nll"]
                    row[f"ece_{mode}"] = e["ece"]
                numbers["table"][label] = row
            numbers["runs"][label] = entry
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
        figures.append(plot_grouped_bars(
            bars, out / "table1-nll.png", ylabel="test NLL",
            title=f"Test NLL: single pass and MC averages ({numbers['test_size']} images)",
        ))  # fmt: skip
        return figures

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["test_size"]
        mc = f"mc{numbers['samples'][0]}"
        parts = []
        for bayes, det in COUNTERPARTS.items():
            parts += [improvement_verdict(runs, bayes, det, key) for key in ("val_acc", "val_loss")]
        for bayes in COUNTERPARTS:
            test = runs[bayes]["test"]
            single, sampled = test["single"]["nll"], test[mc]["nll"]
            others = ", ".join(f"{mode_name(m)} {e['nll']:.3f}" for m, e in test.items())
            parts.append(compare(
                single - sampled, NLL_TOLERANCE * single,
                f"{bayes} test NLL {others} (tolerance {100 * NLL_TOLERANCE:.0f}% of the "
                "single pass)",
            ))  # fmt: skip
        an, bn = runs["analytic-proj-bayes"]["test"], runs["batch-proj"]["test"]["single"]
        acc_an, acc_bn = an["single"]["accuracy"], bn["accuracy"]
        parts.append(compare(
            acc_an - acc_bn, math.hypot(binomial_se(acc_an, n), binomial_se(acc_bn, n)),
            f"target: test acc analytic-proj-bayes {100 * acc_an:.2f}% >= batch-proj "
            f"{100 * acc_bn:.2f}% (noise: binomial SE of the difference on {n} images)",
        ))  # fmt: skip
        ratio = an[mc]["nll"] / bn["nll"]
        spread = max(
            iterate_spread(runs[k]["history"], "val_loss", TAIL)
            / tail_mean(runs[k]["history"], "val_loss", TAIL)
            for k in ("analytic-proj-bayes", "batch-proj")
        )
        parts.append(compare(
            0.75 - ratio, max(NLL_TOLERANCE, spread) * ratio,
            f"target: {mode_name(mc)} test NLL analytic-proj-bayes {an[mc]['nll']:.3f} <= 0.75 x "
            f"batch-proj {bn['nll']:.3f} (ratio {ratio:.2f}; noise: the larger of "
            f"{100 * NLL_TOLERANCE:.0f}% and the relative iterate spread of the val loss)",
        ))  # fmt: skip
        return combine(parts + diverged_parts(runs))


# ---------------------------------------------------------------- Fig. A.3

COVERAGE = 0.6  # "close to zero error rates are possible with ... about 60% of the cases"
NEAR_ZERO = 0.01  # error at that coverage we call near zero
AURC_MARGIN = 0.25  # "on par": AURC within this fraction of BN's
REGULARIZED_PAIRS = (
    ("batch", "none"),
    ("weight-proj-bayes", "weight-proj"),
    ("analytic-proj-bayes", "analytic-proj"),
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
        a_an = runs["analytic-proj-bayes"]["single"]["aurc_entropy"]
        a_bn = runs["batch"]["single"]["aurc_entropy"]
        rows = coverage_differences(curves["batch"], curves["analytic-proj-bayes"], n)
        se = sum(r[2] for r in rows) / len(rows)
        parts.append(compare(
            AURC_MARGIN * a_bn - abs(a_an - a_bn), se,
            f"AURC (entropy) analytic-proj-bayes {100 * a_an:.2f}% vs batch {100 * a_bn:.2f}% "
            f"('on par' = within {100 * AURC_MARGIN:.0f}% of BN's; noise: mean SE of the "
            "error difference over coverages >= 0.1)",
        ))  # fmt: skip
        c = numbers["coverage"]
        at = ", ".join(f"{k} {100 * e['error_at_60']:.2f}%" for k, e in runs.items())
        for label in ("batch", "analytic-proj-bayes"):
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
