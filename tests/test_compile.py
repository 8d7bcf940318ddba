"""torch.compile: every registered model with every normalization traces into one graph
(no graph breaks), and compiled training computes what eager training computes."""

import copy

import pytest
import torch
from torch.nn import functional as F

from stochnorm import TrainConfig, add_noise, models, train
from stochnorm.analytic import propagation_of
from stochnorm.norms import Norm

CASES = [(norm.value, None) for norm in Norm if norm is not Norm.NONE] + [
    ("analytic", "bayes"), ("weight", "bayes"), ("batch", "bn-like"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_compile_cache():
    # dynamo recompiles the shared forward code for every new model, 8 times at most
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(name: str, norm: str, noise: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = models.build(name, 1, 10, norm=norm, width=0.1)
    if noise == "bayes":
        add_noise(net, "bayes", sigma_s=0.2)
    elif noise == "bn-like":
        add_noise(net, "bn-like", sigma_v=0.1, sigma_u=0.1)
    return net


@pytest.mark.parametrize(
    "model, norm, noise, rectified",
    [("allcnn", *case, False) for case in CASES]
    + [("resnet20", "analytic", None, False), ("resnet20", "analytic", "bayes", False),
       ("resnet20", "population", None, False), ("resnet20", "analytic", None, True)],
    ids=str,
)  # fmt: skip
def test_a_training_step_compiles_into_one_graph_and_matches_eager(model, norm, noise, rectified):
    # fullgraph=True raises at the first graph break; aot_eager traces forward and backward
    # (the closed-form gradients of the moment rules included) without generating code;
    # `rectified`: the residual ReLU rule (its table lookup and quadrature) as well
    eager = _model(model, norm, noise)
    if rectified:
        propagation_of(eager).rectified_residuals = True
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)
    for net in (eager, compiled):
        torch.manual_seed(2)  # the same noise draws
        F.nll_loss(net(x), y).backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, b), c in zip(eager.named_buffers(), compiled_net.buffers(), strict=True):
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_training_run_matches_the_eager_run(tiny_fashion, monkeypatch):
    cfg = TrainConfig(norm="analytic", noise="bayes", project=True, width=0.1, epochs=1,
                      lr=0.05, lr_decay_epochs=1, eval_train_size=64)  # fmt: skip
    eager = train(cfg, data=tiny_fashion, progress=False).metrics
    calls, real_compile = [], torch.compile

    def compile_without_codegen(module, **kwargs):
        calls.append(module)
        return real_compile(module, fullgraph=True, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_without_codegen)
    compiled = train(cfg, data=tiny_fashion, progress=False, compiled=True).metrics
    assert len(calls) == 1
    got, want = compiled["history"][0], eager["history"][0]
    for key in ("train_loss", "val_loss", "val_acc"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


def test_the_max_pool_rule_compiles_into_one_graph_and_matches_eager():
    """The stem of a resnet with its max-pool after the exact first layer (the correlated
    max of `moments.exchangeable_max`, its window types built in Python): one graph, the eager
    gradients."""
    from stochnorm import convert

    from .test_analytic import _PooledStem, _smooth_field

    torch.manual_seed(0)
    x = _smooth_field(64, 15)
    eager = torch.nn.Sequential(convert(_PooledStem(), "analytic", inputs=x),
                                torch.nn.Flatten(), torch.nn.LazyLinear(3))  # fmt: skip
    eager(x[:2])  # materialize the lazy layer
    assert propagation_of(eager[0]).patch_cross is not None
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True, backend="aot_eager")
    y = torch.tensor([0, 1, 2, 0])
    for net in (eager, compiled):
        F.cross_entropy(net(x[:4]), y).backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
