"""Where and with what a result was produced: stored beside every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def hardware(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads} torch thread{'s' * (threads != 1)}"


def git_commit() -> str:
    """The commit of the source tree this package runs from, '+dirty' if the package's own
    files have changes (results written beside it elsewhere in the checkout do not count)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device | str = "cpu") -> dict[str, str]:
    return {
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "hardware": hardware(device),
    }
