"""The one training loop (main paper, appendix A.1): SGD with Nesterov momentum, batch 32,
learning rate `lr * gamma**epoch`, per-epoch curves, atomic checkpoints and exact resume.

The loop is model-agnostic: `cfg.model` names a registered model or a user's factory
(`stochnorm.models`), `cfg.dataset` a registered dataset, and what depends on the model
(the first layer whose input patches analytic norm measures, the layers the data-dependent
initialization rescales) is found in the built model, with a clear error where it does not
apply.

Later features plug in through two extension points instead of copies of this loop:
`after_step` callables run after every optimizer step (e.g. a projection of weights) and
`loss_terms` callables add to the objective (e.g. a KL term).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import analytic, metrics, models
from . import data as datasets
from .bayes import add_noise, elbo_loss_term
from .checkpoint import save_checkpoint, save_json
from .config import TrainConfig
from .distributed import SINGLE_PROCESS, Replicas
from .errors import ConfigError, RunDirError, StochnormError
from .initialization import data_dependent_init_
from .norms import BatchNorm, Norm, PopulationNorm, gamma_decay, normalizations
from .optim import make_optimizer
from .plots import plot_curves
from .prediction import learned_noise, loss_and_accuracy, nll_loss, predict_val_and_test
from .projection import project_
from .provenance import provenance
from .runs import RunDir

AfterStep = Callable[[nn.Module], None]
LossTerm = Callable[[nn.Module], Tensor]

# An epoch whose mean training loss exceeds this many times the loss of a uniform guess,
# ln(classes), has diverged even while it stays finite (analytic norm at too large a rate
# reaches 1e4-1e9 and does not come back): the run stops there like a non-finite one.
DIVERGED_LOSS_FACTOR = 100.0


def divergence(train_loss: float, objective: float, num_classes: int) -> str | None:
    """Why an epoch with these mean training loss and objective counts as diverged, or
    None: a non-finite value, or a loss above DIVERGED_LOSS_FACTOR * ln(num_classes)."""
    if not (math.isfinite(train_loss) and math.isfinite(objective)):
        return "non-finite training loss"
    limit = DIVERGED_LOSS_FACTOR * math.log(num_classes)
    if train_loss > limit:
        return (
            f"training loss {train_loss:.4g} above {limit:.4g} "
            f"({DIVERGED_LOSS_FACTOR:g} x ln(classes))"
        )
    return None


@dataclass
class TrainResult:
    """The trained model (last epoch, or the last good one after a divergence) and the
    metrics that metrics.json holds."""

    model: nn.Module
    metrics: dict[str, Any]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (batch order, augmentation, noise), so that a run
    resumed at an epoch boundary draws exactly what an uninterrupted run would."""
    return seed * 100_003 + epoch


def make_model(cfg: TrainConfig, data: datasets.Splits) -> nn.Module:
    """The untrained model of `cfg` for `data`'s channels and classes (PyTorch's default
    initialization), with the noise modules `cfg.noise` asks for. Uses only the shapes of
    `data`, never its images."""
    model = models.build(
        cfg.model, data.in_channels, data.num_classes, norm=cfg.norm, width=cfg.width,
        padding=cfg.padding, groups=cfg.groups,
    )  # fmt: skip
    propagation = analytic.propagation_of(model)
    if propagation is not None:  # kept by a model loaded from its state dict too
        propagation.rectified_residuals = cfg.rectified_residuals
        propagation.border_aware_convs = cfg.border_aware_convs
    for layer in normalizations(model):
        if isinstance(layer, PopulationNorm):
            layer.gradient = cfg.population_gradient
            # under data-parallel training: the global batch's estimates, or (not synced)
            # each process's own batch and rank 0's estimates, broadcast with the buffers
            layer.sync = cfg.population_sync == "all-reduce"
        elif isinstance(layer, BatchNorm):
            layer.ghost_batch = cfg.ghost_batch
            layer.sync = cfg.sync_bn
    if cfg.noise is not None:
        add_noise(
            model, cfg.noise, sigma_s=cfg.sigma_s, per_channel=not cfg.sigma_s_per_layer,
            sigma_v=cfg.sigma_v, sigma_u=cfg.sigma_u,
        )  # fmt: skip
    return model


def build_model(cfg: TrainConfig, data: datasets.Splits) -> nn.Module:
    """The model of `cfg` for `data`, initialized from `cfg.seed` as in appendix A.1:
    PyTorch's default init; the data-dependent init on 128 training images for the plain
    network and weight norm (`data_init`); analytic norm propagates the measured moments of
    the augmented training inputs; with `project`, weights start on the unit sphere."""
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, data)
    norm = Norm(cfg.norm)
    if norm in (Norm.NONE, Norm.WEIGHT) and cfg.data_init:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(data.train), generator=g)[:128]
        try:
            data_dependent_init_(model, data.train.x[idx])
        except ValueError as exc:
            raise ConfigError(f"{exc}; train {cfg.model} with --no-data-init") from None
    if norm is Norm.ANALYTIC:
        attach_analytic(model, cfg, data)
    if cfg.project:
        project_(model)
    return model


def attach_analytic(model: nn.Module, cfg: TrainConfig, data: datasets.Splits) -> None:
    """Give analytic norm the measured moments of the training inputs (per channel, and the
    first layer's patch covariance when `exact_first_layer`) and set its statistics."""
    mean, var, patches, size = measured_input_moments(model, cfg, data)
    analytic.attach(model, mean, var, channels=data.in_channels, size=size, input_patches=patches,
                    rectified_residuals=cfg.rectified_residuals,
                    border_aware_convs=cfg.border_aware_convs)  # fmt: skip


def measured_input_moments(
    model: nn.Module, cfg: TrainConfig, data: datasets.Splits
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None, tuple[int, ...]]:
    """Per-channel mean and variance of the training inputs as training sees them, the
    first layer's patch moments when `exact_first_layer` (else None), and the image size."""
    x = training_inputs(data, cfg)
    try:
        mean, var, patches = analytic.input_moments(
            model, x, exact_first_layer=cfg.exact_first_layer
        )
    except ValueError as exc:
        raise ConfigError(f"{exc}: train it with --no-exact-first-layer") from None
    return mean, var, patches, tuple(x.shape[2:])


def training_inputs(data: datasets.Splits, cfg: TrainConfig, count: int = 10_000) -> Tensor:
    """Up to `count` training images as the network sees them in training (augmented when
    training augments; for segmentation the crops of one epoch): the sample from which
    analytic norm measures its input moments."""
    if data.segmentation:
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.cat([x for x, _ in training_batches(data, cfg, g)])[:count]
    x = data.train.x[:count]
    if cfg.augment:
        x = augment_batch(x, data.fill, torch.Generator().manual_seed(cfg.seed))
    return x


def prepare_data(cfg: TrainConfig) -> datasets.Splits:
    """The training, validation and test sets of `cfg` (its dataset, subset, split and
    `eval_size`)."""
    data = datasets.prepare(cfg.dataset, subset=cfg.subset, split_seed=cfg.split_seed)
    if cfg.eval_size is not None:
        data = dataclasses.replace(
            data, val=data.val.head(cfg.eval_size), test=data.test.head(cfg.eval_size)
        )
    return data


def check_task(cfg: TrainConfig, data: datasets.Splits) -> None:
    """A ConfigError for settings that do not apply to `data`'s task."""
    if data.segmentation and cfg.norm_batch is not None:
        raise ConfigError("norm_batch applies to classification; a segmentation set has none")
    if not data.segmentation and cfg.crop_size is not None:
        raise ConfigError(f"crop_size applies to segmentation sets; {data.name} is not one")
    per_pixel = models.SEGMENTATION_MODELS
    if data.segmentation and cfg.model in models.MODELS and cfg.model not in per_pixel:
        raise ConfigError(
            f"{cfg.model} predicts one class per image; {data.name} has one per pixel: train a "
            f"segmentation model ({', '.join(per_pixel)}, or your own factory)"
        )
    if not data.segmentation and cfg.model in per_pixel:
        raise ConfigError(f"{cfg.model} predicts a class per pixel; {data.name} has one per image")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    data: datasets.Splits | None = None,
    model_factory: Callable[..., nn.Module] | None = None,
    resume: bool = False,
    after_step: Sequence[AfterStep] = (),
    loss_terms: Sequence[LossTerm] = (),
    device: str | torch.device | None = "cpu",
    progress: bool = True,
    evaluate: bool = True,
    compiled: bool = False,
) -> TrainResult:
    """Train `cfg.model` (or `model_factory`, recorded in the config by its importable
    name, see `models.factory_name`) on `cfg.dataset` (or the splits `data`) as `cfg` says;
    return the trained model and its metrics (as in metrics.json).

    With `out`, the run directory receives config.json, a checkpoint after every epoch,
    metrics.json and curves.png; `resume=True` continues the run found there. Without
    `out` nothing is written (as in a learning-rate search). A run whose loss becomes
    non-finite stops at that step, one whose epoch loss exceeds 100 x ln(classes) at the
    end of that epoch (`divergence`), with `"diverged": true` and the reason in
    `"divergence"`; the checkpoint of the last good epoch is kept. `evaluate=False` skips
    the per-epoch and final evaluations (only the training loss is recorded). `compiled`:
    the training forward and backward run through `torch.compile` (the first steps compile,
    minutes on a CPU; evaluation stays eager; torch.compile's cache is reset first); the run's configuration and results do not
    depend on it beyond float rounding.
    """
    device = resolve_device(device)
    replicas = Replicas.current()
    if model_factory is not None:
        cfg = cfg.replace(model=models.factory_name(model_factory))
    if cfg.batch_size % replicas.world or (replicas.world > 1 and cfg.extra_norm_samples):
        raise ConfigError(
            f"data-parallel training on {replicas.world} processes needs a batch_size they "
            f"divide (got {cfg.batch_size}) and no norm_batch"
        )
    run = RunDir(out) if out is not None else None
    if run is not None and replicas.main:
        _check_run_dir(run, cfg, resume)
    if data is None:
        data = prepare_data(cfg)
    check_task(cfg, data)
    model = build_model(cfg, data).to(device)
    if run is not None and replicas.main and not resume:  # only a config that can train
        save_json(cfg.to_dict(), run.config_path)
    replicas.barrier()  # the run directory is ready before any process reads it
    optimizer = make_optimizer(cfg, model)
    if cfg.project:
        after_step = [project_, *after_step]
    if cfg.gamma_decay:
        loss_terms = [lambda m: cfg.gamma_decay * gamma_decay(m), *loss_terms]
    if cfg.noise == "bayes":  # |D|: the classified examples, every pixel of a segmentation
        loss_terms = [elbo_loss_term(cfg.kl_factor, data.train.y.numel()), *loss_terms]
    history: list[dict[str, float]] = []
    state = run.checkpoint() if run is not None and resume else None
    if state is not None:
        load_model_state(model, state["model"], cfg, data)
        history = list(state["history"])
        finished = _finished_metrics(run, len(history))
        if finished is not None:  # nothing left to train: the run stays as it was written
            return TrainResult(model, finished)
        _load_optimizer_state(optimizer, state["optimizer"], run)
    net = model
    if replicas.world > 1:  # gradients averaged over the processes
        net = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            **{_BUFFER_SYNC: _has_batch_statistics(model)},
        )  # fmt: skip
    if compiled:  # a fresh cache: dynamo recompiles for every new model, 8 times at most
        torch._dynamo.reset()
        net = torch.compile(net)
    result = {"config": cfg.to_dict(), "provenance": provenance(device), "data": _describe(data)}
    if replicas.world > 1:
        result["replicas"] = replicas.world

    reason = None  # why the run diverged, if it did
    bar = tqdm(
        range(len(history), cfg.epochs), initial=len(history), total=cfg.epochs,
        desc=f"{cfg.norm} w={cfg.width:.3g}", unit="epoch", disable=not (progress and replicas.main),
    )  # fmt: skip
    for epoch in bar:
        started = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(replicas.noise_seed(seed))
        generator = torch.Generator().manual_seed(seed)  # the same batches in every process
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(epoch) * group.get("lr_factor", 1.0)  # absent: older runs
        train_loss, objective = train_epoch(
            net, optimizer, data, cfg, generator, device, after_step=after_step,
            loss_terms=loss_terms, replicas=replicas,
        )  # fmt: skip
        train_loss, objective = replicas.mean(train_loss), replicas.mean(objective)
        reason = divergence(train_loss, objective, data.num_classes)
        if reason is not None:
            break
        row = {"epoch": epoch + 1, "lr": cfg.lr_at(epoch), "train_loss": train_loss}
        if loss_terms:
            row["train_objective"] = objective
        if evaluate and replicas.main:
            row.update(epoch_metrics(model, data, cfg, device))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{row.get('val_acc', math.nan):.3f}")
        if run is not None and replicas.main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            save_checkpoint({**state, "history": history}, run.checkpoint_path)
            save_json({**result, "history": history, "complete": False}, run.metrics_path)
    bar.close()

    diverged = reason is not None
    result.update(history=history, diverged=diverged, complete=not diverged)
    if diverged:
        result["divergence"] = f"epoch {len(history) + 1}: {reason}"
    usable = not diverged
    if diverged and run is not None and run.checkpoint_path.exists():
        load_model_state(model, run.checkpoint()["model"], cfg, data)  # the last good epoch
        usable = True
    if history and usable and evaluate and replicas.main:
        result["final"] = final_metrics(model, data, cfg, device)
    result["train_seconds"] = sum(r["seconds"] for r in history)
    if run is not None and replicas.main:
        save_json(result, run.metrics_path)
        if history:
            plot_curves({run.name: history}, run.curves_path)
    return TrainResult(model, result)


# DistributedDataParallel's switch for taking rank 0's buffers at every forward: torch 2.13
# renamed broadcast_buffers (deprecated) to forward_sync_buffers (the buffers, identical at
# the start in every process, are then also compared at construction: harmless here).
_BUFFER_SYNC = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers"
)


def _has_batch_statistics(model: nn.Module) -> bool:
    """Whether `model` keeps running estimates that differ between processes: batch norm
    or population norm without `sync` (each process's own batch), whose estimates
    data-parallel training takes from rank 0 at every forward so that all processes hold the
    same. Synchronized batch and population norm estimate from the global batch, analytic
    and weight norm
    compute the same statistics from the same weights in every process: they need no
    communication beyond the gradients' (and the all-reduces of synchronized statistics)."""
    return any(isinstance(m, BatchNorm) and not m.sync for m in model.modules())


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: datasets.Splits,
    cfg: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    *,
    after_step: Sequence[AfterStep] = (),
    loss_terms: Sequence[LossTerm] = (),
    replicas: Replicas = SINGLE_PROCESS,
) -> tuple[float, float]:
    """One pass over the shuffled training split in train mode (this process's share of
    every batch, under data-parallel training: the same batches are drawn and augmented
    in every process, each takes its consecutive slice). Returns the mean training
    loss (NLL of the training batch, the extra normalization samples excluded) and the mean
    objective (the loss plus the extra loss terms). A non-finite objective ends the epoch
    before its step (the parameters stay finite) and makes both means non-finite."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    objective_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for x, y in training_batches(data, cfg, generator):
        if replicas.world > 1:
            share = len(y) // replicas.world
            x, y = (t[replicas.rank * share : (replicas.rank + 1) * share] for t in (x, y))
        y = y.to(device)
        loss = nll_loss(model(x.to(device))[: len(y)], y)
        objective = loss
        for term in loss_terms:
            objective = objective + term(model)
        if replicas.any(not torch.isfinite(objective)):  # every process stops at this step
            return math.nan, math.nan
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        for hook in after_step:
            hook(model)
        loss_sum += loss.detach()
        objective_sum += objective.detach()
        steps += 1
    steps = max(steps, 1)
    return (loss_sum / steps).item(), (objective_sum / steps).item()


def training_batches(
    data: datasets.Splits, cfg: TrainConfig, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of training batches (x, y) as the network sees them. Classification: the
    shuffled training split in batches of `cfg.batch_size` (the last incomplete one dropped),
    x followed by `cfg.extra_norm_samples` random other images (y has no labels for them),
    augmented by `augment_batch`. Segmentation: random crops covering the fraction
    `cfg.subset` of the training pixels (`data.crop_batches`), flipped and deformed with
    their masks."""
    if data.segmentation:
        yield from datasets.crop_batches(
            data.train, cfg.batch_size, cfg.crop_size, generator, subset=cfg.subset,
            augment=cfg.augment,
        )  # fmt: skip
        return
    for x, y in datasets.batches(data.train, cfg.batch_size, generator, drop_last=True):
        if cfg.extra_norm_samples:
            extra = torch.randint(len(data.train), (cfg.extra_norm_samples,), generator=generator)
            x = torch.cat([x, data.train.x[extra]])
        if cfg.augment:
            x = augment_batch(x, data.fill, generator)
        yield x, y


def augment_batch(x: Tensor, fill: Tensor, generator: torch.Generator) -> Tensor:
    """The paper's augmentation: translation by up to 2 px and a horizontal flip."""
    return datasets.augment(x, fill, generator, shift=2)


def epoch_metrics(
    model: nn.Module, data: datasets.Splits, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Eval-mode loss on a fixed training subset (the same weights as the train-mode loss,
    paper Fig. 1), validation loss and accuracy, and for learned scale noise its sigma_S / s
    per layer (mean over channels, main paper section 3.5), to show whether it settles."""
    row = {}
    if cfg.eval_train_size:
        row["train_eval_loss"], row["train_eval_acc"] = loss_and_accuracy(
            model, data.train.head(cfg.eval_train_size), batch_size=cfg.eval_batch_size,
            device=device,
        )  # fmt: skip
    row["val_loss"], row["val_acc"] = loss_and_accuracy(
        model, data.val, batch_size=cfg.eval_batch_size, device=device
    )
    if noise := learned_noise(model):
        row["sigma_s_over_s"] = [layer["sigma_s_over_s"] for layer in noise]
    return row


def final_metrics(
    model: nn.Module, data: datasets.Splits, cfg: TrainConfig, device: torch.device
) -> dict[str, dict[str, float]]:
    """Accuracy, NLL, ECE and Brier of the eval-mode model on validation and test sets (a
    segmentation set's test split is its validation split: predicted once)."""
    val, test = predict_val_and_test(model, data, batch_size=cfg.eval_batch_size, device=device)
    return {"val": metrics.summary(val, data.val.y), "test": metrics.summary(test, data.test.y)}


def load_model_state(
    model: nn.Module, state: dict[str, Tensor], cfg: TrainConfig, data: datasets.Splits
) -> None:
    """Load a checkpoint's model `state` into `model` (built from `cfg`). A checkpoint
    written before analytic norm kept its input moments in the state dict gets them measured
    on `data` again, as they were measured when its run started."""
    model.load_state_dict(state)
    propagation = analytic.propagation_of(model)
    if propagation is not None and propagation.needs_input_moments:
        mean, var, patches, _ = measured_input_moments(model, cfg, data)
        propagation.set_input_moments(mean, var, patches)


def _finished_metrics(run: RunDir, epochs_done: int) -> dict[str, Any] | None:
    """The saved metrics of `run` if it has ended (complete, or stopped by a divergence) with
    `epochs_done` epochs in its checkpoint, else None."""
    if not run.metrics_path.is_file():
        return None
    saved = run.metrics()
    ended = saved.get("complete") or saved.get("diverged")
    return saved if ended and len(saved.get("history", ())) == epochs_done else None


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, run: RunDir) -> None:
    try:
        optimizer.load_state_dict(state)
    except ValueError as error:  # e.g. parameter groups laid out by another version
        raise RunDirError(
            f"{run.checkpoint_path}: its optimizer state does not fit this version's optimizer "
            f"({error}); the run cannot be continued exactly, start it anew in another --out"
        ) from error


def _started_only(run: RunDir, cfg: TrainConfig) -> bool:
    """Whether `run` holds nothing but the config.json of `cfg` (a run stopped before its
    first checkpoint: starting it again loses nothing)."""
    if [p.name for p in run.path.iterdir()] != [run.config_path.name]:
        return False
    try:
        return run.config() == cfg
    except StochnormError:
        return False


def _diverged_at_once(run: RunDir) -> str | None:
    """The reason a run in `run` diverged before its first checkpoint, or None if it did
    not (or there is no such run)."""
    if run.checkpoint_path.exists() or not run.metrics_path.is_file():
        return None
    try:
        saved = run.metrics()
    except (StochnormError, ValueError):
        return None
    if not saved.get("diverged") or saved.get("history"):
        return None
    return saved.get("divergence", "non-finite training loss")


def _check_run_dir(run: RunDir, cfg: TrainConfig, resume: bool) -> None:
    """Refuse a run directory that `cfg` cannot start or resume in (training writes its
    config.json once the data and the model are built)."""
    at_once = _diverged_at_once(run)
    if at_once is not None:
        raise RunDirError(
            f"{run.path} holds a run that diverged before its first checkpoint ({at_once}); "
            "there is nothing to resume: choose another --out, or remove it to start anew"
        )
    if resume:
        saved = run.config()
        if saved != cfg:
            raise RunDirError(f"{run.path}: the config differs from the one the run started with")
        if not run.checkpoint_path.exists():
            raise RunDirError(f"{run.path}: no checkpoint to resume from; start the run anew")
        return
    if run.path.exists() and any(run.path.iterdir()) and not _started_only(run, cfg):
        raise RunDirError(
            f"{run.path} is not empty; pass --resume to continue it or choose another --out"
        )


def _describe(data: datasets.Splits) -> dict[str, Any]:
    return {
        "dataset": data.name, "source": data.source, "train": len(data.train),
        "val": len(data.val), "test": len(data.test), "mean": data.mean, "std": data.std,
    }  # fmt: skip
