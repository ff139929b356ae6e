"""Shared fixtures: demo competitions are written once per test session and copied when mutated."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests never download: WEIGHTS = "auto" then finds nothing and starts from random weights at once
# (the notebooks run in subprocesses, which inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits_competition(tmp_path_factory) -> Path:
    """The digits demo with string ids and labels, 28x28 grayscale PNGs (read-only: copy to mutate)."""
    from kagglekit_nb.demo import make_classification_demo

    return make_classification_demo(tmp_path_factory.mktemp("digits") / "data", seed=7)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900):
    """Run `python -m kagglekit_nb ARGS` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kagglekit_nb", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def copy_tree(tmp_path):
    def _copy(src: Path, name: str = "data") -> Path:
        return Path(shutil.copytree(src, tmp_path / name))
    return _copy
