"""The `stochnorm` command: train, evaluate, lr-find, report, demo, reproduce, diagnose, data."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist

from . import data
from .benchmark import METHODS, REGIMES, Benchmark, narrowed, regime, run_benchmark
from .checkpoint import save_json
from .cli_flags import CONFIG_FLAGS, REPRODUCE_FLAGS, SWITCHES
from .config import PROFILES, TrainConfig
from .demo import demo
from .distributed import Replicas
from .errors import ConfigError, StochnormError
from .evaluation import diagnose_analytic, evaluate_run, load_run, measure_bn_noise
from .experiments import PAPERS, Lab, registry, reproduce
from .experiments.parallel import planned_runs, train_in_parallel
from .experiments.verdicts import claim_sentence
from .labelled import bn_like_sigmas, run_labels
from .lr_search import lr_find
from .plots import plot_bn_noise
from .provenance import provenance
from .report import (
    analytic_statistics_markdown,
    bn_noise_markdown,
    write_report,
    write_reproduction_report,
)
from .runs import RunDir
from .train import build_model, prepare_data, resolve_device, train


class _Parser(argparse.ArgumentParser):
    """Reports a usage error on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None

    return parse


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", choices=list(PROFILES), default="quick",
        help="preset of width, subset and schedule that the flags below override "
        "(demo: ~1.5 min a run; quick: width 1/3 on 5,400 images, ~10 min; regime: 1,080 images "
        "without augmentation fitted to training loss ~0, ~5 min; quick-full: the "
        "whole training split, ~80 s an epoch; full: the paper's width and 1200 epochs, for a GPU)",
    )  # fmt: skip
    for flag, (_, kind, text) in CONFIG_FLAGS.items():
        p.add_argument(flag, type=_number(kind) if kind is not str else str, help=text)
    for flag, (_, text) in SWITCHES.items():
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    p.add_argument(
        "--noise-from", metavar="BN_NOISE_JSON",
        help="bn-like noise: per-layer sigma_V, sigma_U measured by `diagnose bn-noise`",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _config_overrides(args: argparse.Namespace, *, noise_from: bool = True) -> dict[str, Any]:
    """The settings given by flags (with `noise_from`, also the BN-like sigmas of
    --noise-from)."""
    values = {field: getattr(args, field) for field, _, _ in CONFIG_FLAGS.values()}
    values.update({field: getattr(args, field) for field, _ in SWITCHES.values()})
    if noise_from and getattr(args, "noise_from", None):
        values.update(bn_like_sigmas(Path(args.noise_from)))
    return {k: v for k, v in values.items() if v is not None}


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_profile(args.profile, **_config_overrides(args))


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if not args.resume:
            _config(args)  # a bad flag is reported here, not once by every process
        return _torchrun(args.nproc, args.argv)
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        given = _config_overrides(args)
        if given:
            raise ConfigError(
                f"--resume takes its configuration from {args.out}/config.json; drop "
                + ", ".join("--" + k.replace("_", "-") for k in given)
            )
        cfg = RunDir(args.out).config()
    else:
        cfg = _config(args)
    out = args.out or Path("runs") / f"{cfg.profile}-{cfg.dataset}-{cfg.norm}-seed{cfg.seed}"
    with _process_group(args.device) as device:
        result = train(cfg, out, resume=args.resume, device=device, progress=not args.no_progress,
                       compiled=args.compile)  # fmt: skip
        if Replicas.current().main:
            _print_final(out, result.metrics)
    return 1 if result.metrics["diverged"] else 0


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[str]:
    """Under torchrun (WORLD_SIZE > 1): the process group of data-parallel training, gloo
    on the CPU and NCCL on CUDA (each process on the GPU of its LOCAL_RANK), for the block;
    else nothing. Yields the device this process trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield device
        return
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _torchrun(nproc: int, argv: list[str]) -> int:
    """Run `stochnorm ARGV` (its --nproc removed) under torchrun with `nproc` processes on
    this machine; returns torchrun's exit status."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), "-m", "stochnorm", *rest]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def _cmd_runs(args: argparse.Namespace) -> int:
    overrides = _config_overrides(args, noise_from=False)
    label_keys = ("lr", "norm", "project", "noise", "gamma_decay", "groups", "sigma_s",
                  "noise_lr_factor", "kl_factor", "noise_optimizer", "population_gradient",
                  "ghost_batch")  # fmt: skip
    for key in label_keys:
        if key in overrides:
            raise ConfigError(f"the labels set {key}; drop --{key.replace('_', '-')}")
    runs = run_labels(
        args.labels, Path(args.out), profile=args.profile, overrides=overrides,
        lr_from=Path(args.lr_from) if args.lr_from else None,
        noise_from=Path(args.noise_from) if args.noise_from else None,
        evaluate=args.evaluate, samples=tuple(args.samples),
        robustness_size=args.robustness_size, device=args.device,
        progress=not args.no_progress,
    )  # fmt: skip
    for run in runs:  # a diverged run is a result here: it is reported, not an error
        _print_final(run.path, run.metrics())
    return 0


def _print_final(out: Path | str, metrics: dict[str, Any]) -> None:
    if metrics["diverged"]:
        reason = f" ({metrics['divergence']})" if metrics.get("divergence") else ""
        kept = "the last good epoch is kept" if metrics.get("history") else "no epoch finished"
        print(f"diverged{reason}; {kept}: {out}")
    else:
        print(f"done: {out}")
    final = metrics.get("final", {})
    for split, m in final.items():
        if split == "test" and "iou" in m and m == final.get("val"):
            continue  # a segmentation set's test split is its validation split
        pixels = f"  IoU {m['iou']:.4f}  Dice {m['dice']:.4f}" if "iou" in m else ""
        print(
            f"  {split}: accuracy {100 * m['accuracy']:.2f}%  NLL {m['nll']:.4f}  "
            f"ECE {m['ece']:.4f}  Brier {m['brier']:.4f}{pixels}"
        )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.run_dir, samples=tuple(args.samples), seed=args.seed,
        robustness_size=args.robustness_size, device=args.device,
    )  # fmt: skip
    test = result["test"]
    _print_final(args.run_dir, {"diverged": False, "final": result["metrics"]})
    for mode, entry in test.items():
        print(
            f"  test {mode}: accuracy {100 * entry['accuracy']:.2f}%  NLL {entry['nll']:.4f}  "
            f"ECE {entry['ece']:.4f}  AURC (entropy) {100 * entry['aurc_entropy']:.2f}%"
        )
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:

    cfg = _config(args)
    result = lr_find(
        cfg, lr_min=args.lr_min, lr_max=args.lr_max, per_decade=args.per_decade,
        refine=args.refine, epochs=args.search_epochs, device=args.device,
        progress=not args.no_progress,
        on_trial=lambda lr, loss: print(f"  lr {lr:.4g}: training loss {loss:.4f}", flush=True),
    )  # fmt: skip
    result["config"] = cfg.to_dict()
    edge = " (at the edge of the range: widen --lr-min/--lr-max)" if result["at_edge"] else ""
    print(f"best lr {result['lr']:.4g} after {result['epochs']} epochs{edge}")
    if args.out:
        save_json(result, Path(args.out))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:

    if args.reproduction:
        out = Path(args.out if args.out != "report" else "results/REPRODUCTION.md")
        print(write_reproduction_report([Path(p) for p in args.run_dirs], out))
        return 0
    path = write_report([RunDir(p).check() for p in args.run_dirs], Path(args.out), args.title)
    print(path)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:

    experiments = registry()
    if args.list or not args.name:
        for exp in experiments.values():
            print(f"{exp.name:<28} {exp.paper:<9} {exp.figure:<12} {exp.claim[:70]}...")
        print("\npapers: " + "; ".join(f"{k} = {v}" for k, v in PAPERS.items()))
        return 0
    names = list(experiments) if args.name == ["all"] else list(dict.fromkeys(args.name))
    unknown = [name for name in names if name not in experiments]
    if unknown:
        raise ConfigError(
            f"unknown experiment {unknown[0]!r}; `stochnorm reproduce --list` names them"
        )
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    overrides = {CONFIG_FLAGS[f][0]: getattr(args, CONFIG_FLAGS[f][0]) for f in REPRODUCE_FLAGS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    out = Path(args.out or f"runs/reproduce/{args.profile}")
    lab = Lab(
        args.profile, out / "runs", seed=args.seed, seeds=args.seeds, overrides=overrides,
        reuse=[Path(p) for p in args.reuse], device=args.device,
        progress=not args.no_progress, lr_search=args.lr_search,
    )  # fmt: skip
    if args.jobs > 1:
        labels = planned_runs([experiments[name] for name in names])
        print(f"training {len(labels)} runs in {args.jobs} processes: {', '.join(labels)}")
        train_in_parallel(lab, labels, args.jobs)
    for name in names:
        record = reproduce(experiments[name], lab, out / name)
        verdict = record["verdict"]
        print(f"{name} ({record['figure']}, {args.profile}): {claim_sentence(verdict['status'])}")
        print(f"  {verdict['summary']}")
        print(f"  {out / name}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    names = dict.fromkeys(args.regimes.split(",")) if args.regimes else None
    chosen = REGIMES if names is None else [regime(n) for n in names]  # each once
    if args.methods:
        chosen = narrowed(chosen, list(dict.fromkeys(args.methods.split(","))))
    overrides = {CONFIG_FLAGS[f][0]: getattr(args, CONFIG_FLAGS[f][0]) for f in REPRODUCE_FLAGS}
    bench = Benchmark(
        args.profile, Path(args.out), seeds=args.seeds, regimes=chosen,
        reuse=[Path(p) for p in args.reuse], device=args.device, progress=not args.no_progress,
        overrides={k: v for k, v in overrides.items() if v is not None},
    )  # fmt: skip
    command = "stochnorm " + " ".join(args.argv)
    numbers = run_benchmark(bench, command, samples=args.samples, train=not args.available)
    print(Path(args.out) / "BENCHMARK.md")
    if numbers["missing"]:
        print(f"{len(numbers['missing'])} cells not trained yet (run without --available)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:

    return demo(Path(args.out), device=args.device, progress=not args.no_progress)


def _cmd_an_stats(args: argparse.Namespace) -> int:
    if args.run:
        cfg, data, model = load_run(args.run)
        out, stage = Path(args.out or Path(args.run) / "an-stats"), f"trained ({args.run})"
    else:
        cfg = _config(args).replace(norm="analytic")
        data = prepare_data(cfg)
        model = build_model(cfg, data)
        out, stage = Path(args.out or "runs/an-stats-init"), "at initialization"
    found = diagnose_analytic(cfg, data, model)
    text = analytic_statistics_markdown(found, stage)
    out.mkdir(parents=True, exist_ok=True)
    save_json({"config": cfg.to_dict(), "stage": stage, **found, "provenance": provenance()},
              out / "an-stats.json")  # fmt: skip
    (out / "an-stats.md").write_text(text)
    print(text, end="")
    return 0


def _cmd_bn_noise(args: argparse.Namespace) -> int:
    found = measure_bn_noise(
        args.run, tuple(args.batch_sizes), batches=args.batches, seed=args.seed
    )
    out = Path(args.out or Path(args.run) / "bn-noise")
    plot_bn_noise(found["measurements"], found["summary"], out / "bn-noise.png",
                  qq_layer=args.qq_layer)  # fmt: skip
    save_json({**found, "provenance": provenance()}, out / "bn-noise.json")
    text = bn_noise_markdown(args.run, found["summary"], args.batches)
    (out / "bn-noise.md").write_text(text)
    print(text, end="")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:

    reader = data.reader(args.name)
    where = reader.locate()
    if where is None and args.download:
        where = reader.fetch()
    if where is None:
        raise StochnormError(f"{args.name} not found; {reader.HOW_TO_GET}")
    raw = data.load(args.name, download=False)
    if isinstance(raw, data.RawSegmentation):
        h, w = raw.images.shape[2:]
        print(f"{args.name}: {len(raw.images)} image(s) of {h}x{w} pixels with masks in {where}")
    else:
        print(f"{args.name}: {len(raw.train_y)} training and {len(raw.test_y)} test images in "
              f"{where}")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stochnorm",
        description="Batch-independent normalization with learned Bayesian noise: training, "
        "evaluation and reports on real data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_config_flags(p)
    p.add_argument("--out", help="run directory (default runs/PROFILE-DATASET-NORM-seedN)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument(
        "--nproc", type=_number(int), default=1,
        help="data-parallel training in this many processes on this machine: runs the same "
        "command under `torchrun --standalone --nproc-per-node N` (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="train through torch.compile (the first steps compile: minutes on a CPU; "
        "pays where launches dominate, e.g. analytic norm on a GPU)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "runs", help="train (or resume) runs named by label in one directory, each at the "
        "learning rate of its search (see stochnorm.labels for the label grammar)",
    )  # fmt: skip
    p.add_argument("labels", nargs="+", help="run labels, e.g. batch-proj analytic-proj-bayes-f30")
    p.add_argument("--out", required=True, help="directory of the runs (DIR/LABEL) and searches")
    _add_config_flags(p)
    p.add_argument(
        "--lr-from", metavar="LR_FIND_JSON",
        help="take every run's rate from this search file, or from LR_DIR/lr-find-LABEL.json "
        "for a directory (default: DIR/lr-find-LABEL.json, searched if missing)",
    )  # fmt: skip
    p.add_argument("--evaluate", action="store_true", help="evaluate every run once")
    p.add_argument(
        "--samples", type=_number(int), nargs="+", default=[10, 30],
        help="with --evaluate: Monte-Carlo sample counts for models with noise (10 30)",
    )  # fmt: skip
    p.add_argument(
        "--robustness-size", type=_number(int), default=2000,
        help="with --evaluate: test images for the robustness curves (0: none; 2000)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on validation and test sets")
    p.add_argument("run_dir", help="a run directory written by `stochnorm train`")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default: cpu)")
    p.add_argument(
        "--samples", type=_number(int), nargs="+", default=[10, 30],
        help="Monte-Carlo sample counts for models with noise (default: 10 30)",
    )  # fmt: skip
    p.add_argument("--seed", type=_number(int), default=0, help="seed of the MC samples")
    p.add_argument(
        "--robustness-size", type=_number(int), default=2000,
        help="test images for the Gaussian-noise and FGSM curves (0: skip them; default 2000)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "lr-find", help="find the initial learning rate that minimizes the training loss "
        "reached after a few epochs (the paper's protocol)",
    )  # fmt: skip
    _add_config_flags(p)
    p.add_argument(
        "--lr-min", type=_number(float), help="smallest rate tried (SGD 1e-3, Adam 1e-5)"
    )
    p.add_argument("--lr-max", type=_number(float), help="largest rate tried (SGD 1, Adam 1e-2)")
    p.add_argument("--per-decade", type=_number(int), default=2, help="grid points per decade")
    p.add_argument("--refine", type=_number(int), default=3, help="refining trials after the grid")
    p.add_argument(
        "--search-epochs", type=_number(int),
        help="epochs per trial (default: the profile's; the paper: 5)",
    )  # fmt: skip
    p.add_argument("--out", help="write the trials and the best rate to this JSON file")
    p.set_defaults(func=_cmd_lr_find)

    p = sub.add_parser("report", help="markdown table and curves from run directories")
    p.add_argument(
        "run_dirs", nargs="+",
        help="run directories to compare (with --reproduction: `reproduce` output directories)",
    )  # fmt: skip
    p.add_argument(
        "--out", default="report",
        help="output directory (default: report); with --reproduction the markdown file "
        "(default: results/REPRODUCTION.md)",
    )  # fmt: skip
    p.add_argument(
        "--reproduction", action="store_true",
        help="write the claims-vs-measurements report from `stochnorm reproduce` results",
    )  # fmt: skip
    p.add_argument("--title", default="stochnorm report", help="report title")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "demo", help="train the demo comparison (batch norm vs none) and write its report"
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "reproduce", help="run one experiment of the papers: train, measure, plot, verdict"
    )
    p.add_argument("name", nargs="*", help="experiment names (see --list), or all")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.add_argument(
        "--profile", choices=list(PROFILES), default="demo",
        help="size of every run: demo (default; minutes, tabulated learning rates), quick "
        "(width 1/3, 60 epochs, learning rate searched per run; hours on a CPU), regime "
        "(1,080 images fitted to training loss ~0, as in the paper), full (GPU)",
    )  # fmt: skip
    p.add_argument("--out", help="output directory (default: runs/reproduce/PROFILE)")
    p.add_argument("--seed", type=_number(int), default=0, help="seed of every run (0)")
    p.add_argument(
        "--seeds", type=_number(int), default=1,
        help="seeds of every compared run (seed, seed + 1, ...; at the first seed's rate): "
        "comparisons of 2 or more are decided on paired seed differences against 2 standard "
        "errors, of 1 against the iterate spread of one run (default 1)",
    )  # fmt: skip
    _reuse_flag(p)
    p.add_argument(
        "--lr-search", action=argparse.BooleanOptionalAction, default=None,
        help="search the learning rate per run (default: yes except in the demo profile)",
    )  # fmt: skip
    _run_size_flags(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default: cpu)")
    p.add_argument(
        "--jobs", type=_number(int), default=1,
        help="first train the runs the experiments share in this many processes (on a GPU, "
        "several small networks train side by side; default 1: one after another)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "benchmark", help="the practitioner's benchmark: regimes x methods x seeds, BENCHMARK.md"
    )
    p.add_argument(
        "--profile", choices=list(PROFILES), default="bench",
        help="size of every run (default bench: quick's data and model, 30 epochs; about ten "
        "hours on 2 CPU cores; full: a GPU)",
    )  # fmt: skip
    p.add_argument("--out", default="runs/benchmark", help="output directory (runs/benchmark)")
    p.add_argument("--seeds", type=_number(int), default=3, help="seeds per cell (default 3)")
    p.add_argument(
        "--regimes",
        help=f"comma-separated regimes (default all: {', '.join(r.name for r in REGIMES)})",
    )
    p.add_argument(
        "--methods",
        help="comma-separated methods, each run in the chosen regimes that have it "
        f"(default all: {', '.join(METHODS)})",
    )
    p.add_argument("--samples", type=_number(int), default=10, help="MC passes K (default 10)")
    _reuse_flag(p)
    p.add_argument(
        "--available", action="store_true",
        help="train nothing: measure and report the cells already finished",
    )  # fmt: skip
    _run_size_flags(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("diagnose", help="measurements on a trained or fresh network")
    checks = p.add_subparsers(dest="check", required=True, parser_class=_Parser)
    q = checks.add_parser(
        "an-stats", help="analytic norm: estimated vs true statistics per layer (of a run, "
        "or at initialization from the config flags)",
    )  # fmt: skip
    q.add_argument("--run", help="a run directory of an analytic-norm run (default: at init)")
    q.add_argument("--out", help="output directory (default: RUN/an-stats or runs/an-stats-init)")
    _add_config_flags(q)
    q.set_defaults(func=_cmd_an_stats)

    q = checks.add_parser(
        "bn-noise", help="batch norm's randomness in a trained BN run (paper section 3.1)"
    )
    q.add_argument("run", help="a run directory of a batch-norm run")
    q.add_argument("--out", help="output directory (default: RUN/bn-noise)")
    q.add_argument(
        "--batch-sizes", type=_number(int), nargs="+", default=[4, 8, 16, 32, 64, 128, 256],
        help="batch sizes to draw (default: 4 ... 256; must include the run's batch size)",
    )  # fmt: skip
    q.add_argument("--batches", type=_number(int), default=40, help="batches per batch size")
    q.add_argument("--qq-layer", type=_number(int), default=6, help="layer of the Q-Q plot")
    q.add_argument("--seed", type=_number(int), default=0, help="seed of the batches")
    q.set_defaults(func=_cmd_bn_noise)

    p = sub.add_parser("data", help="locate (or download) a dataset and check that it loads")
    p.add_argument("name", help="fashion-mnist, cifar10, nuclei, dic-hela or folder:PATH")
    p.add_argument("--download", action="store_true", help="download it if not found")
    p.set_defaults(func=_cmd_data)
    return parser


def _reuse_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reuse", action="append", default=[], metavar="DIR",
        help="also look for finished runs and lr searches of the same configuration here",
    )  # fmt: skip


def _run_size_flags(p: argparse.ArgumentParser) -> None:
    """The config flags that change every run of an experiment or benchmark (REPRODUCE_FLAGS)."""
    for flag in REPRODUCE_FLAGS:
        _, kind, text = CONFIG_FLAGS[flag]
        p.add_argument(flag, type=_number(kind) if kind is not str else str, help=text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed, for the records that name it
    try:
        return args.func(args)
    except StochnormError as exc:
        print(f"stochnorm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stochnorm: interrupted; continue a run with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
