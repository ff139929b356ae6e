"""Kaggle credentials never leak: with a (fake) key in the environment and in kaggle.json, a real
notebook run and a `push --dry-run` leave no trace of it in any file they write or in their output."""
from __future__ import annotations

import base64
import json
import secrets
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.notebook  # executes the classification notebook (about half a minute on a CPU)

USER = "kk-credential-check"


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    """A fake key in KAGGLE_KEY and in kaggle.json (under a temp HOME and KAGGLE_CONFIG_DIR)."""
    root = tmp_path_factory.mktemp("credentials")
    key = "kk" + secrets.token_hex(16)
    home, config = root / "home", root / "kaggle-config"
    home.mkdir()
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": USER, "key": key}))
    (config / "kaggle.json").chmod(0o600)
    environ = {"HOME": str(home), "KAGGLE_CONFIG_DIR": str(config), "KAGGLE_USERNAME": USER, "KAGGLE_KEY": key}
    return key, environ, config


def _needles(key: str) -> list[bytes]:
    # The key as text, UTF-16 and in an HTTP basic-auth header (base64 of "user:key").
    return [key.encode(), key.encode("utf-16-le"), base64.b64encode(f"{USER}:{key}".encode())]


def _leaks(folder: Path, key: str, skip: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_relative_to(skip):
            data = path.read_bytes()
            found += [f"{path} holds {n!r}" for n in _needles(key) if n in data]
    return found


@pytest.fixture(scope="module")
def small_competition(digits_competition, tmp_path_factory):
    """The digits demo with 300 training images: one short epoch, whatever the machine's load."""
    data = Path(shutil.copytree(digits_competition, tmp_path_factory.mktemp("small") / "data"))
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(lines[:301]) + "\n")
    return data


def test_a_notebook_run_and_a_push_dry_run_never_write_the_key(credentials, small_competition, tmp_path):
    key, environ, config = credentials
    out = tmp_path / "out"
    run = run_cli("run", "classification", "--data", str(small_competition), "--out", str(out), "--budget", "5m",
                  "-p", "FOLDS", "2", "-p", "TRAIN_FOLDS", "1", "-p", "EPOCHS", "1", "-p", "MIN_EPOCHS", "1",
                  "-p", "IMG_SIZE", "16", "-p", "MODEL", "resnet10t", "-p", "CHECKPOINT_EVERY", "2s", env=environ,
                  timeout=600)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    stage = tmp_path / "stage"
    push = run_cli("push", "classification", "--competition", "digit-recognizer", "--internet", "off",
                   "--dataset", f"{USER}/kagglekit-nb-wheels", "--out", str(stage), "--dry-run", env=environ,
                   cwd=tmp_path, timeout=300)
    assert push.returncode == 0, push.stderr[-3000:]

    # The run wrote what a run writes (so the scan below covers it) and push names the user, not the key.
    assert {"run.json", "image_classification.ipynb", "submission.csv"} <= {p.name for p in out.iterdir()}
    assert list(out.rglob("*.ckpt")), "no checkpoint was written"
    assert json.loads((stage / "kernel-metadata.json").read_text())["id"].startswith(f"{USER}/")

    leaks = _leaks(out, key, skip=config) + _leaks(stage, key, skip=config)
    leaks += _leaks(Path(environ["HOME"]), key, skip=config)  # logs or caches a tool may have written there
    for name, proc in (("run", run), ("push", push)):
        for stream in ("stdout", "stderr"):
            text = getattr(proc, stream)
            leaks += [f"{name} {stream} holds {n!r}" for n in (key, base64.b64encode(f"{USER}:{key}".encode()).decode())
                      if n in text]
    assert leaks == []
