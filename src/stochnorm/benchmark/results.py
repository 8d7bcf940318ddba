"""The benchmark's numbers: every cell trained and measured, gathered per regime, method and
prediction mode over seeds, and each stochnorm method compared with the strongest baseline
by paired seed differences (experiments.verdicts.SEED_RULE).

An *entry* is a method with one of its prediction modes ("batch", "batch MC-BN-10",
"analytic-proj-bayes-f30 MC-10", ...). Seed k of one entry is paired with seed k of another
(same data order, augmentation and initialization draws).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..experiments.base import runs_hardware
from ..labels import parse_label
from ..provenance import provenance
from ..stats import mean_and_error
from .grid import BASELINES, PRIMARY, Benchmark
from .measure import DEFAULT_SIZES, Sizes, measure_run, saved_measurement

# name -> (path into a mode's measurements, higher is better, heading)
METRICS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "accuracy": (("test", "accuracy"), True, "test acc %"),
    "nll": (("test", "nll"), False, "NLL"),
    "nll_ts": (("test_ts", "nll"), False, "NLL (T-scaled)"),
    "ece": (("test", "ece"), False, "ECE"),
    "ece_ts": (("test_ts", "ece"), False, "ECE (T-scaled)"),
    "brier": (("test", "brier"), False, "Brier"),
    "aurc": (("test", "aurc"), False, "AURC %"),
    "temperature": (("temperature",), False, "T"),
    "shift_accuracy": (("shift_mean", "accuracy"), True, "corrupted acc %"),
    "shift_nll_ts": (("shift_mean", "nll_ts"), False, "corrupted NLL (T-scaled)"),
    "ood_auroc_maxprob": (("ood", "max-prob", "auroc"), True, "digits AUROC (max-prob)"),
    "ood_auroc_entropy": (("ood", "entropy", "auroc"), True, "digits AUROC (entropy)"),
    "ood_auroc_mi": (("ood", "mutual-information", "auroc"), True, "digits AUROC (MI)"),
    "ood_fpr95_entropy": (("ood", "entropy", "fpr95"), False, "digits FPR@95 (entropy)"),
}
# The comparisons the answer rests on.
DECIDING = ("accuracy", "nll_ts", "nll", "shift_accuracy", "ood_auroc_entropy")


def entry_name(method: str, mode: str) -> str:
    if mode == "single":
        return method
    if mode.startswith("mcbn"):
        return f"{method} MC-BN-{mode[4:]}"
    return f"{method} MC-{mode[2:]}"


def _lookup(measured: Mapping[str, Any], path: Sequence[str]) -> float | None:
    value: Any = measured
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value)


def collect(
    bench: Benchmark, *, samples: int = 10, sizes: Sizes = DEFAULT_SIZES, train: bool = True
) -> dict[str, Any]:
    """Train (if need be; with `train` False only the finished cells are taken) and measure
    every cell of `bench`; returns the benchmark's numbers (plain JSON): per regime, method
    and entry the per-seed values of every metric, and "missing", the cells not yet run."""
    cells: dict[str, dict[str, Any]] = {}
    paths, missing, unusable = [], [], []
    for cell in bench.cells():
        run = bench.run(cell) if train else bench.finished(cell)
        if run is None:
            missing.append(cell.name)
            continue
        paths.append(run.path)
        metrics = run.metrics()
        measured = saved_measurement(run, samples=samples, sizes=sizes)
        if measured is None and not run.checkpoint_path.exists():
            why = "diverged before its first epoch ended" if metrics.get("diverged") else (
                "no checkpoint here to measure it from")  # fmt: skip
            unusable.append(f"{cell.name} ({why})")
            continue
        if measured is None:
            measured = measure_run(run, samples=samples, sizes=sizes,
                                   device=bench.device, progress=bench.progress)  # fmt: skip
        method = cells.setdefault(cell.regime.name, {}).setdefault(cell.method, {
            "lr": run.config().lr, "runs": [], "train_seconds": [], "diverged": [],
            "entries": {},
        })  # fmt: skip
        method["runs"].append(str(run.path))
        method["train_seconds"].append(metrics.get("train_seconds"))
        if metrics.get("diverged"):
            method["diverged"].append(cell.seed)
        for mode, values in measured["modes"].items():
            entry = method["entries"].setdefault(entry_name(cell.method, mode), {"seeds": []})
            entry["seeds"].append(cell.seed)
            for name, (path, _, _) in METRICS.items():  # aligned with "seeds", None if absent
                entry.setdefault(name, [None] * (len(entry["seeds"]) - 1))
                entry[name].append(_lookup(values, path))
            entry.setdefault("shift", []).append(values["shift"])
            entry.setdefault("shift_clean", []).append(values["shift_clean"])
            entry.setdefault("reliability_ts", []).append(values["reliability_ts"])
    seconds = [t for r in cells.values() for m in r.values() for t in m["train_seconds"]]
    return {
        "lr_check": bench.lr_check(search=train),
        "profile": bench.profile,
        "seeds": bench.seeds,
        "samples": samples,
        "sizes": asdict(sizes),
        "regimes": [
            {
                "name": r.name,
                "title": r.title,
                "batch_size": r.batch_size,
                "ghost_batch": r.ghost_batch,
                "methods": list(r.methods),
                "pruned": r.pruned,
            }
            for r in bench.regimes
        ],  # fmt: skip
        "baselines": list(BASELINES),
        "cells": cells,
        "missing": missing,
        "unusable": unusable,
        "train_hours": sum(t for t in seconds if t is not None) / 3600,
        "untimed_runs": sum(t is None for t in seconds),
        "runs_trained_on": runs_hardware(paths),
        "provenance": provenance(bench.device),
    }


def batch_independent(method: str) -> bool:
    """Whether `method` trains the same whatever the other images of its batch (not batch
    norm, not population norm, whose gradient and estimates follow the batch)."""
    return parse_label(method)["norm"] not in ("batch", "population")


def regime_cells(numbers: Mapping[str, Any], regime: str) -> dict[str, Any]:
    """The methods of `regime` by name; a data-parallel regime (ghost batches) also has the
    batch-independent methods, whose runs are those of the regime of the same batch size
    without ghost batches."""
    info = {r["name"]: r for r in numbers["regimes"]}.get(regime)
    if info is None:
        return {}
    cells = dict(numbers["cells"].get(regime, {}))
    if info["ghost_batch"]:
        for other in numbers["regimes"]:
            if other["batch_size"] == info["batch_size"] and not other["ghost_batch"]:
                shared = numbers["cells"].get(other["name"], {})
                independent = {m: v for m, v in shared.items() if batch_independent(m)}
                cells = {**independent, **cells}
    return cells


def entries(numbers: Mapping[str, Any], regime: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every entry of `regime`: name -> (its method, its per-seed values)."""
    return {name: (method, entry)
            for method, found in regime_cells(numbers, regime).items()
            for name, entry in found["entries"].items()}  # fmt: skip


def values(entry: Mapping[str, Any], metric: str) -> dict[int, float]:
    """The finite values of `metric` of an entry by seed (a missing or non-finite value of a
    seed is left out, never counted as zero)."""
    found = zip(entry["seeds"], entry.get(metric) or [None] * len(entry["seeds"]), strict=True)
    return {seed: v for seed, v in found if v is not None and math.isfinite(v)}


def seed_mean(entry: Mapping[str, Any], metric: str) -> float:
    found = list(values(entry, metric).values())
    return mean_and_error(found)[0] if found else math.nan


def paired(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Entry a minus entry b in `metric`, paired by seed, with the verdict of verdicts.SEED_RULE."""
    higher = METRICS[metric][1]
    va, vb = values(a, metric), values(b, metric)
    common = sorted(set(va) & set(vb))
    diffs = [va[s] - vb[s] for s in common]
    if not diffs:
        return {"difference": math.nan, "se": math.nan, "pairs": 0, "verdict": "inconclusive"}
    d, se = mean_and_error(diffs)
    good = d if higher else -d
    if len(diffs) < 2:
        verdict = "inconclusive"
    elif good > 2 * se:
        verdict = "better"
    elif good < -2 * se:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    return {"difference": d, "se": se, "pairs": len(diffs), "verdict": verdict}


def best(found: Mapping[str, tuple[str, Mapping[str, Any]]], metric: str) -> str | None:
    """The entry of `found` with the best seed mean of `metric` (None if none has it)."""
    higher = METRICS[metric][1]
    scored = {n: seed_mean(e, metric) for n, (_, e) in found.items()}
    scored = {n: v for n, v in scored.items() if math.isfinite(v)}
    if not scored:
        return None
    return (max if higher else min)(scored, key=scored.get)


def by_side(
    numbers: Mapping[str, Any], found: Mapping[str, tuple[str, Any]]
) -> tuple[dict[str, tuple[str, Any]], dict[str, tuple[str, Any]]]:
    """`entries` split into the baselines' and stochnorm's (by the entry's method)."""
    base = {n: v for n, v in found.items() if v[0] in numbers["baselines"]}
    return base, {n: v for n, v in found.items() if n not in base}


def primary_entry(numbers: Mapping[str, Any], regime: str) -> str | None:
    """The entry named in advance for `regime`: the paper's method (PRIMARY) in its sampling
    mode (MC-K), else its single pass."""
    found = entries(numbers, regime)
    sampled = entry_name(PRIMARY, f"mc{numbers['samples']}")
    return sampled if sampled in found else PRIMARY if PRIMARY in found else None


def comparisons(numbers: Mapping[str, Any], regime: str) -> dict[str, list[dict[str, Any]]]:
    """Per deciding metric, against the best baseline entry of `regime` (by seed mean): the
    entry named in advance (`primary_entry`, the confirmatory comparison) and the best of
    all stochnorm entries (exploratory: chosen after seeing the means, it favours stochnorm,
    the more so the more entries; "searched" says how many)."""
    found = entries(numbers, regime)
    base, ours = by_side(numbers, found)
    primary = primary_entry(numbers, regime)
    out: dict[str, list[dict[str, Any]]] = {}
    for metric in DECIDING:
        b, o = best(base, metric), best(ours, metric)
        if b is None:
            continue
        rows = []
        for kind, name in (("named in advance", primary), (f"best of {len(ours)}", o)):
            if name is not None and (kind == "named in advance" or name != primary):
                rows.append({"kind": kind, "baseline": b, "stochnorm": name,
                             **paired(found[name][1], found[b][1], metric)})  # fmt: skip
        out[metric] = rows
    return out
