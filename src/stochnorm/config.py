"""One frozen configuration per training run, and the named profiles that fill it in."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .data import Dataset, check_name
from .errors import ConfigError
from .models import check_model_name
from .norms import DEFAULT_GROUPS, Norm


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (main paper, appendix A.1 protocol).

    `model`: a registered model ("allcnn", "resnet20") or a user's factory
    "package.module:function" (see `stochnorm.models`); `width` and `padding` size the
    registered models. `groups`: group norm's number of groups G (Wu & He's 32; a layer whose
    channel count G does not divide uses gcd(C, G)).

    The learning rate in epoch k (from 0) is `lr * gamma**k`, with gamma such that the rate has
    fallen to 0.1 * lr after `lr_decay_epochs` epochs (the paper: 600 of 1200). `project` keeps
    every scale-invariant weight at unit norm per output channel after each step (section 2).
    `gamma_decay` adds `gamma_decay * sum of s^2` over all normalization scales to the loss (Luo et
    al.); `population_gradient`: population norm differentiates its statistics through the batch's
    (see `norms.PopulationNorm`). `exact_first_layer`: analytic norm computes the moments of the
    first conv's output from the measured covariance of its input patches instead of assuming
    independent pixels. `rectified_residuals`: analytic norm's rule for a ReLU after a residual
    addition, relu(relu(a) + b) instead of the sum taken as Gaussian (see
    `analytic.MomentPropagation`); `border_aware_convs`: its conv rule counts zero padding (a
    position near the border sums fewer taps). `noise`: None, "bn-like" (fixed noise of std `sigma_v` (additive) and
    `sigma_u` (multiplicative) after every normalization; a value for all layers or one per layer)
    or "bayes" (learned scale noise starting at `sigma_s`, one per channel or per layer, trained on
    the ELBO with the KL term weighted by `kl_factor`; the noise parameters step at
    `noise_lr_factor` times the learning rate, without weight decay, by SGD or, with
    `noise_optimizer="adam"`, by Adam; `sigma_s` one value for all layers or one per layer). `data_init` applies the
    data-dependent initialization of appendix A.1 to the plain network and to weight norm.
    `norm_batch` is the number of samples the normalization statistics are computed over: the
    training batch plus `norm_batch - batch_size` other random training samples in the same forward
    pass, the loss taken on the training batch only (paper Fig. 2); None means the training batch
    alone. `ghost_batch` = k: batch norm's statistics over each group of k samples of the batch
    (data-parallel training on batch_size / k replicas without synchronized statistics,
    emulated in one process). `sync_bn`: under data-parallel training, batch norm's
    statistics over the global batch (SyncBatchNorm) instead of each process's share.
    `population_sync`: under data-parallel training, how population norm's processes agree:
    "all-reduce" (the batch statistics, hence the estimates, are the global batch's, as one
    process would compute them) or "broadcast" (each process normalizes with its own share's
    batch statistics in the gradient, and rank 0's estimates, built from its share alone,
    are broadcast to every process before each forward: cheaper on gloo, measured in
    benchmarks/ddp_scaling.py).
    `optimizer`: "sgd" (SGD with Nesterov momentum `momentum`, the
    paper's for classification) or "adam" (Adam with torch's defaults, the paper's for
    segmentation; `momentum` unused). `crop_size`: a segmentation set trains on random
    crops of that many pixels square (None: whole images), see `data.crop_batches`. `eval_size` keeps only the first images of the validation and test sets (None: the whole
    sets, as the paper's protocol; a number only for smoke tests).
    """

    dataset: str = Dataset.FASHION_MNIST.value
    model: str = "allcnn"
    norm: str = Norm.BATCH.value
    groups: int = DEFAULT_GROUPS
    width: float = 1 / 3
    padding: int = 1
    subset: float = 1.0
    epochs: int = 60
    lr: float = 0.05
    lr_decay_epochs: float = 30.0
    batch_size: int = 32
    norm_batch: int | None = None
    ghost_batch: int | None = None
    sync_bn: bool = False
    population_sync: str = "all-reduce"
    momentum: float = 0.9
    optimizer: str = "sgd"
    crop_size: int | None = None
    weight_decay: float = 0.0
    augment: bool = True
    data_init: bool = True
    project: bool = False
    gamma_decay: float = 0.0
    population_gradient: bool = True
    exact_first_layer: bool = True
    rectified_residuals: bool = False
    border_aware_convs: bool = False
    noise: str | None = None
    sigma_v: float | tuple[float, ...] = 0.0
    sigma_u: float | tuple[float, ...] = 0.0
    sigma_s: float | tuple[float, ...] = 0.1
    sigma_s_per_layer: bool = False
    kl_factor: float = 1.0
    noise_lr_factor: float = 1.0
    noise_optimizer: str = "sgd"
    seed: int = 0
    split_seed: int = 0
    eval_train_size: int = 1000
    eval_size: int | None = None
    eval_batch_size: int = 500
    profile: str = "custom"

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        object.__setattr__(self, "dataset", check_name(self.dataset))
        object.__setattr__(self, "norm", Norm.parse(self.norm).value)
        check_model_name(self.model)
        need(self.groups >= 1, f"groups must be >= 1, got {self.groups}")
        need(
            self.groups == DEFAULT_GROUPS or self.norm == Norm.GROUP.value,
            "groups sets group norm's number of groups; it applies to --norm group only",
        )
        need(math.isfinite(self.width) and self.width > 0, f"width must be > 0, got {self.width}")
        need(self.padding >= 0, f"padding must be >= 0, got {self.padding}")
        need(0 < self.subset <= 1, f"subset must be in (0, 1], got {self.subset}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lr_decay_epochs > 0, f"lr_decay_epochs must be > 0, got {self.lr_decay_epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            self.norm_batch is None or self.norm_batch >= self.batch_size,
            f"norm_batch ({self.norm_batch}) must be >= batch_size ({self.batch_size})",
        )
        if self.ghost_batch is not None:
            need(self.norm == Norm.BATCH.value, "ghost_batch applies to batch norm only")
            need(
                self.ghost_batch >= 1 and self.batch_size % self.ghost_batch == 0,
                f"ghost_batch ({self.ghost_batch}) must divide batch_size ({self.batch_size})",
            )
            need(self.norm_batch is None, "ghost_batch and norm_batch do not combine")
        need(
            not self.sync_bn or self.norm == Norm.BATCH.value, "sync_bn applies to batch norm only"
        )
        need(not (self.sync_bn and self.ghost_batch), "sync_bn and ghost_batch do not combine")
        for name in ("rectified_residuals", "border_aware_convs"):
            need(
                not getattr(self, name) or self.norm == Norm.ANALYTIC.value,
                f"{name} applies to analytic norm only",
            )
        need(
            self.population_sync in ("all-reduce", "broadcast"),
            f"unknown population_sync {self.population_sync!r}; choose all-reduce or broadcast",
        )
        need(
            self.population_sync == "all-reduce" or self.norm == Norm.POPULATION.value,
            "population_sync applies to population norm only",
        )
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(
            self.optimizer in ("sgd", "adam"),
            f"unknown optimizer {self.optimizer!r}; choose sgd or adam",
        )
        need(
            self.crop_size is None or self.crop_size >= 1,
            f"crop_size must be >= 1, got {self.crop_size}",
        )
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.gamma_decay >= 0, f"gamma_decay must be >= 0, got {self.gamma_decay}")
        need(
            self.noise in (None, "bn-like", "bayes"),
            f"unknown noise {self.noise!r}; choose bn-like or bayes",
        )
        need(self.noise is None or self.norm != Norm.NONE.value, "noise needs a normalization")
        for name in ("sigma_v", "sigma_u"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):  # one value per layer (a list from JSON)
                value = tuple(float(v) for v in value)
                object.__setattr__(self, name, value)
            values = value if isinstance(value, tuple) else (value,)
            need(all(v >= 0 for v in values), f"{name} must be >= 0")
        if isinstance(self.sigma_s, list | tuple):  # one initial value per layer
            object.__setattr__(self, "sigma_s", tuple(float(v) for v in self.sigma_s))
        values = self.sigma_s if isinstance(self.sigma_s, tuple) else (self.sigma_s,)
        need(all(v > 0 for v in values), f"sigma_s must be > 0, got {self.sigma_s}")
        need(
            self.noise_optimizer in ("sgd", "adam"),
            f"unknown noise_optimizer {self.noise_optimizer!r}; choose sgd or adam",
        )
        need(
            self.noise_optimizer == "sgd" or self.noise == "bayes",
            "noise_optimizer steps learned noise: it needs noise='bayes'",
        )
        need(self.kl_factor >= 0, f"kl_factor must be >= 0, got {self.kl_factor}")
        need(
            math.isfinite(self.noise_lr_factor) and self.noise_lr_factor > 0,
            f"noise_lr_factor must be > 0, got {self.noise_lr_factor}",
        )
        need(self.eval_train_size >= 0, "eval_train_size must be >= 0")
        need(self.eval_size is None or self.eval_size >= 1, "eval_size must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size must be >= 1")

    @property
    def extra_norm_samples(self) -> int:
        """How many samples besides the training batch enter the normalization statistics."""
        return 0 if self.norm_batch is None else self.norm_batch - self.batch_size

    @property
    def gamma(self) -> float:
        """Per-epoch learning-rate factor: gamma**lr_decay_epochs = 0.1."""
        return 0.1 ** (1.0 / self.lr_decay_epochs)

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.gamma**epoch

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc})") from None

    @classmethod
    def from_profile(cls, profile: str, **overrides: Any) -> TrainConfig:
        """The profile's settings, with `overrides` (those not None) on top."""
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
        values = {**PROFILES[profile], "profile": profile}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


# Epochs measured on 2 CPU cores unless marked GPU. Only "regime" reaches, like the paper's
# 1200 CIFAR-10 epochs, an eval-mode training loss near zero with a validation loss that has
# stopped falling (results/reproduce/regime-seeds3); quick's BN still has training loss 0.06
# after 60 epochs.
PROFILES: dict[str, dict[str, Any]] = {
    # width 1/4, a fifth of the training split, a few epochs: about a minute a run.
    "demo": dict(width=0.25, subset=0.2, epochs=6, lr_decay_epochs=3, eval_train_size=500),
    # width 1/3 on 10% of the training split (5,400 images), whole validation/test sets.
    "quick": dict(width=1 / 3, subset=0.1, epochs=60, lr_decay_epochs=30),
    # the quick data and model on half quick's schedule: the benchmark's grid of batch sizes.
    "bench": dict(width=1 / 3, subset=0.1, epochs=30, lr_decay_epochs=15),
    # the paper's regime on 2 cores: 1,080 training images without augmentation, fitted to
    # an eval-mode training loss of 0.001 (analytic + projection + noise) to 0.011 (BN) while
    # validation loss rises from its minimum (epoch 4-13); about 5 minutes a run.
    "regime": dict(width=1 / 3, subset=0.02, augment=False, epochs=40, lr_decay_epochs=20),
    # width 1/3 on the whole training split.
    "quick-full": dict(width=1 / 3, subset=1.0, epochs=15, lr_decay_epochs=7.5),
    # the paper's schedule: width 1, 1200 epochs, gamma**600 = 0.1 (a GPU run).
    "full": dict(width=1.0, subset=1.0, epochs=1200, lr_decay_epochs=600),
}

# Epochs of one learning-rate candidate in `lr-find` (the paper: 5 of 1200 epochs).
LR_FIND_EPOCHS = {"demo": 2, "quick": 5, "bench": 5, "regime": 5, "quick-full": 1, "full": 5}
