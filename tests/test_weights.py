"""Tests for kagglekit_nb.weights: WEIGHTS="auto" finds weights in a Hugging Face cache built here (no
network), else downloads when online, else falls back to random weights fast with one warning; timm
and smp models load exactly the cached tensors; `kagglekit weights` makes a dataset the notebooks find."""
from __future__ import annotations

import hashlib
import json
import math
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from conftest import hub_snapshot, make_hf_cache

from kagglekit_nb import weights as W
from kagglekit_nb.budget import Budget
from kagglekit_nb.run import Run

MODEL = "test_resnet"                   # timm's smallest resnet (470k parameters)
REPO = "timm/test_resnet.r160_in1k"     # what timm's pretrained=True downloads for it
MEAN, STD = [0.1, 0.2, 0.3], [0.9, 0.8, 0.7]  # not timm's defaults: normalisation must come from the file


@pytest.fixture
def hf_cache(tmp_path):
    """HF_HOME with test_resnet's weights (seeded random values) saved by timm's own hub writer."""
    return make_hf_cache(tmp_path / "hf", staged=tmp_path / "staged", mean=MEAN, std=STD)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The session's environment: no network, nothing in ./weights, an empty HF_HOME unless a test fills it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf")}


def _places(tmp_path: Path) -> dict:
    return {"input_root": tmp_path / "no-input", "local_dir": tmp_path / "no-weights"}


def _run(tmp_path: Path, lines: list) -> Run:
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    return Run(name="t", dir=out, budget=Budget(total_s=math.inf), device=torch.device("cpu"), seed=0,
               echo=lines.append)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- resolving


def test_auto_finds_the_hub_cache_snapshot(hf_cache, tmp_path):
    environ = {"HF_HOME": str(hf_cache.home), "HF_HUB_OFFLINE": "1"}
    found = W.resolve_weights(MODEL, "auto", repo=W.timm_repo(MODEL), environ=environ, **_places(tmp_path))
    assert (found.source, found.path, found.sha256) == ("attached", hf_cache.path, _sha(hf_cache.path))
    assert found.warning is None and found.record()["sha256"] == _sha(hf_cache.path)


def test_auto_loads_exactly_the_cached_tensors_and_their_normalisation(hf_cache, tmp_path, monkeypatch):
    """One grayscale channel and 7 classes: timm sums the RGB kernels of the first layer and replaces
    the head; every other tensor is the cached one, bit for bit; mean/std are the file's own."""
    import timm

    from kagglekit_nb.tasks import classification as clf

    monkeypatch.setenv("HF_HOME", str(hf_cache.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    run = _run(tmp_path, lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found weights: no warning
        model = clf.build_model(clf.Config(MODEL=MODEL), n_classes=7, in_chans=1, run=run)
    state, cached = model.state_dict(), hf_cache.state
    first = timm.create_model(MODEL).pretrained_cfg["first_conv"] + ".weight"
    assert state[first].shape[1] == 1
    assert torch.allclose(state[first], cached[first].sum(1, keepdim=True))
    assert state["fc.weight"].shape[0] == 7
    same = [k for k in cached if k not in (first, "fc.weight", "fc.bias")]
    assert len(same) > 80 and all(torch.equal(state[k], cached[k]) for k in same)
    assert clf.normalization(model, 1) == (pytest.approx([0.2]), pytest.approx([0.8]))
    assert clf.normalization(model, 3) == (pytest.approx(MEAN), pytest.approx(STD))
    assert run.record["weights"] == {"source": "attached", "model": MODEL, "path": str(hf_cache.path),
                                     "sha256": _sha(hf_cache.path)}
    assert sum(str(hf_cache.path) in line for line in lines) == 1


def test_auto_without_weights_or_network_is_random_fast_with_one_warning(offline, tmp_path):
    """Nothing attached, HF_HUB_OFFLINE=1: no network attempt, so the decision is a few folder
    lookups. 5 s is far above that (milliseconds) and far below a connect attempt that hangs."""
    from kagglekit_nb.tasks import classification as clf

    lines: list[str] = []
    run = _run(tmp_path, lines)
    t0 = time.monotonic()
    with pytest.warns(UserWarning) as caught:
        for _ in range(3):  # three folds: one warning
            clf.build_model(clf.Config(MODEL=MODEL), n_classes=3, in_chans=3, run=run)
    assert time.monotonic() - t0 < 5.0
    said = [str(w.message) for w in caught if "random weights" in str(w.message)]
    assert len(said) == 1 and sum("WARNING:" in line for line in lines) == 1
    assert f"kagglekit weights {MODEL} --out DIR" in said[0] and "Internet" in said[0] and "./weights/" in said[0]
    assert run.record["weights"] == {"source": "random", "model": MODEL, "path": None, "sha256": None}


def test_offline_variable_means_no_connect_attempt():
    def boom(host, port, timeout):
        raise AssertionError("no network attempt when HF_HUB_OFFLINE is set")

    assert W.has_internet({"HF_HUB_OFFLINE": "1"}, connect=boom) is False
    assert W.has_internet({}, connect=lambda host, port, timeout: (host, timeout) == (W.HUB_HOST, 2.0))


def test_the_connect_check_is_bounded_when_offline(monkeypatch):
    """An unresolvable name answers False; a name lookup or connect that hangs (an offline machine
    with a slow resolver) is cut at the timeout, since the attempt runs in a thread. The bound of
    2 s for a 0.5 s timeout, against a connect that would take 30 s, leaves room for a loaded machine."""
    assert W.has_internet({}, host="no-such-host.invalid", timeout=0.5) is False

    def hangs(address, timeout=None):
        time.sleep(30)

    monkeypatch.setattr(W.socket, "create_connection", hangs)
    t0 = time.monotonic()
    assert W.has_internet({}, host="hangs.example", timeout=0.5) is False
    assert time.monotonic() - t0 < 2.0
    assert W.has_internet({}, host="hangs.example", timeout=0.5) is False  # answered once per process
    assert time.monotonic() - t0 < 2.0


def test_auto_downloads_when_online_and_warns_when_that_fails(tmp_path):
    hub = tmp_path / "hub"
    got = []

    def download(repo, cache):
        got.append((repo.repo_id, cache))
        return hub_snapshot(cache, repo.repo_id, {"w": torch.ones(2)})

    found = W.resolve_weights(MODEL, "auto", repo=W.timm_repo(MODEL), hub_cache=hub, online=True, download=download,
                              **_places(tmp_path))
    assert got == [(REPO, hub)] and found.source == "hub" and found.sha256 == _sha(found.path)
    assert W.resolve_weights(MODEL, "auto", repo=W.timm_repo(MODEL), hub_cache=hub, online=False,
                             **_places(tmp_path)).source == "attached"  # the download is in the cache now

    def fails(repo, cache):
        raise OSError("connection reset")

    broken = W.resolve_weights(MODEL, "auto", repo=W.timm_repo(MODEL), hub_cache=tmp_path / "other", online=True,
                               download=fails, **_places(tmp_path))
    assert broken.source == "random" and f"download of {REPO} failed (OSError: connection reset)" in broken.warning


def test_none_is_random_on_purpose_and_a_path_is_that_file(tmp_path):
    quiet = W.resolve_weights(MODEL, None)
    assert (quiet.source, quiet.path, quiet.warning) == ("random", None, None)
    file = tmp_path / "mine.pth"
    torch.save({"w": torch.zeros(1)}, file)
    chosen = W.resolve_weights(MODEL, str(file))
    assert (chosen.source, chosen.path, chosen.sha256) == ("file", file, _sha(file))
    with pytest.raises(FileNotFoundError, match=r"WEIGHTS='.*missing.pth' is not a file"):
        W.resolve_weights(MODEL, str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="must be 'auto', None"):
        W.resolve_weights(MODEL, "")


def test_a_file_of_another_model_is_a_clear_error(tmp_path):
    from kagglekit_nb.tasks import classification as clf

    file = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match=rf"the weights .*other.pth do not fit the timm model '{MODEL}'"):
        clf.build_model(clf.Config(MODEL=MODEL, WEIGHTS=str(file)), 3, 3)


# --------------------------------------------------------------------------- smp encoders


def test_smp_encoder_loads_the_cached_weights(tmp_path, monkeypatch):
    """A U-Net with smp's resnet18 encoder and 5 bands: every encoder tensor is the cached one; the
    red, green and blue kernels go to those bands, the others get the mean kernel."""
    import segmentation_models_pytorch as smp

    from kagglekit_nb.tasks.glacier import training

    torch.manual_seed(3)
    cached = {k: v.clone() for k, v in smp.encoders.get_encoder("resnet18").state_dict().items()}
    path = hub_snapshot(tmp_path / "hf" / "hub", W.smp_repo("resnet18").repo_id, cached)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    bands = ["blue", "green", "red", "swir1", "nir"]
    model = training.build_unet("resnet18", in_channels=5, n_classes=4)
    lines: list[str] = []
    run = _run(tmp_path, lines)
    cfg = training.SegConfig(ENCODER="resnet18")
    training._initialise(model, cfg, types.SimpleNamespace(bands=bands), None, run, lines.append)
    encoder = model.encoder.state_dict()
    others = [k for k in cached if k != "conv1.weight"]
    assert len(others) > 100 and all(torch.equal(encoder[k], cached[k]) for k in others)
    first, rgb = encoder["conv1.weight"], cached["conv1.weight"]
    for j, src in ((0, 2), (1, 1), (2, 0)):  # blue, green, red from the RGB kernels' channels 2, 1, 0
        assert torch.equal(first[:, j], rgb[:, src])
    assert torch.allclose(first[:, 3], rgb.sum(1) / 5) and torch.allclose(first[:, 4], rgb.sum(1) / 5)
    assert run.record["weights"]["source"] == "attached" and run.record["weights"]["path"] == str(path)


def test_smp_encoder_rejects_weights_of_another_model(tmp_path, monkeypatch):
    import timm

    from kagglekit_nb.tasks.glacier import training

    monkeypatch.chdir(tmp_path)
    file = tmp_path / "resnet18.pth"
    torch.save(timm.create_model(MODEL).state_dict(), file)
    model = training.build_unet("resnet18", in_channels=5, n_classes=4)
    cfg = training.SegConfig(ENCODER="resnet18", WEIGHTS=str(file))
    with pytest.raises(ValueError, match="do not fit the encoder 'resnet18'.*kagglekit weights resnet18"):
        training._initialise(model, cfg, types.SimpleNamespace(bands=["red", "green", "blue", "nir", "swir1"]),
                             None, _run(tmp_path, []), print)


# --------------------------------------------------------------------------- kagglekit weights


def test_weights_command_makes_a_dataset_the_notebooks_find(hf_cache, tmp_path, monkeypatch):
    from kagglekit_nb.cli import main

    monkeypatch.setenv("HF_HOME", str(hf_cache.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "dataset"
    assert main(["weights", MODEL, "--out", str(out), "--dataset", "alice/my-weights"]) == 0
    saved = out / "test_resnet.r160_in1k" / "model.safetensors"
    assert saved.read_bytes() == hf_cache.path.read_bytes()
    assert json.loads((out / "test_resnet.r160_in1k" / "config.json").read_text())["pretrained_cfg"]["mean"] == MEAN
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/my-weights" and meta["licenses"] == [{"name": "other"}]
    # attached as a Kaggle dataset, "auto" finds it there
    found = W.resolve_weights(MODEL, "auto", repo=W.timm_repo(MODEL), input_root=out, local_dir=tmp_path / "no",
                              hub_cache=tmp_path / "no-hub", online=False)
    assert (found.source, found.path) == ("attached", saved)


def test_weights_command_offline_without_a_cache_says_so(tmp_path, monkeypatch, capsys):
    from kagglekit_nb.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", MODEL, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "could not get the weights of test_resnet" in err and "no internet" in err
    assert main(["weights", "no_such_model_xyz", "--out", str(tmp_path / "out")]) == 2
    assert "has no pretrained weights on the hub" in capsys.readouterr().err
