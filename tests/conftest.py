"""Shared fixtures: demo competitions are written once per test session and copied when mutated;
a fake clock (`_fakes.FakeClock`) for code that takes `clock=`; notebook executions that several test
files check (each notebook is executed once per session and reused)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _fakes import FakeClock

ROOT = Path(__file__).resolve().parent.parent

# Tests never download: WEIGHTS = "auto" then finds nothing and starts from random weights at once
# (the notebooks run in subprocesses, which inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Extracted archives and images built from pixel rows go to a scratch folder of the test session, never
# into the repository (notebook subprocesses inherit this).
if "OMP_NUM_THREADS" not in os.environ:
    # torch's own default, made explicit: runs then keep it instead of timing thread counts
    # (`cv.time_setup`), so two runs of one test give the same numbers (tests/test_cv.py times them)
    import torch

    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
if "KAGGLEKIT_SCRATCH" not in os.environ:
    import atexit
    import tempfile

    os.environ["KAGGLEKIT_SCRATCH"] = tempfile.mkdtemp(prefix="kagglekit-scratch-")
    atexit.register(shutil.rmtree, os.environ["KAGGLEKIT_SCRATCH"], ignore_errors=True)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh `FakeClock` at its default start (1000.0); build `FakeClock(t)` for another start."""
    return FakeClock()


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


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(hub: Path, repo_id: str, tensors: dict, config: dict | None = None) -> Path:
    """A hub cache entry as huggingface_hub writes it: refs/main names the snapshot holding the files."""
    import json

    from safetensors.torch import save_file

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / HUB_REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_REVISION)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / "model.safetensors"))
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot / "model.safetensors"


def make_hf_cache(home: Path, *, staged: Path, model: str = "test_resnet", repo: str = "timm/test_resnet.r160_in1k",
                  mean: list | None = None, std: list | None = None, seed: int = 7):
    """An HF_HOME folder holding `model`'s weights (seeded random values) as timm's own hub writer saves
    them, under the repo timm's pretrained=True reads; `.home`, `.path` (the safetensors file), `.state`."""
    import json
    import types

    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    net = timm.create_model(model)
    save_for_hf(net, str(staged), safe_serialization=True)
    config = json.loads((staged / "config.json").read_text())
    if mean is not None:
        config["pretrained_cfg"].update(mean=mean, std=std)
    path = hub_snapshot(Path(home) / "hub", repo, net.state_dict(), config)
    return types.SimpleNamespace(home=Path(home), path=path, state=net.state_dict())


@pytest.fixture
def copy_tree(tmp_path):
    def _copy(src: Path, name: str = "data") -> Path:
        return Path(shutil.copytree(src, tmp_path / name))
    return _copy


# --------------------------------------------------------------------------- notebook executions

# A budget that never binds for the small runs below, so their plan is EPOCHS on any machine and a
# second execution reproduces the first (test_nbval.py); the budget logic itself is tested on fake clocks.
GENEROUS_BUDGET = "30m"
GLACIER_SMALL = ["-p", "ENCODER", "resnet18", "-p", "SAMPLES_PER_EPOCH", "48", "-p", "MIN_EPOCHS", "1"]
GLACIER_FINETUNE = [*GLACIER_SMALL, "-p", "FOLDS", "3", "-p", "TRAIN_FOLDS", "1", "-p", "EPOCHS", "2",
                    "-p", "HOLDOUT", "3", "-p", "TTA", "none", "-p", "CHECKPOINT_EVERY", "1s",
                    "-p", "RUN_NAME", "glacier_resume"]


@dataclass(frozen=True)
class NotebookRun:
    """One finished `kagglekit run`: the output folder, the folder it ran in (where a notebook without
    DATA_DIR finds or writes its demo data), and what it printed."""

    out: Path
    cwd: Path
    stdout: str

    @property
    def executed(self) -> Path:
        """The executed copy of the notebook, with its outputs (papermill writes it into OUTPUT_DIR)."""
        (path,) = self.out.glob("*.ipynb")
        return path


def run_notebook(notebook: str, out: Path, *args: str, cwd: Path) -> NotebookRun:
    """`kagglekit run NOTEBOOK --out OUT ARGS` from `cwd`; fails the test unless it succeeds."""
    proc = run_cli("run", notebook, "--out", str(out), *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return NotebookRun(out=out, cwd=cwd, stdout=proc.stdout)


def glacier_finetune_command(out: Path, pretrained: Path) -> list[str]:
    """The fine-tune run on the generated demo (found from the working folder), started from `pretrained`."""
    return [sys.executable, "-m", "kagglekit_nb", "run", "glacier_finetune", "--out", str(out),
            "--budget", GENEROUS_BUDGET, "-p", "PRETRAINED", str(pretrained), *GLACIER_FINETUNE]


@pytest.fixture(scope="session")
def glacier_workdir(tmp_path_factory) -> Path:
    """Where the glacier notebooks run: the first one writes the demo (HKH patches and GlacierHack
    tiles) into kagglekit_demo/ here, the others find it."""
    return tmp_path_factory.mktemp("glacier_runs")


@pytest.fixture(scope="session")
def glacier_pretrained(glacier_workdir) -> NotebookRun:
    """glacier_pretrain on its generated demo: 2 epochs, 7 of the 15 bands."""
    return run_notebook("glacier_pretrain", glacier_workdir / "pretrain", "--budget", GENEROUS_BUDGET,
                        *GLACIER_SMALL, "-p", "EPOCHS", "2", "-p", "BANDS", "blue,green,red,nir,swir1,swir2,thermal",
                        cwd=glacier_workdir)


@pytest.fixture(scope="session")
def glacier_finetuned(glacier_workdir, glacier_pretrained) -> NotebookRun:
    """glacier_finetune from the pretrained weights, straight through (no kill)."""
    out = glacier_workdir / "finetune"
    proc = subprocess.run(glacier_finetune_command(out, glacier_pretrained.out), cwd=glacier_workdir,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return NotebookRun(out=out, cwd=glacier_workdir, stdout=proc.stdout)
