"""The README's library example runs as written and does what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs():
    text = README.read_text()
    section = text.split("## Library use", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    probs, single, model = scope["probs"], scope["single"], scope["model"]
    assert probs.shape == single.shape == (32, 10)
    assert torch.allclose(probs.sum(1), torch.ones(32), atol=1e-5)
    # noise sampled: MC differs from the mean-parameter pass, which is deterministic
    assert not torch.allclose(probs, single)
    assert torch.equal(single, scope["stochnorm"].predict(model, scope["x"]))
    # the weights are back on the unit sphere after the step
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        norms = conv.weight.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
