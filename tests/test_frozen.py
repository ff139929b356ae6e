"""The classical model on frozen pretrained embeddings (tasks/frozen.py): it runs only with real
weights (here a Hugging Face cache built in the test, no network), caches its embeddings chunk by
chunk, and becomes one more candidate of the chooser."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_hf_cache

from kagglekit_nb.tasks import classification as clf
from kagglekit_nb.tasks import frozen
from test_classification import _tiny

MODEL = "test_resnet"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """HF_HOME holding test_resnet's weights (seeded values, written by timm's own hub writer)."""
    cache = make_hf_cache(tmp_path / "hf", staged=tmp_path / "staged", seed=3)
    monkeypatch.setenv("HF_HOME", str(cache.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no ./weights here
    return cache


def _setup(tmp_path, **overrides):
    data_dir = _tiny(tmp_path / "c", per_class=10, n_test=6, halves=True)
    cfg = clf.Config(DATA_DIR=str(data_dir), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="1h", SEED=0, FOLDS=2,
                     MODEL=MODEL, BATCH_SIZE=8, NUM_WORKERS=0, DEVICE="cpu", **overrides)
    lines: list[str] = []
    run = clf.start(cfg, environ={}, echo=lines.append)
    data = clf.load(cfg, run)
    return cfg, run, data, clf.make_folds(data, cfg, run), lines


def test_with_pretrained_weights_the_embeddings_become_a_candidate(tmp_path, hf_cache, monkeypatch):
    monkeypatch.setattr(frozen, "CHUNK", 8)  # 20 train images: three cache files
    monkeypatch.setattr(frozen, "CPU_MAX_SIZE", 48)
    cfg, run, data, folds, lines = _setup(tmp_path)
    result = frozen.stage(data, folds, cfg, run)
    assert result is not None and result.oof.shape == (20, 2) and result.test.shape == (6, 2)
    assert result.score == 1.0  # bright left half vs bright right half
    record = run.record["frozen"]
    assert record["weights"]["path"] == str(hf_cache.path) and record["weights"]["source"] == "attached"
    assert record["computed"] == 26 and record["cached"] == 0 and record["img_size"] == 48  # 160 px, capped on a CPU
    chunks = sorted(p.name for p in (run.dir / "embeddings" / record["key"] / "train" / "chunks8").iterdir())
    assert chunks == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]

    (run.dir / frozen.FILE).unlink()  # a later session: the fit again, the embeddings from the cache but one file
    (run.dir / "embeddings" / record["key"] / "train" / "chunks8" / "chunk_00001.npz").unlink()
    again = frozen.stage(data, folds, cfg, run)
    assert run.record["frozen"]["cached"] == 18 and run.record["frozen"]["computed"] == 8
    np.testing.assert_allclose(again.oof, result.oof, atol=1e-6)

    clf.predict(data, None, cfg, run)  # a session that only predicts finds the saved stage
    assert set(run.record["candidates"]) >= {"baseline", "embeddings"}
    assert run.record["candidates"]["embeddings"] == pytest.approx(1.0)
    assert any("frozen embeddings (test_resnet, attached weights)" in line for line in lines)


def test_without_pretrained_weights_the_stage_is_skipped_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    cfg, run, data, folds, lines = _setup(tmp_path)
    assert frozen.stage(data, folds, cfg, run) is None
    assert run.record["frozen"] == {"skipped": "no pretrained weights attached or downloadable"}
    assert not (run.dir / "embeddings").exists()
    cfg, run, data, folds, _ = _setup(tmp_path / "none", WEIGHTS=None)  # random on purpose: no stage either
    assert frozen.stage(data, folds, cfg, run) is None


def test_weights_that_do_not_fit_the_backbone_skip_the_stage_with_a_warning(tmp_path, monkeypatch):
    """The stage is an extra candidate: weights it cannot load (here a file of another model given as
    WEIGHTS) leave the run going, with the reason in the log and run.json."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.safetensors"
    save_file({"not.a.resnet.weight": torch.zeros(3)}, str(other))
    cfg, run, data, folds, lines = _setup(tmp_path, WEIGHTS=str(other))
    assert frozen.stage(data, folds, cfg, run) is None
    assert run.record["frozen"]["weights"]["path"] == str(other) and run.record["frozen"]["skipped"]
    assert any("WARNING: frozen embeddings skipped, test_resnet could not embed" in line for line in lines)
