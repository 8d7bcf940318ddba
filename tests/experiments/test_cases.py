"""The shared runs: their measurement settings as the CLI has them."""

from stochnorm.cli import build_parser
from stochnorm.experiments.cases import PROFILE_SETTINGS


def test_quick_and_full_measure_bn_noise_as_the_cli_does():
    # so that the BN-like sigmas equal those of `stochnorm diagnose bn-noise RUN`
    args = build_parser().parse_args(["diagnose", "bn-noise", "RUN"])
    for profile in ("quick", "full"):
        s = PROFILE_SETTINGS[profile]
        assert list(s["bn_batch_sizes"]) == args.batch_sizes
        assert s["bn_batches"] == args.batches
    assert 32 in PROFILE_SETTINGS["demo"]["bn_batch_sizes"]  # the training batch size
