"""Main paper, section 4 and appendix A.2 (Fig. 9): segmentation of cells with the 11-layer
fully convolutional network (`models.FCN`), few large images, batches of one or two crops,
heavy augmentation, Adam, and learned scale noise whose KL term is weighted per classified
pixel.

The KL weight (SPEC section 10): the loss is the mean over the batch's pixels of -log p plus
`kl_factor * KL / N_pix`, N_pix the number of pixels of the training images (`train.py`
takes |D| as the number of classified examples), with the paper's kl_factor 0.1 ("the
augmentation is worth 10 examples"); kl_factor 1 is trained beside it and reported.

Profiles: "full" is the paper's setting (DIC-HeLa, width 1, 3000 epochs with
gamma^1000 = 0.1: a GPU matter); "quick" fits 2 CPU cores (the nuclei image that the
stardist wheel ships, region split 70/30, width 1/2, random 96x96 crops, batch 2, 60 epochs
with gamma^20 = 0.1, an epoch covering the training pixels once; about 5 s an epoch on 2
CPU cores); "demo" is a smoke test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import metrics
from ..evaluation import load_run
from ..labels import without_search
from ..plots import plot_curves, plot_image_rows
from ..prediction import predict_probs
from ..stats import mean_and_error
from .base import Experiment, Lab, per_profile
from .verdicts import INCONCLUSIVE, SEED_RULE, Verdict, combine, compare, paired_seeds

SETTINGS: dict[str, dict[str, Any]] = {
    "demo": dict(dataset="nuclei", model="fcn", width=0.125, subset=0.2, crop_size=64,
                 batch_size=2, optimizer="adam", epochs=2, lr_decay_epochs=1,
                 eval_train_size=0),
    "quick": dict(dataset="nuclei", model="fcn", width=0.5, subset=1.0, crop_size=96,
                  batch_size=2, optimizer="adam", epochs=60, lr_decay_epochs=20,
                  eval_train_size=0),
    "full": dict(dataset="dic-hela", model="fcn", width=1.0, subset=1.0, crop_size=256,
                 batch_size=2, optimizer="adam", epochs=3000, lr_decay_epochs=1000,
                 eval_train_size=0),
}  # fmt: skip

PROPOSED = "analytic-proj-bayes-k0.1"  # the paper's method, KL 0.1 per pixel
BASELINES = ("batch", "analytic-proj")  # what the claim compares it with
# Reported beside: weight norm, GroupNorm with 4 groups (the FCN is narrow: Wu & He's 32
# groups would make every layer of 32 channels or fewer an instance norm), and the proposed
# method at KL factor 1.
OTHERS = ("weight-proj", "group-g4", "analytic-proj-bayes")
LABELS = {"demo": (*BASELINES, PROPOSED), "quick": (*BASELINES, PROPOSED, *OTHERS)}
SAMPLES = {"demo": 2, "quick": 10, "full": 10}  # MC passes of a model with noise
METRIC = "iou"  # the claim's measure of a segmentation: foreground IoU on validation
REPORTED = ("iou", "dice", "nll", "accuracy")


def run_config(lab: Lab, label: str):
    return lab.config(**{**per_profile(lab, SETTINGS), **without_search(label)})


def held_out_temperature(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Post-hoc temperature scaling of per-pixel predictions `probs` [N, C, H, W] (labels
    [N, H, W]) scored out of sample: the left and right halves of the images (by columns)
    each get the temperature fitted on the other half. Returns the NLL over all pixels of
    the scaled probabilities and the two temperatures. One temperature fitted and scored on
    the same pixels would flatter the scaled model (slightly: one parameter, many pixels,
    but neighbouring pixels are far from independent)."""
    half = probs.shape[-1] // 2
    halves = (slice(None, half), slice(half, None))
    losses, temperatures = [], []
    for fit, score in (halves, halves[::-1]):
        t = metrics.fit_temperature(probs[..., fit], labels[..., fit])
        scaled = metrics.temperature_scale(probs[..., score], t)
        losses.append(metrics.nll(scaled, labels[..., score]) * labels[..., score].numel())
        temperatures.append(t)
    return {"nll": sum(losses) / labels.numel(), "temperatures": temperatures}


class Fig9Segmentation(Experiment):
    name = "fig9-segmentation"
    paper = "main"
    figure = "Fig. 9"
    claim = (
        "On cell segmentation with a deep fully convolutional network, Bayesian learning "
        "with analytic normalization (KL factor 0.1 per classified pixel) noticeably improves "
        "validation segmentation over batch normalization and over analytic normalization "
        "alone"
    )
    runs = ()  # trained here: the settings are not the classification cases'

    def run(self, lab: Lab) -> dict[str, Any]:
        samples = per_profile(lab, SAMPLES)
        out: dict[str, Any] = {"settings": per_profile(lab, SETTINGS), "samples": samples,
                               "methods": {}}  # fmt: skip
        for label in per_profile(lab, LABELS):  # the demo: the claim's three only
            runs = lab.train_seeds(run_config(lab, label), label=f"seg-{label}")
            seeds = []
            for run in runs:
                found = run.metrics()
                evaluation = lab.evaluate(run, (samples,), robustness_size=0)
                mode = f"mc{samples}" if evaluation["samples"] else "single"
                val = evaluation["test"][mode]  # the segmentation sets' test split is val
                cfg, data, model = load_run(run.path, device=lab.device)
                single = predict_probs(model, data.val, batch_size=cfg.eval_batch_size,
                                       device=lab.device)  # fmt: skip
                seeds.append({
                    "seed": found["config"]["seed"], "run": str(run.path), "mode": mode,
                    "diverged": found.get("diverged", False),
                    "val": {k: val[k] for k in REPORTED},
                    "single": {k: evaluation["metrics"]["val"][k] for k in REPORTED},
                    "temperature_scaled": held_out_temperature(single, data.val.y),
                    **({"mc_batchnorm": {k: evaluation["mc_batchnorm"][f"mc{samples}"][k]
                                         for k in REPORTED}}
                       if "mc_batchnorm" in evaluation else {}),
                    "train_seconds": found.get("train_seconds"),
                    "history": [{k: row[k] for k in ("epoch", "train_loss", "val_loss", "val_acc")
                                 if k in row} for row in found["history"]],
                })  # fmt: skip
            out["methods"][label] = {"lr": runs[0].config().lr, "seeds": seeds}
        return out

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        out = Path(out)
        rows: dict[str, list[torch.Tensor]] = {}
        for label, method in numbers["methods"].items():
            first = method["seeds"][0]
            cfg, data, model = load_run(first["run"])
            samples = numbers["samples"] if first["mode"] != "single" else 0
            g = torch.Generator().manual_seed(0)
            probs = predict_probs(model, data.val, samples=samples, generator=g,
                                  batch_size=cfg.eval_batch_size)[0]  # fmt: skip
            image = data.val.x[0]
            low, high = image.min(), image.max()
            entropy = metrics.entropy(probs.movedim(0, -1).reshape(-1, probs.shape[0]))
            entropy = entropy.reshape(probs.shape[1:]) / torch.log(torch.tensor(probs.shape[0]))
            rows[label] = [(image - low) / (high - low).clamp_min(1e-12),
                           data.val.y[0][None].float(), probs.argmax(0)[None].float(),
                           entropy[None].float()]  # fmt: skip
        columns = ["input", "truth", "prediction", "entropy / ln C"]
        figure = plot_image_rows(rows, out / "fig9_segmentation.png", columns=columns)
        curves = plot_curves(
            {label: m["seeds"][0]["history"] for label, m in numbers["methods"].items()},
            out / "fig9_curves.png",
        )
        return [figure, curves]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        methods = numbers["methods"]
        parts = [self._improves(methods, PROPOSED, other) for other in BASELINES]
        notes = [self._table_line(label, m) for label, m in methods.items()]
        notes += self._scaled_lines(methods)
        notes += self._mc_batchnorm_lines(methods, numbers["samples"])
        verdict = combine(parts)
        return Verdict(verdict.status, verdict.summary, parts=verdict.parts, notes=tuple(notes))

    @staticmethod
    def _values(method: dict[str, Any], key: str) -> dict[int, float]:
        return {s["seed"]: s["val"][key] for s in method["seeds"] if not s["diverged"]}

    def _improves(self, methods: dict[str, Any], better: str, worse: str) -> Verdict:
        a, b = self._values(methods[better], METRIC), self._values(methods[worse], METRIC)
        paired = paired_seeds(a, b)
        if paired is None:
            return Verdict(INCONCLUSIVE, f"{better} vs {worse}: fewer than 2 seeds in common",
                           rule=SEED_RULE)  # fmt: skip
        margin, noise, common = paired
        text = (
            f"val IoU {better} ({methods[better]['seeds'][0]['mode']}) "
            f"{sum(a[s] for s in common) / len(common):.4f} vs {worse} "
            f"{sum(b[s] for s in common) / len(common):.4f} (paired difference {margin:+.4f}, "
            f"2 SE over {len(common)} seeds {noise:.4f})"
        )
        return compare(margin, noise, text, rule=SEED_RULE)

    @staticmethod
    def _scaled_lines(methods: dict[str, Any]) -> list[str]:
        """The NLL a practitioner gets from each model's single pass after temperature
        scaling (`held_out_temperature`), and the proposed method's NLL against BN's so
        scaled, paired over seeds (records before it was measured: nothing)."""
        scaled = {
            label: {s["seed"]: s["temperature_scaled"]["nll"] for s in m["seeds"]
                    if "temperature_scaled" in s and not s["diverged"]}
            for label, m in methods.items()
        }  # fmt: skip
        lines = []
        for label, values in scaled.items():
            if values:
                mean, se = mean_and_error(list(values.values()))
                lines.append(f"{label} single pass, temperature-scaled (fitted on the other "
                             f"half of the validation region): NLL {mean:.4f} ± {se:.4f}")  # fmt: skip
        if PROPOSED in methods and scaled.get("batch"):
            proposed = Fig9Segmentation._values(methods[PROPOSED], "nll")
            paired = paired_seeds(proposed, scaled["batch"])
            if paired is not None:
                margin, noise, common = paired
                lines.append(
                    f"NLL {PROPOSED} ({methods[PROPOSED]['seeds'][0]['mode']}) minus "
                    f"temperature-scaled batch: {margin:+.4f} (2 SE over {len(common)} seeds "
                    f"{noise:.4f}; negative: the proposed method's is lower)"
                )
        return lines

    @staticmethod
    def _mc_batchnorm_lines(methods: dict[str, Any], samples: int) -> list[str]:
        """BN as MC batch norm (K passes, each with the statistics of a batch of random
        training crops: `evaluation.mc_batchnorm_report`), and the proposed method against
        it, paired over seeds (records before it was measured: nothing)."""
        seeds = [s for s in methods.get("batch", {}).get("seeds", [])
                 if "mc_batchnorm" in s and not s["diverged"]]  # fmt: skip
        if not seeds:
            return []
        summary = _mean_and_error_text([s["mc_batchnorm"] for s in seeds])
        lines = [f"batch as MC batch norm (MC-{samples}, statistics of random training crops, "
                 f"{len(seeds)} seeds): {summary}"]  # fmt: skip
        if PROPOSED in methods:
            for key in ("iou", "nll"):
                paired = paired_seeds(
                    Fig9Segmentation._values(methods[PROPOSED], key),
                    {s["seed"]: s["mc_batchnorm"][key] for s in seeds},
                )
                if paired is not None:
                    margin, noise, common = paired
                    lines.append(
                        f"{key} {PROPOSED} minus batch MC batch norm: {margin:+.4f} (2 SE over "
                        f"{len(common)} seeds {noise:.4f})"
                    )
        return lines

    @staticmethod
    def _table_line(label: str, method: dict[str, Any]) -> str:
        summary = _mean_and_error_text([s["val"] for s in method["seeds"] if not s["diverged"]])
        mode = method["seeds"][0]["mode"]
        return f"{label} ({mode}, {len(method['seeds'])} seeds, mean ± SE): {summary}"


def _mean_and_error_text(rows: list[dict[str, float]]) -> str:
    """The mean ± SE of each REPORTED metric over the seeds' `rows` (no rows: empty)."""
    if not rows:
        return ""
    parts = []
    for key in REPORTED:
        mean, se = mean_and_error([r[key] for r in rows])
        parts.append(f"{key} {mean:.4f} ± {se:.4f}")
    return ", ".join(parts)


EXPERIMENTS = [Fig9Segmentation()]
