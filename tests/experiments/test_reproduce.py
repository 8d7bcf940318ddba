"""Every experiment of `stochnorm reproduce` end to end in its demo profile on tiny settings,
plus the lab's caching and the verdict logic."""

import json

import pytest

from stochnorm.cli import main
from stochnorm.experiments import registry
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE


@pytest.mark.parametrize("name", list(registry()))
def test_experiment_runs_in_demo_profile(name, reproduced):
    shared_out, printed = reproduced
    printed = printed.split(f"{name} (")[1].split("\n  ")[0]
    record = json.loads((shared_out / name / "result.json").read_text())
    assert record["verdict"]["status"] in (HOLDS, FAILS, INCONCLUSIVE)
    assert record["verdict"]["status"] in printed and record["verdict"]["summary"]
    assert record["profile"] == "demo" and record["overrides"]["width"] == 0.1
    assert record["figures"], "every experiment draws at least one figure"
    for figure in record["figures"]:
        assert (shared_out / name / figure).stat().st_size > 5_000


def test_list_names_every_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    printed = capsys.readouterr().out
    for name in registry():
        assert name in printed


def test_unknown_experiment_is_a_one_line_error(capsys):
    assert main(["reproduce", "fig99"]) == 2
    assert "unknown experiment 'fig99'" in capsys.readouterr().err
