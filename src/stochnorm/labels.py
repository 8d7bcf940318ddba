"""Run labels: one short name per training case, parsed and produced here alone (the CLI's
`stochnorm runs`, the reproduction lab and the Makefile all go through these functions).

    label   := NORM ["-proj"] ["-gN"] ["-ghostK"] ["-gdV"] ["-detached"] [NOISE]
    NORM    := none | batch | weight | analytic | population | group | layer
    NOISE   := "-bnlike" | "-bayes" ["-sV" | "-sbn"] ["-fV"] ["-kV"] ["-adam"] | "-bayes-tuned"

- `-proj`: projection of the scale-invariant weights onto ||w|| = 1 (`project`);
- `-gN`: group norm with N groups (`groups`, group norm only);
- `-ghostK`: batch norm's statistics over groups of K samples (`ghost_batch`, batch norm only);
- `-gdV`: gamma decay V (`gamma_decay`); a population-norm label without it has Luo et al.'s
  decay POPULATION_GAMMA_DECAY, `-gd0` none;
- `-detached`: population norm's statistics as constants in the backward pass;
- `-bnlike`: BN-like noise (its per-layer sigmas come from a BN noise measurement, which the
  caller supplies: they are not part of the label);
- `-bayes`: learned scale noise, with `-sV` its initial sigma_S (`-sbn`: per layer, BN's
  measured sigma_U, which the caller supplies like the BN-like sigmas), `-fV` the step
  factor of the noise parameters (`noise_lr_factor`), `-kV` the KL weight (`kl_factor`),
  `-adam` Adam instead of SGD for the noise parameters (`noise_optimizer`);
- `-bayes-tuned`: learned noise in the configuration that a search on the validation set
  chose (`experiments.cases.noise_search`; the caller resolves it, like "-sbn").

Examples: `batch-proj`, `analytic-proj-bayes-f30`, `analytic-proj-bayes-s0.03-f10`,
`population-proj`, `group-proj-g8` (suffixes come in the order above).
"""

from __future__ import annotations

import re
from typing import Any

from .config import TrainConfig
from .errors import ConfigError
from .norms import Norm

POPULATION_GAMMA_DECAY = 1e-4  # population norm's default gamma decay in a label
SIGMA_FROM_BN = "bn"  # parse_label's sigma_s for "-sbn": the caller puts BN's sigma_U there
TUNED = "tuned_noise"  # parse_label's marker for "-bayes-tuned" (no TrainConfig setting)
TUNED_SUFFIX = "-bayes-tuned"

_NUMBER = r"\d+(?:\.\d+)?(?:e-?\d+)?"
_GRAMMAR = re.compile(
    r"^(?P<norm>[a-z]+)(?P<proj>-proj)?(?:-g(?P<groups>\d+))?(?:-ghost(?P<ghost>\d+))?"
    rf"(?:-gd(?P<gd>{_NUMBER}))?"
    r"(?P<detached>-detached)?(?:(?P<bnlike>-bnlike)|(?P<bayes>-bayes)"
    rf"(?:-s(?P<sigma_s>{_NUMBER}|bn))?(?:-f(?P<f>{_NUMBER}))?(?:-k(?P<k>{_NUMBER}))?"
    r"(?P<adam>-adam)?(?P<tuned>-tuned)?)?$"
)


def parse_label(label: str) -> dict[str, Any]:
    """The TrainConfig settings that `label` names (only those it sets; BN-like sigmas are
    left to the caller). Raises ConfigError naming the grammar when `label` does not fit."""
    found = _GRAMMAR.match(label)
    if found is None:
        raise ConfigError(
            f"run label {label!r} does not read as NORM[-proj][-gN][-ghostK][-gdV][-detached]"
            "[-bnlike|-bayes[-sV|-sbn][-fV][-kV][-adam]|-bayes-tuned] (see stochnorm.labels)"
        )
    norm = Norm.parse(found["norm"])
    gd, sigma_s, factor, kl = found["gd"], found["sigma_s"], found["f"], found["k"]
    settings: dict[str, Any] = {"norm": norm.value}
    if found["proj"]:
        settings["project"] = True
    if found["groups"]:
        if norm is not Norm.GROUP:
            raise ConfigError(f"run label {label!r}: -gN sets the groups of group norm only")
        settings["groups"] = int(found["groups"])
    if found["ghost"]:
        if norm is not Norm.BATCH:
            raise ConfigError(f"run label {label!r}: -ghostK applies to batch norm only")
        settings["ghost_batch"] = int(found["ghost"])
    if gd is not None:
        settings["gamma_decay"] = float(gd)
    elif norm is Norm.POPULATION:
        settings["gamma_decay"] = POPULATION_GAMMA_DECAY
    if found["detached"]:
        if norm is not Norm.POPULATION:
            raise ConfigError(f"run label {label!r}: -detached applies to population norm only")
        settings["population_gradient"] = False
    if found["bnlike"]:
        settings["noise"] = "bn-like"
    if found["bayes"]:
        settings["noise"] = "bayes"
        if found["tuned"]:
            if any(found[k] for k in ("sigma_s", "f", "k", "adam")):
                raise ConfigError(
                    f"run label {label!r}: -tuned takes its noise settings from the search, "
                    "so -s, -f, -k and -adam cannot come with it"
                )
            settings[TUNED] = True
        if sigma_s == SIGMA_FROM_BN:
            settings["sigma_s"] = SIGMA_FROM_BN
        elif sigma_s is not None:
            settings["sigma_s"] = float(sigma_s)
        for key, text in (("noise_lr_factor", factor), ("kl_factor", kl)):
            if text is not None:
                settings[key] = float(text)
        if found["adam"]:
            settings["noise_optimizer"] = "adam"
    return settings


def without_search(label: str) -> dict[str, Any]:
    """`parse_label(label)` for a caller that has no noise search to resolve "-bayes-tuned"
    with (only the reproduction lab has one): such a label is a ConfigError that says so."""
    settings = parse_label(label)
    if settings.get(TUNED):
        raise ConfigError(
            f"{label}: the tuned noise comes from the noise search of `stochnorm reproduce "
            "table1-bayes`; name its settings instead (e.g. -bayes-sbn-adam)"
        )
    return settings


def needs_bn_noise(settings: dict[str, Any]) -> bool:
    """Whether parsed label settings take values from a BN noise measurement (BN-like noise,
    or learned noise starting at BN's level)."""
    return settings.get("noise") == "bn-like" or settings.get("sigma_s") == SIGMA_FROM_BN


def with_bn_noise(settings: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """`settings` with what they take from the summary of a BN noise measurement
    (`stochnorm diagnose bn-noise`): the per-layer sigma_V, sigma_U of BN-like noise, or
    sigma_U as the initial sigma_S of "-sbn"."""
    if "sigma_v" not in summary or "sigma_u" not in summary:
        raise ConfigError("no per-layer sigma_v/sigma_u in the BN noise summary")
    sigma_v, sigma_u = tuple(summary["sigma_v"]), tuple(summary["sigma_u"])
    if settings.get("noise") == "bn-like":
        return {**settings, "sigma_v": sigma_v, "sigma_u": sigma_u}
    if settings.get("sigma_s") == SIGMA_FROM_BN:
        return {**settings, "sigma_s": sigma_u}
    return settings


def format_label(settings: dict[str, Any]) -> str:
    """The label of a configuration's settings (a TrainConfig's `to_dict()` or the output
    of `parse_label`): the inverse of `parse_label` on the settings a label can name
    ("-bayes-tuned" names none: its settings, once resolved, get their own label)."""
    norm = Norm.parse(settings.get("norm", Norm.BATCH.value))
    parts = [norm.value]
    if settings.get("project"):
        parts.append("proj")
    defaults = TrainConfig().to_dict()
    if norm is Norm.GROUP and settings.get("groups", defaults["groups"]) != defaults["groups"]:
        parts.append(f"g{settings['groups']}")
    if settings.get("ghost_batch") is not None:
        parts.append(f"ghost{settings['ghost_batch']}")
    gd = settings.get("gamma_decay", 0.0)
    default_gd = POPULATION_GAMMA_DECAY if norm is Norm.POPULATION else 0.0
    if gd != default_gd:
        parts.append(f"gd{gd:g}")
    if norm is Norm.POPULATION and settings.get("population_gradient") is False:
        parts.append("detached")
    noise = settings.get("noise")
    if noise == "bn-like":
        parts.append("bnlike")
    elif noise == "bayes":
        parts.append("bayes")
        sigma_s = settings.get("sigma_s", defaults["sigma_s"])
        if sigma_s == SIGMA_FROM_BN or isinstance(sigma_s, list | tuple):
            parts.append("sbn")
        elif sigma_s != defaults["sigma_s"]:
            parts.append(f"s{sigma_s:g}")
        for key, letter in (("noise_lr_factor", "f"), ("kl_factor", "k")):
            value = settings.get(key, defaults[key])
            if value != defaults[key]:
                parts.append(f"{letter}{value:g}")
        if settings.get("noise_optimizer", "sgd") == "adam":
            parts.append("adam")
    return "-".join(parts)
