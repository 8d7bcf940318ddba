import json
import math

import pytest
import torch

from stochnorm import RunDirError, TrainConfig, load_run, train
from stochnorm import data as datasets
from stochnorm.bayes import elbo_loss_term
from stochnorm.errors import ConfigError
from stochnorm.noise import noise_modules
from stochnorm.norms import BatchNorm, PopulationNorm, normalizations
from stochnorm.optim import make_optimizer
from stochnorm.runs import RunDir
from stochnorm.train import build_model, make_model

TINY = dict(width=0.1, epochs=2, lr=0.05, lr_decay_epochs=2, eval_train_size=64)


def _strip_times(metrics):
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["history"]]
    return rows, metrics.get("final")


def test_run_directory_contents(tmp_path, tiny_fashion):
    cfg = TrainConfig(**TINY)
    result = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False)
    run = RunDir(tmp_path / "run")
    assert run.config() == cfg
    saved = json.loads(run.metrics_path.read_text())
    assert saved["complete"] and not saved["diverged"]
    assert [r["epoch"] for r in saved["history"]] == [1, 2]
    assert saved["history"][1]["lr"] == pytest.approx(0.05 * 0.1**0.5)
    for key in ("train_loss", "train_eval_loss", "val_loss", "val_acc"):
        assert math.isfinite(saved["history"][-1][key])
    assert set(saved["final"]) == {"val", "test"}
    assert set(saved["final"]["test"]) == {"accuracy", "nll", "ece", "brier"}
    assert saved["provenance"]["torch"] == torch.__version__
    assert run.curves_path.stat().st_size > 10_000  # a real PNG
    assert result.metrics["final"] == saved["final"]
    # the checkpoint holds the final model: reloading reproduces the test metrics
    _, _, model = load_run(run.path)
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_config_the_data_refuses_leaves_the_run_directory_empty(tmp_path, tiny_fashion):
    """The data-time check fails before anything is written, so the corrected command can
    use the same directory."""
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(ConfigError, match="crop_size applies to segmentation"):
        train(TrainConfig(**TINY, crop_size=8), out, data=tiny_fashion, progress=False)
    assert list(out.iterdir()) == []
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train(cfg, out, data=tiny_fashion, progress=False)
    assert RunDir(out).config() == cfg


def test_training_reduces_the_loss(tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 4, "eval_train_size": 256})
    history = train(cfg, data=tiny_fashion, progress=False).metrics["history"]
    assert history[-1]["train_eval_loss"] < 0.8 * math.log(10)  # chance is log(10) = 2.30
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_after_a_crash_ends_with_the_same_metrics(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 3})
    reference = train(cfg, tmp_path / "a", data=tiny_fashion, progress=False).metrics

    crash_in_second_epoch = _interrupt_after(8 + 3)  # 256 images / 32 = 8 steps per epoch
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", data=tiny_fashion, progress=False,
              after_step=[crash_in_second_epoch])  # fmt: skip
    partial = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert len(partial["history"]) == 1 and not partial["complete"]
    resumed = train(cfg, tmp_path / "b", data=tiny_fashion, progress=False, resume=True).metrics
    assert _strip_times(resumed) == _strip_times(reference)


def test_resuming_a_finished_run_leaves_it_as_it_was(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    first = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False)
    written = (tmp_path / "run" / "metrics.json").read_bytes()
    again = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False, resume=True)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == written
    assert again.metrics["final"] == json.loads(written)["final"]
    for name, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name


def test_an_optimizer_state_of_another_layout_is_named(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 2})
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, data=tiny_fashion, progress=False,
              after_step=[_interrupt_after(8 + 1)])  # fmt: skip
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match="optimizer state does not fit"):
        train(cfg, run, data=tiny_fashion, progress=False, resume=True)


def _interrupt_after(steps: int):
    count = {"n": 0}

    def step(model):
        count["n"] += 1
        if count["n"] == steps:
            raise KeyboardInterrupt

    return step


def test_run_dir_guards(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    (tmp_path / "run").mkdir()  # stopped before its first checkpoint: may start again
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    train(cfg, tmp_path / "run", data=tiny_fashion, progress=False)
    with pytest.raises(RunDirError, match="not empty"):
        train(cfg, tmp_path / "run", data=tiny_fashion, progress=False)
    with pytest.raises(RunDirError, match="config differs"):
        train(cfg.replace(lr=0.1), tmp_path / "run", data=tiny_fashion, resume=True)
    with pytest.raises(RunDirError, match="not a run directory"):
        train(cfg, tmp_path / "nothing", data=tiny_fashion, resume=True)


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 3})
    steps = {"n": 0}

    def nan_in_second_epoch(model):
        steps["n"] += 1
        return torch.tensor(math.nan if steps["n"] > 8 else 0.0)

    result = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False,
                   loss_terms=[nan_in_second_epoch])  # fmt: skip
    m = result.metrics
    assert m["diverged"] and not m["complete"] and len(m["history"]) == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert math.isfinite(m["final"]["test"]["nll"])  # evaluated with the last good weights
    saved = RunDir(tmp_path / "run").checkpoint()
    assert len(saved["history"]) == 1
    assert m["divergence"] == "epoch 2: non-finite training loss"
    # the epoch ends at its first non-finite step (256 images, batch 32: 8 steps an epoch)
    assert steps["n"] == 9


def test_a_run_that_diverged_at_once_is_named_as_such(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 2})
    result = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False,
                   loss_terms=[lambda model: torch.tensor(math.nan)])  # fmt: skip
    assert result.metrics["diverged"] and result.metrics["history"] == []
    assert "final" not in result.metrics
    for resume in (False, True):
        with pytest.raises(RunDirError, match="diverged before its first checkpoint"):
            train(cfg, tmp_path / "run", data=tiny_fashion, resume=resume, progress=False)


def test_a_finite_loss_far_above_chance_counts_as_divergence(tmp_path, tiny_fashion):
    from stochnorm.norms import normalizations
    from stochnorm.train import divergence

    limit = 100 * math.log(10)
    assert divergence(2.0, 2.0, 10) is None
    assert divergence(limit * 0.99, math.inf, 10) == "non-finite training loss"
    assert divergence(limit * 1.01, 1.0, 10).startswith("training loss")

    cfg = TrainConfig(**{**TINY, "epochs": 3})
    steps = {"n": 0}

    def huge_logits_in_second_epoch(model):
        # from the 9th step on, the last scale makes the logits ~1e5: NLL large but finite
        steps["n"] += 1
        if steps["n"] > 8:
            with torch.no_grad():
                normalizations(model)[-1].weight.fill_(1e5)

    result = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False,
                   after_step=[huge_logits_in_second_epoch])  # fmt: skip
    m = result.metrics
    assert m["diverged"] and not m["complete"] and len(m["history"]) == 1
    assert m["divergence"].startswith("epoch 2: training loss")
    assert m["final"]["test"]["nll"] < 3  # evaluated with the first epoch's weights
    assert len(RunDir(tmp_path / "run").checkpoint()["history"]) == 1


def test_extension_points_are_called(tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    seen = {"after": 0, "term": 0}

    def after(model):
        seen["after"] += 1

    def term(model):
        seen["term"] += 1
        return sum(p.pow(2).sum() for p in model.parameters()) * 0.0

    train(cfg, data=tiny_fashion, progress=False, after_step=[after], loss_terms=[term])
    assert seen == {"after": 8, "term": 8}


def test_norm_batch_feeds_extra_samples_to_the_statistics(tiny_fashion):
    seen = []

    def record(module, inputs):
        if module.training and isinstance(module, BatchNorm):
            seen.append(len(inputs[0]))

    base = TrainConfig(**{**TINY, "epochs": 1, "eval_train_size": 0})
    losses = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        for norm_batch in (None, 96):
            seen.clear()
            cfg = base.replace(norm_batch=norm_batch)
            result = train(cfg, data=tiny_fashion, progress=False, evaluate=False)
            assert set(seen) == {norm_batch or 32}  # every BN layer, every step
            losses.append(result.metrics["history"][0]["train_loss"])
    finally:
        handle.remove()
    assert losses[0] != losses[1]


@pytest.mark.parametrize("noise", ["bn-like", "bayes"])
def test_noisy_runs_train_and_resume(tmp_path, tiny_fashion, noise):
    cfg = TrainConfig(
        **{
            **TINY,
            "lr": 0.01,
            "norm": "weight",
            "project": True,
            "noise": noise,
            "sigma_v": 0.1,
            "sigma_u": 0.1,
            "sigma_s": 0.2,
        }  # fmt: skip
    )
    result = train(cfg, tmp_path / "run", data=tiny_fashion, progress=False)
    m = result.metrics
    assert m["complete"] and math.isfinite(m["final"]["test"]["nll"])
    if noise == "bayes":  # the objective carries the KL term
        row = m["history"][-1]
        assert row["train_objective"] > row["train_loss"]
    _, _, model = load_run(tmp_path / "run")
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_eval_size_keeps_the_first_validation_and_test_images():
    from stochnorm.errors import ConfigError
    from stochnorm.train import prepare_data

    whole = prepare_data(TrainConfig(subset=0.005))
    capped = prepare_data(TrainConfig(subset=0.005, eval_size=123))
    assert len(capped.val) == len(capped.test) == 123
    assert torch.equal(capped.test.x, whole.test.x[:123])
    assert torch.equal(capped.val.y, whole.val.y[:123])
    assert torch.equal(capped.train.x, whole.train.x)
    with pytest.raises(ConfigError, match="eval_size must be >= 1"):
        TrainConfig(eval_size=0)


def test_noise_lr_factor_scales_only_the_step_of_the_noise_parameters():
    import copy

    from stochnorm.bayes import add_noise
    from stochnorm.models import AllCNN

    torch.manual_seed(0)
    model = add_noise(AllCNN(1, 10, width=0.1, norm="weight"), "bayes", sigma_s=0.2).double()
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (8,))
    moved = {}
    for factor in (1.0, 7.0):
        cfg = TrainConfig(norm="weight", noise="bayes", lr=0.01, noise_lr_factor=factor)
        copy_ = copy.deepcopy(model)
        optimizer = make_optimizer(cfg, copy_)
        for group in optimizer.param_groups:  # as the training loop sets them
            group["lr"] = cfg.lr * group["lr_factor"]
        torch.manual_seed(1)  # the same noise draw for both
        torch.nn.functional.nll_loss(copy_(x), y).backward()
        optimizer.step()
        before = dict(model.named_parameters())
        moved[factor] = {n: p.detach() - before[n].detach() for n, p in copy_.named_parameters()}
    noise_names = [n for n in moved[1.0] if n.endswith("noise.u")]
    assert noise_names and all(moved[1.0][n].abs().max() > 0 for n in noise_names)
    for name, step in moved[1.0].items():
        expected = step * 7.0 if name in noise_names else step
        torch.testing.assert_close(moved[7.0][name], expected, rtol=1e-9, atol=1e-15)


def test_adam_steps_the_noise_parameters_by_their_rate_and_sgd_the_rest(tiny_fashion):
    cfg = TrainConfig(**{**TINY, "norm": "analytic", "noise": "bayes", "noise_lr_factor": 3.0,
                         "noise_optimizer": "adam"})  # fmt: skip
    model = build_model(cfg, tiny_fashion)
    optimizer = make_optimizer(cfg, model)
    kinds = [type(opt).__name__ for opt in optimizer.optimizers]
    assert kinds == ["SGD", "Adam"]
    noise = [p for m in noise_modules(model) for p in m.parameters()]
    assert optimizer.optimizers[1].param_groups[0]["params"] == noise
    assert optimizer.optimizers[1].param_groups[0]["lr"] == pytest.approx(3 * cfg.lr)
    before = [p.detach().clone() for p in noise]
    x, y = tiny_fashion.train.x[:32], tiny_fashion.train.y[:32]
    loss = torch.nn.functional.nll_loss(model.train()(x), y) + elbo_loss_term(cfg.kl_factor, 256)(
        model
    )
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in noise]
    optimizer.step()
    # Adam's first step: the rate times g / (|g| + eps) (bias-corrected moments), about the
    # rate times the sign of the gradient, whatever its size
    for p, b, g in zip(noise, before, grads, strict=True):
        expected = 3 * cfg.lr * g / (g.abs() + 1e-8)
        assert torch.allclose(b - p.detach(), expected, rtol=1e-4, atol=1e-7)
        assert (g.abs() > 1e-4).sum() > 0  # most steps are the full rate


def test_a_run_with_adam_for_the_noise_resumes_exactly(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 3, "norm": "weight", "project": True,
                         "noise": "bayes", "noise_optimizer": "adam", "lr": 0.01})  # fmt: skip
    reference = train(cfg, tmp_path / "a", data=tiny_fashion, progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", data=tiny_fashion, progress=False,
              after_step=[_interrupt_after(8 + 3)])  # fmt: skip
    resumed = train(cfg, tmp_path / "b", data=tiny_fashion, progress=False, resume=True).metrics
    assert _strip_times(resumed) == _strip_times(reference)


def test_initial_sigma_s_per_layer():
    cfg = TrainConfig(norm="weight", noise="bayes", sigma_s=[0.05] * 8 + [0.2], width=0.1)
    assert cfg.sigma_s == (0.05,) * 8 + (0.2,)
    shapes = datasets.Splits("x", *[datasets.Split(torch.zeros(2, 1, 28, 28), torch.zeros(2).long())] * 3,
                             (0.0,), (1.0,), tuple("abcdefghij"), "none")  # fmt: skip
    model = make_model(cfg, shapes)
    sigmas = [m.sigma_s.mean().item() for m in noise_modules(model)]
    assert sigmas == pytest.approx([0.05] * 8 + [0.2], rel=1e-5)
    with pytest.raises(ConfigError, match="noise_optimizer"):
        TrainConfig(noise_optimizer="rmsprop")


def test_ghost_batches_reach_every_batch_norm_and_change_training(tiny_fashion):
    plain = train(TrainConfig(**TINY), data=tiny_fashion, progress=False)
    ghost = train(TrainConfig(**{**TINY, "ghost_batch": 4}), data=tiny_fashion, progress=False)
    layers = [m for m in ghost.model.modules() if isinstance(m, BatchNorm)]
    assert layers and all(m.ghost_batch == 4 for m in layers)
    first = [r["train_loss"] for r in ghost.metrics["history"]]
    assert math.isfinite(first[-1]) and first != [r["train_loss"] for r in plain.metrics["history"]]


def _replica(
    rank, world, init_file, cfg, data, out, queue, resume=False, crash_after=None, record=False
):
    """One process of a data-parallel run (gloo on the CPU, as torchrun would start it);
    `crash_after` steps it is interrupted, as a killed job would be. With `record`, the sum
    of every population norm's running mean as each training forward (from the second step
    on) finds it lands in the metrics as "recorded"."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    steps = {"n": 0}

    def crash(model):  # an exception, not KeyboardInterrupt: spawn ignores that in a child
        steps["n"] += 1
        if steps["n"] == crash_after:
            raise RuntimeError("simulated crash")

    recorded = []

    def watch(model):  # once: a pre-hook on every population norm, seen in training forwards
        if steps.get("watching"):
            return
        steps["watching"] = True
        for layer in model.modules():
            if isinstance(layer, PopulationNorm):
                layer.register_forward_pre_hook(
                    lambda m, _: recorded.append(m.running_mean.double().sum().item())
                    if m.training else None
                )  # fmt: skip

    hooks = ([crash] if crash_after else []) + ([watch] if record else [])
    try:
        result = train(cfg, out, data=data, progress=False, resume=resume, after_step=hooks)
        result.metrics["recorded"] = recorded
        weights = sum(p.double().sum().item() for p in result.model.parameters())
        buffers = {k: b.double().sum().item() for k, b in result.model.named_buffers()}
        queue.put((rank, result.metrics, (weights, buffers)))
    finally:
        dist.destroy_process_group()


def test_data_parallel_training_is_ghost_batch_training_on_one_process(tmp_path, tiny_fashion):
    import torch.multiprocessing as mp

    # lr 0.001: BN at width 0.1 amplifies round-off at larger rates (at lr 0.01 the ghost run
    # on one thread and on two already differ by 0.1% in the second epoch's loss); here DDP and
    # ghost batches agree to 1e-7 while one batch of 32 differs from them by 0.1-0.4%
    cfg = TrainConfig(**{**TINY, "epochs": 2, "lr": 0.001})
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_replica, args=(2, tmp_path / "init", cfg, tiny_fashion, tmp_path / "ddp",
                                       queue), nprocs=2, start_method="spawn")  # fmt: skip
    found = {}
    while not queue.empty():
        rank, metrics, weights = queue.get()
        found[rank] = (metrics, weights)
    assert set(found) == {0, 1}
    assert found[0][1][0] == pytest.approx(found[1][1][0], rel=1e-9)  # identical weights
    ddp = found[0][0]
    assert ddp["replicas"] == 2 and "final" in ddp and "final" not in found[1][0]
    # one process with ghost batches of 16: each replica's BN statistics, the same gradient
    ghost = train(cfg.replace(ghost_batch=16), data=tiny_fashion, progress=False).metrics
    for a, b in zip(ddp["history"], ghost["history"], strict=True):
        # losses: an accuracy on the tiny validation set flips by an image at round-off
        for key in ("train_loss", "train_eval_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    saved = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert saved["final"] == ddp["final"]  # rank 0 alone wrote the run directory


def _data_parallel(tmp_path, name, cfg, data, **options):
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    init = tmp_path / f"init-{name}-{options.get('resume', False)}"
    mp.start_processes(_replica, args=(2, init, cfg, data, tmp_path / name, queue,
                                       options.get("resume", False), options.get("crash_after"),
                                       options.get("record", False)),
                       nprocs=2, start_method="spawn")  # fmt: skip
    found = {}
    while not queue.empty():
        rank, metrics, state = queue.get()
        found[rank] = (metrics, state)
    return found


def test_data_parallel_runs_resume_exactly(tmp_path, tiny_fashion):
    import torch.multiprocessing as mp

    cfg = TrainConfig(**{**TINY, "epochs": 3})
    reference = _data_parallel(tmp_path, "a", cfg, tiny_fashion)[0][0]
    with pytest.raises(mp.ProcessRaisedException, match="simulated crash"):
        _data_parallel(tmp_path, "b", cfg, tiny_fashion, crash_after=8 + 3)  # in epoch 2
    partial = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert len(partial["history"]) == 1
    resumed = _data_parallel(tmp_path, "b", cfg, tiny_fashion, resume=True)[0][0]
    assert _strip_times(resumed) == _strip_times(reference)


def test_analytic_norm_under_data_parallel_needs_no_buffer_broadcast(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "norm": "analytic", "project": True, "lr": 0.01})
    found = _data_parallel(tmp_path, "an", cfg, tiny_fashion)
    (_, (w0, b0)), (_, (w1, b1)) = found[0], found[1]
    assert w0 == pytest.approx(w1, rel=1e-9)
    # statistics computed by each process from its weights: the same without broadcasting
    assert b0.keys() == b1.keys() and any(k.endswith(".mu") for k in b0)
    assert all(b0[k] == pytest.approx(b1[k], rel=1e-6, abs=1e-9) for k in b0)
    # batch-independent: two processes on 16 each are one process on the batch of 32
    single = train(cfg, data=tiny_fashion, progress=False).metrics["history"]
    ddp = found[0][0]["history"]
    # up to round-off, which training amplifies: 1e-5 after the first 8 steps here, 1e-3
    # after 16 (the summation orders of one process and of two differ)
    assert ddp[0]["train_loss"] == pytest.approx(single[0]["train_loss"], rel=1e-4)


def test_synchronized_batch_norm_under_data_parallel_is_one_process_on_the_global_batch(
    tmp_path, tiny_fashion
):
    # At lr 0.01 this tiny BN network is stable to round-off (a relative change of 1e-7 in
    # its initial weights moves its first epoch's loss by 3e-8, the second's by 5e-5); at
    # lr 0.05 round-off grows to 2% within the first epoch, and no two summation orders
    # (one process's, two processes') would compare.
    cfg = TrainConfig(**{**TINY, "lr": 0.01, "sync_bn": True})
    found = _data_parallel(tmp_path, "sync", cfg, tiny_fashion)
    (ddp, (w0, b0)), (_, (w1, b1)) = found[0], found[1]
    assert w0 == pytest.approx(w1, rel=1e-9) and b0 == pytest.approx(b1, rel=1e-9)
    single = train(cfg, data=tiny_fashion, progress=False)  # no process group: no sync needed
    first = (ddp["history"][0]["train_loss"], single.metrics["history"][0]["train_loss"])
    assert first[0] == pytest.approx(first[1], rel=1e-5)  # the first 8 steps: round-off only
    for a, b in zip(ddp["history"], single.metrics["history"], strict=True):
        for key in ("train_loss", "train_eval_loss", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), key
    weights = sum(p.double().sum().item() for p in single.model.parameters())
    buffers = {k: b.double().sum().item() for k, b in single.model.named_buffers()}
    assert w0 == pytest.approx(weights, rel=1e-3)
    assert b0 == pytest.approx(buffers, rel=1e-3, abs=1e-3)  # the global batch's estimates
    # without sync each process normalizes its own 16: another training from the first steps
    apart = _data_parallel(tmp_path, "apart", cfg.replace(sync_bn=False, epochs=1), tiny_fashion)
    apart = apart[0][0]
    assert abs(apart["history"][0]["train_loss"] - first[0]) > 1e-3 * first[0]
    with pytest.raises(ConfigError, match="sync_bn applies to batch norm only"):
        TrainConfig(norm="analytic", sync_bn=True)


def test_population_norm_estimates_agree_on_every_process(tmp_path, tiny_fashion):
    # lr 0.002: stable to round-off (at 0.01 a 1e-7 change of the weights moves the
    # estimates by 40% within an epoch; at 0.05 the run diverges)
    cfg = TrainConfig(**{**TINY, "norm": "population", "epochs": 1, "lr": 0.002})
    found = _data_parallel(tmp_path, "pn", cfg, tiny_fashion)
    (_, (w0, b0)), (_, (w1, b1)) = found[0], found[1]
    assert any(k.endswith("running_var") for k in b0)
    assert b0 == pytest.approx(b1, rel=1e-6, abs=1e-9)  # from the global batch, on each
    assert w0 == pytest.approx(w1, rel=1e-9)
    single = train(cfg, data=tiny_fashion, progress=False).model  # one process, whole batches
    buffers = {k: b.double().sum().item() for k, b in single.named_buffers()}
    assert b0 == pytest.approx(buffers, rel=1e-4, abs=1e-5)


def test_population_norm_broadcast_takes_rank_zeros_estimates(tmp_path, tiny_fashion):
    cfg = TrainConfig(**{**TINY, "norm": "population", "epochs": 1, "lr": 0.002,
                         "population_sync": "broadcast"})  # fmt: skip
    found = _data_parallel(tmp_path, "pnb", cfg, tiny_fashion, record=True)
    (m0, (w0, b0)), (m1, (w1, b1)) = found[0], found[1]
    # 7 steps after the first, 9 layers: every training forward starts from rank 0's estimates
    assert len(m0["recorded"]) == len(m1["recorded"]) == 7 * 9
    assert m1["recorded"] == pytest.approx(m0["recorded"], rel=1e-6, abs=1e-9)
    assert w0 == pytest.approx(w1, rel=1e-9)
    # each process then moves its copy with its own share of the batch: they end apart
    means = [k for k in b0 if k.endswith("running_mean")]
    assert max(abs(b0[k] - b1[k]) for k in means) > 1e-4
    with pytest.raises(ConfigError, match="population_sync applies to population norm only"):
        TrainConfig(norm="batch", population_sync="broadcast")
    with pytest.raises(ConfigError, match="unknown population_sync"):
        TrainConfig(norm="population", population_sync="gossip")


def test_the_history_follows_the_learned_noise_per_layer(tiny_fashion):
    cfg = TrainConfig(**{**TINY, "epochs": 2, "norm": "weight", "project": True, "noise": "bayes",
                         "noise_optimizer": "adam", "lr": 0.01})  # fmt: skip
    result = train(cfg, data=tiny_fashion, progress=False)
    rows = [r["sigma_s_over_s"] for r in result.metrics["history"]]
    layers = [m for m in normalizations(result.model) if m.noise is not None]
    assert len(layers) == 9 and all(len(r) == 9 for r in rows)
    # the last epoch's values are those of the final model: sigma_S / |s| averaged per layer
    final = [(m.noise.sigma_s.expand_as(m.weight) / m.weight.abs()).mean().item() for m in layers]
    assert rows[-1] == pytest.approx(final, rel=1e-6)
    assert rows[0] != rows[-1]  # Adam moves sigma in every epoch
    plain = train(TrainConfig(**TINY), data=tiny_fashion, progress=False).metrics["history"]
    assert all("sigma_s_over_s" not in r for r in plain)


@pytest.mark.parametrize("option", ["rectified_residuals", "border_aware_convs"])
def test_the_refined_moment_rules_are_chosen_in_the_configuration(tiny_fashion, option):
    from stochnorm.analytic import propagation_of

    cfg = TrainConfig(model="resnet20", norm="analytic", width=0.1, **{option: True})
    assert getattr(propagation_of(make_model(cfg, tiny_fashion)), option)
    plain = TrainConfig(model="resnet20", norm="analytic", width=0.1)
    assert not getattr(propagation_of(make_model(plain, tiny_fashion)), option)
    with pytest.raises(ConfigError, match=f"{option} applies to analytic norm only"):
        TrainConfig(norm="weight", **{option: True})
