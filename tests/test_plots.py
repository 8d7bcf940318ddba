"""Plots: drawn from made-up histories, checked as files and by their helpers."""

import pytest
import torch

from stochnorm.plots import (
    plot_curve_rows,
    plot_grouped_bars,
    plot_learned_noise,
    plot_seed_spread,
    running_mean_std,
)
from tests.histories import history as made_up_history


def test_grouped_bars_draw_groups_with_missing_bars(tmp_path):
    values = {"batch": {"single": 0.3}, "an-bayes": {"single": 0.4, "MC-10": 0.25, "MC-30": 0.2}}
    path = plot_grouped_bars(values, tmp_path / "bars.png", ylabel="NLL", title="t")
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize("window", [1, 3, 10, 50])
def test_running_mean_std_matches_unfolded_windows(window):
    values = torch.randn(30, dtype=torch.float64).tolist()
    means, stds = running_mean_std(values, window)
    padded = torch.tensor(values, dtype=torch.float64)
    for t in range(len(values)):
        chunk = padded[max(0, t - window + 1) : t + 1]
        assert means[t] == pytest.approx(chunk.mean().item(), abs=1e-12)
        expected = chunk.std(correction=1).item() if len(chunk) > 1 else 0.0
        assert stds[t] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        running_mean_std(values, 0)


def test_protocol_plots_are_written(tmp_path):
    runs = {"a": made_up_history([0.5, 0.6, 0.7]), "b": made_up_history([0.4, 0.5, 0.65])}
    rows = plot_curve_rows({"none": runs, "batch": runs}, tmp_path / "rows.png")
    spread = plot_seed_spread({"batch": runs, "analytic": runs}, tmp_path / "spread.png")
    assert rows.stat().st_size > 5_000 and spread.stat().st_size > 5_000


def test_learned_noise_plot_skips_rows_without_it(tmp_path):
    # a resumed old run: the first epochs were trained before the history kept sigma
    rows = [{"epoch": 1}] + [{"epoch": e, "sigma_s_over_s": [0.1 * e, 0.05]} for e in (2, 3)]
    path = plot_learned_noise({"an": rows, "wn": rows[1:]}, tmp_path / "s.png", reference=[0.4])
    assert path.stat().st_size > 5_000
