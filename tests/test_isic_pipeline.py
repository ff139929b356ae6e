"""Tests for kagglekit_nb.tasks.isic (pipeline and its steps): the embedding cache, resumable extraction, folds, features,
LightGBM (leak-proof, reused, budgeted), prediction averaging, fine-tuning out of fold."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import h5py
import lightgbm
import numpy as np
import pandas as pd
import pytest
import torch
from _fakes import FakeClock

from kagglekit_nb import distributed
from kagglekit_nb.budget import Budget
from kagglekit_nb.metrics import partial_auc
from kagglekit_nb.run import Run
from kagglekit_nb.tasks.isic import ID_COLUMNS, TRAIN_ONLY_COLUMNS
from kagglekit_nb.tasks.isic import data as D
from kagglekit_nb.tasks.isic import embeddings as E
from kagglekit_nb.tasks.isic import features as F
from kagglekit_nb.tasks.isic import finetune as FT
from kagglekit_nb.tasks.isic import lgbm as L
from kagglekit_nb.tasks.isic import pipeline as task

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "isic_embed_lgbm.ipynb"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small demo competition (read-only: copy to mutate): 200 train, 40 test lesions."""
    from kagglekit_nb.demo.isic import make_isic_demo

    return make_isic_demo(tmp_path_factory.mktemp("isic") / "data", seed=3, n_train=200, n_test=40)


def make_run(out: Path, *, budget: float = math.inf, clock=None, lines: list | None = None) -> Run:
    clock = clock or FakeClock()
    out.mkdir(parents=True, exist_ok=True)
    echo = lines.append if lines is not None else (lambda _: None)
    return Run(name="isic", dir=out, budget=Budget(total_s=budget, clock=clock), device=torch.device("cpu"),
               seed=0, echo=echo)


def make_cfg(demo: Path, **overrides) -> task.Config:
    small = {"DATA_DIR": str(demo), "MODEL": "test_resnet", "IMG_SIZE": 32, "BATCH_SIZE": 16, "EMBED_CHUNK": 64,
             "IMAGE_PCA": 8, "FOLDS": 3, "LGBM_SEEDS": 2, "MAX_ROUNDS": 60, "EARLY_STOPPING": 10, "NUM_WORKERS": 0,
             "SEED": 0}
    return task.Config(**{**small, **overrides})


def quiet_embeddings(comp, cfg, run):
    with pytest.warns(UserWarning, match="random weights"):
        return E.embeddings(comp, cfg, run)


def _trained(feats, models) -> task.Trained:
    """What `task.train` returns, built from the steps a test ran one by one."""
    return task.Trained(embeddings=None, image_scores=None, features=feats, lgbm=models)


@pytest.fixture
def lgb_calls(monkeypatch):
    """Every lightgbm.train call of the pipeline: (training rows' frame, labels, validation frame)."""
    calls = []
    real = lightgbm.train

    def spy(params, train_set, *args, **kwargs):
        valid = kwargs["valid_sets"][0]
        calls.append({"X": train_set.data, "y": np.asarray(train_set.label), "val": valid.data, "params": params,
                      "callbacks": kwargs.get("callbacks", [])})
        return real(params, train_set, *args, **kwargs)

    monkeypatch.setattr(lightgbm, "train", spy)
    return calls


# --- config and notebook ----------------------------------------------------------------------

def test_notebook_parameters_equal_the_config_defaults():
    from kagglekit_nb.runner import notebook_parameters

    params = notebook_parameters(NOTEBOOK)
    defaults = {f.name: f.default for f in dataclasses.fields(task.Config)}
    assert list(params) == list(defaults)
    assert list(params)[:5] == ["DATA_DIR", "OUTPUT_DIR", "BUDGET", "SEED", "RUN_NAME"]
    for name, default in defaults.items():
        assert params[name] == default and type(params[name]) is type(default), name
    task.Config(**params)


@pytest.mark.parametrize(("overrides", "error", "message"), [
    ({"SUBMIT": "stacked"}, ValueError, "SUBMIT='stacked' is not valid; choose one of tabular, image, combined, best"),
    ({"ON_BAD_IMAGE": "ignore"}, ValueError, "ON_BAD_IMAGE='ignore' is not valid"),
    ({"EMBED_SHARE": 0.0}, ValueError, r"EMBED_SHARE=0.0 must be in \(0, 1\]"),
    ({"FOLDS": 1}, ValueError, "FOLDS=1 must be at least 2"),
    ({"NEG_PER_POS": 0}, ValueError, "NEG_PER_POS=0 must be at least 1"),
    ({"IMG_SIZE": 4}, ValueError, "IMG_SIZE=4 must be a number of pixels"),
    ({"LGBM_SEEDS": "3"}, ValueError, "LGBM_SEEDS='3' has the wrong type"),
    ({"WEIGHTS": "nowhere/resnet18.pth"}, FileNotFoundError, "WEIGHTS='nowhere/resnet18.pth' is not a file"),
    ({"DEVICES": "gpu"}, ValueError, r"DEVICES='gpu' is not valid: use None \(every visible GPU"),
    ({"DEVICES": "cpu:2", "DEVICE": "cuda"}, ValueError, "DEVICES='cpu:2' asks for CPU processes but DEVICE='cuda'"),
])
def test_config_rejects_bad_parameters(overrides, error, message):
    with pytest.raises(error, match=message):
        task.Config(**overrides)


# --- loading and folds ------------------------------------------------------------------------

def test_test_rows_follow_the_sample_and_mismatched_ids_are_refused(demo, tmp_path, copy_tree):
    data = copy_tree(demo)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    sample.iloc[::-1].to_csv(data / "sample_submission.csv", index=False)
    comp = task.load(make_cfg(data), make_run(tmp_path / "out"))
    assert comp.test["isic_id"].tolist() == sample["isic_id"].tolist()[::-1]
    sample.loc[0, "isic_id"] = "ISIC_9999999"
    sample.to_csv(data / "sample_submission.csv", index=False)
    with pytest.raises(ValueError, match=r"1 isic_ids only in the sample \(e.g. \['ISIC_9999999'\]\)"):
        task.load(make_cfg(data), make_run(tmp_path / "out"))


def test_folds_keep_patients_apart_and_are_reused_on_rerun(demo, tmp_path):
    run = make_run(tmp_path / "out")
    comp = task.load(make_cfg(demo), run)
    folds = task.make_folds(comp, make_cfg(demo), run)
    assert folds.groupby(comp.train["patient_id"].to_numpy()).nunique().max() == 1
    assert sorted(folds.unique()) == [0, 1, 2]
    assert (comp.train.groupby(folds.to_numpy())["target"].sum() >= 1).all()  # stratified: positives everywhere
    saved = (run.dir / "folds.csv").read_bytes()
    again = task.make_folds(comp, make_cfg(demo, SEED=7), make_run(tmp_path / "out"))  # another seed: reused
    pd.testing.assert_series_equal(again, folds)
    assert (run.dir / "folds.csv").read_bytes() == saved


# --- embeddings -------------------------------------------------------------------------------

def test_embedding_key_names_model_size_and_weights(tmp_path, demo):
    assert E.embedding_key(make_cfg(demo)) == "test_resnet-32px-random-seed0"
    assert E.embedding_key(make_cfg(demo, SEED=5)) == "test_resnet-32px-random-seed5"
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    key = E.embedding_key(make_cfg(demo, WEIGHTS=str(weights)))
    assert key.startswith("test_resnet-32px-w") and key != E.embedding_key(make_cfg(demo))
    weights.write_bytes(b"two")
    assert E.embedding_key(make_cfg(demo, WEIGHTS=str(weights))) != key


def test_embeddings_are_cached_by_model_and_size(demo, tmp_path):
    run = make_run(tmp_path / "out")
    comp = task.load(make_cfg(demo), run)
    first = quiet_embeddings(comp, make_cfg(demo), run)
    assert first.train.shape == (200, 96) and first.test.shape == (40, 96)
    assert np.isfinite(first.train).all() and np.isfinite(first.test).all()
    assert run.record["embeddings"]["computed"] == 240
    again = quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "out"))
    np.testing.assert_array_equal(again.train, first.train)
    np.testing.assert_array_equal(again.test, first.test)
    run2 = make_run(tmp_path / "out")
    other = quiet_embeddings(comp, make_cfg(demo, IMG_SIZE=48), run2)
    assert run2.record["embeddings"]["computed"] == 240 and run2.record["embeddings"]["cached"] == 0
    assert not np.allclose(other.train, first.train)
    assert sorted(p.name for p in (run.dir / "embeddings").iterdir()) == [
        "test_resnet-32px-random-seed0", "test_resnet-48px-random-seed0"]


def test_local_weights_are_loaded_and_key_the_cache(demo, tmp_path):
    import timm

    torch.manual_seed(123)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    run = make_run(tmp_path / "out")
    comp = task.load(make_cfg(demo), run)
    random = quiet_embeddings(comp, make_cfg(demo), run)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning now
        loaded = E.embeddings(comp, make_cfg(demo, WEIGHTS=str(weights)), run)
    assert loaded.key.startswith("test_resnet-32px-w")
    assert not np.allclose(loaded.test, random.test)
    reference = timm.create_model("test_resnet", num_classes=0)
    reference.load_state_dict({k: v for k, v in torch.load(weights).items() if not k.startswith("fc.")})
    images = D.HDF5Images(comp.images["test"], comp.test["isic_id"][:4],
                             transform=D.ResizeToTensor(32, mean=(0.5,) * 3, std=(0.5,) * 3))
    with torch.inference_mode():
        expected = reference.eval()(torch.stack([images[i] for i in range(4)])).numpy()
    np.testing.assert_allclose(loaded.test[:4], expected, rtol=1e-4, atol=1e-5)


def test_sigterm_during_extraction_stops_after_the_chunk_in_progress_and_the_rerun_continues(demo, tmp_path,
                                                                                              monkeypatch):
    """SIGTERM (a session ending, `kagglekit run` or torchrun passing it on) while a chunk is computed:
    that chunk is saved, no other starts, the run goes on with what it has, and a rerun computes the rest."""
    import signal

    comp = task.load(make_cfg(demo), make_run(tmp_path / "straight"))
    straight = quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "straight"))
    real_save, saved = E._save_npz, []

    def sigterm_while_saving_the_second(path, **arrays):
        saved.append(path.name)
        if len(saved) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(path, **arrays)

    monkeypatch.setattr(E, "_save_npz", sigterm_while_saving_the_second)
    lines: list[str] = []
    run, before = make_run(tmp_path / "stopped", lines=lines), signal.getsignal(signal.SIGTERM)
    stopped = quiet_embeddings(comp, make_cfg(demo), run)
    monkeypatch.setattr(E, "_save_npz", real_save)
    assert saved == ["chunk_00000.npz", "chunk_00000.npz"]  # test chunk 0, then train chunk 0: no third
    assert run.record["embeddings"]["stop_reason"] == "signal: SIGTERM" and not stopped.complete
    assert any("SIGTERM received: the embeddings stop once the chunk in progress is saved" in line for line in lines)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the extraction's alone
    run = make_run(tmp_path / "stopped")
    resumed = quiet_embeddings(comp, make_cfg(demo), run)
    assert run.record["embeddings"]["cached"] == 40 + 64 and run.record["embeddings"]["computed"] == 200 - 64
    np.testing.assert_array_equal(resumed.train, straight.train)
    np.testing.assert_array_equal(resumed.test, straight.test)


def test_an_interrupted_extraction_resumes_from_the_last_chunk_with_identical_embeddings(demo, tmp_path,
                                                                                      monkeypatch):
    comp = task.load(make_cfg(demo), make_run(tmp_path / "straight"))
    straight = quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "straight"))

    real_save, saved = D._save_npz, []

    def killed_on_third_chunk(path, **arrays):
        if len(saved) == 2:
            raise KeyboardInterrupt  # the kernel is killed while computing the next chunk
        saved.append(path.name)
        real_save(path, **arrays)

    monkeypatch.setattr(E, "_save_npz", killed_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "resumed"))
    monkeypatch.setattr(E, "_save_npz", real_save)
    chunks = tmp_path / "resumed" / "embeddings" / "test_resnet-32px-random-seed0"
    assert sorted(p.relative_to(chunks).as_posix() for p in chunks.rglob("chunk_*")) == [
        "test/chunks64/chunk_00000.npz", "train/chunks64/chunk_00000.npz"]
    run = make_run(tmp_path / "resumed")
    resumed = quiet_embeddings(comp, make_cfg(demo), run)
    assert run.record["embeddings"]["cached"] == 40 + 64 and run.record["embeddings"]["computed"] == 200 - 64
    np.testing.assert_array_equal(resumed.train, straight.train)
    np.testing.assert_array_equal(resumed.test, straight.test)

    # A torn chunk file (say, copied half-way) is computed again, not trusted.
    torn = chunks / "train" / "chunks64" / "chunk_00001.npz"
    torn.write_bytes(torn.read_bytes()[:100])
    lines: list[str] = []
    run = make_run(tmp_path / "resumed", lines=lines)
    again = quiet_embeddings(comp, make_cfg(demo), run)
    assert run.record["embeddings"]["computed"] == 64
    assert any("chunk_00001.npz of train is unreadable" in line for line in lines)
    np.testing.assert_array_equal(again.train, straight.train)


def test_extraction_batches_are_row_ranges_that_never_cross_a_chunk(demo, tmp_path, monkeypatch):
    comp = task.load(make_cfg(demo), make_run(tmp_path / "out"))
    quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "out"))  # every chunk cached
    (tmp_path / "out" / "embeddings" / "test_resnet-32px-random-seed0" / "train" / "chunks64" /
     "chunk_00001.npz").unlink()
    samplers, real_loader = [], E.DataLoader

    def spy(dataset, batch_sampler, **kwargs):
        samplers.append(batch_sampler)
        return real_loader(dataset, batch_sampler=batch_sampler, **kwargs)

    monkeypatch.setattr(E, "DataLoader", spy)
    run = make_run(tmp_path / "out")
    quiet_embeddings(comp, make_cfg(demo), run)
    # only train chunk 1 (rows 64..127) is computed again, in batches of 16: 48 bytes each, not a list of rows
    assert samplers == [[range(64, 80), range(80, 96), range(96, 112), range(112, 128)]]
    assert all(type(b) is range for b in samplers[0])
    assert run.record["embeddings"]["computed"] == 64


def test_a_chunk_file_appears_whole_or_not_at_all(demo, tmp_path, monkeypatch):
    comp = task.load(make_cfg(demo), make_run(tmp_path / "out"))

    def torn_write(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", torn_write)
    with pytest.raises(OSError, match="No space left"):
        quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "out"))
    assert [p.name for p in (tmp_path / "out" / "embeddings").rglob("*") if p.is_file()] == ["meta.json"]


def test_extraction_stops_at_its_share_of_the_budget_and_a_rerun_completes_it(demo, tmp_path, monkeypatch):
    comp = task.load(make_cfg(demo), make_run(tmp_path / "full"))
    full = quiet_embeddings(comp, make_cfg(demo), make_run(tmp_path / "full"))
    clock = FakeClock()
    real_backbone = E._backbone

    def slow_backbone(*args, **kwargs):  # every batch takes one second on the budget's clock
        model = real_backbone(*args, **kwargs)
        model.register_forward_hook(lambda *_: clock.advance(1.0))
        return model

    monkeypatch.setattr(E, "_backbone", slow_backbone)
    run = make_run(tmp_path / "out", budget=40.0, clock=clock)
    emb = quiet_embeddings(comp, make_cfg(demo, EMBED_CHUNK=32), run)
    # 40 s - 10 s reserve = 30 s of work left; EMBED_SHARE 0.5 gives the embeddings 15 s: 15 batches of 16.
    assert emb.stop_reason == "budget: the share of the time given to embeddings (EMBED_SHARE) is used"
    assert not emb.complete and run.record["embeddings"]["stop_reason"] == emb.stop_reason
    assert clock.now - 1000.0 <= 15.0
    assert emb.rows("test") == 40 and 0 < emb.rows("train") < 200
    assert emb.rows("train") % 32 == 0  # whole chunks only
    done = ~np.isnan(emb.train).any(1)
    assert done[:emb.rows("train")].all()
    np.testing.assert_array_equal(emb.train[done], full.train[done])
    monkeypatch.setattr(E, "_backbone", real_backbone)
    rest = quiet_embeddings(comp, make_cfg(demo, EMBED_CHUNK=32), make_run(tmp_path / "out"))
    assert rest.complete
    np.testing.assert_array_equal(rest.train, full.train)


def _slow_embeddings(comp, cfg, run, clock, monkeypatch) -> "E.Embeddings":
    """`embeddings` where every batch takes one second on the budget's clock."""
    real_backbone = E._backbone

    def slow_backbone(*args, **kwargs):
        model = real_backbone(*args, **kwargs)
        model.register_forward_hook(lambda *_: clock.advance(1.0))
        return model

    monkeypatch.setattr(E, "_backbone", slow_backbone)
    try:
        return quiet_embeddings(comp, cfg, run)
    finally:
        monkeypatch.setattr(E, "_backbone", real_backbone)


def test_the_embedding_plan_says_what_fits_now_and_where_the_next_session_resumes(demo, tmp_path, monkeypatch):
    cfg = make_cfg(demo, EMBED_CHUNK=32)
    comp = task.load(cfg, make_run(tmp_path / "out"))
    clock, lines = FakeClock(), []
    run = make_run(tmp_path / "out", budget=40.0, clock=clock, lines=lines)
    emb = _slow_embeddings(comp, cfg, run, clock, monkeypatch)
    plan = next(line for line in lines if "embedding plan" in line)
    # Timed on the first chunk (2 batches of 16, 1 s each): 13 s of the 15 s share are left, and a
    # chunk of 2 batches starts while 1.5 x 2 s fit: 5 more chunks (test 8 images, train 4 x 32).
    assert "240 in 9 chunks, 32 done" in plan and "~16 img/s" in plan
    assert "fit now              83% (200 of 240 images)" in plan
    assert "40 images, from chunk_00005.npz of train (row 160) on: the next session resumes there" in plan
    assert run.record["embedding_plan"] == {"images": 240, "fit_share": 0.8333, "resume_at": "train chunk 5"}
    assert emb.rows("test") == 40 and emb.rows("train") == 160  # as planned
    run = make_run(tmp_path / "out")
    rest = quiet_embeddings(comp, cfg, run)
    assert rest.complete and run.record["embeddings"]["computed"] == 40  # from chunk 5 on


@pytest.fixture(scope="module")
def sharded(demo, tmp_path_factory):
    """Embeddings extracted by two CPU processes (DEVICES="cpu:2": torchrun, gloo), as on Kaggle's two T4s:
    (run folder, embeddings, what the workers returned, the notebook process's log)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONHASHSEED", "OMP_NUM_THREADS")}  # start_run sets the first
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per worker: two at two threads each on two cores crawl
    lines: list[str] = []
    cfg = make_cfg(demo, OUTPUT_DIR=str(tmp_path_factory.mktemp("two") / "run"), BUDGET="1h", DEVICES="cpu:2")
    try:
        run = task.start(cfg, environ={}, echo=lines.append)
        emb = quiet_embeddings(task.load(cfg, run), cfg, run)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.update({k: v})
    ranks = json.loads((run.dir / distributed.WORKERS_DIR / distributed.RESULT_FILE).read_text())["ranks"]
    return run.dir, emb, ranks, lines


def test_two_processes_embed_like_one_and_each_chunk_is_computed_by_one_rank(demo, tmp_path, sharded):
    out, two, ranks, lines = sharded
    cfg = make_cfg(demo)
    one = quiet_embeddings(task.load(cfg, make_run(tmp_path / "one")), cfg, make_run(tmp_path / "one"))
    # The same batches through the same model; the workers run one thread each (OMP_NUM_THREADS), this
    # process more, and a convolution sums its terms in another order with another number of threads.
    np.testing.assert_allclose(two.train, one.train, rtol=0, atol=1e-5)
    np.testing.assert_allclose(two.test, one.test, rtol=0, atol=1e-5)
    assert two.complete and np.isfinite(two.train).all() and np.isfinite(two.test).all()
    # test: 40 rows = chunk 0; train: 200 rows = chunks 0-3 of 64; chunk c goes to rank c % 2.
    assert [(r["rank"], r["chunks"], r["computed"]) for r in ranks] == [
        (0, {"test": [0], "train": [0, 2]}, {"test": 40, "train": 128}),
        (1, {"test": [], "train": [1, 3]}, {"test": 0, "train": 72})]
    chunks = out / "embeddings" / "test_resnet-32px-random-seed0"
    assert sorted(p.relative_to(chunks).as_posix() for p in chunks.rglob("chunk_*")) == [
        "test/chunks64/chunk_00000.npz", *(f"train/chunks64/chunk_0000{c}.npz" for c in range(4))]
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["backend"] == "gloo"
    assert record["embeddings"]["computed"] == 240 and record["embeddings"]["cached"] == 0
    assert {"embeddings", "workers"} <= set(record["phases"])
    assert any("starting 2 processes on CPUs (gloo)" in line for line in lines)


def test_a_rerun_after_two_processes_reads_every_chunk_and_starts_no_worker(demo, tmp_path, sharded):
    out, two, _, _ = sharded
    out = Path(shutil.copytree(out, tmp_path / "run"))
    spec = (out / distributed.WORKERS_DIR / distributed.SPEC_FILE).read_text()
    lines: list[str] = []
    cfg = make_cfg(demo, OUTPUT_DIR=str(out), BUDGET="1h", DEVICES="cpu:2")
    run = task.start(cfg, environ={}, echo=lines.append)
    again = quiet_embeddings(task.load(cfg, run), cfg, run)
    np.testing.assert_array_equal(again.train, two.train)
    np.testing.assert_array_equal(again.test, two.test)
    assert run.record["embeddings"]["computed"] == 0 and run.record["embeddings"]["cached"] == 240
    assert any("every chunk is in the cache, no worker is started" in line for line in lines)
    assert (out / distributed.WORKERS_DIR / distributed.SPEC_FILE).read_text() == spec  # no launch


def test_test_rows_reserve_the_hidden_test_images_at_the_measured_pace(demo, tmp_path, monkeypatch):
    comp = task.load(make_cfg(demo), make_run(tmp_path / "load"))
    reserves, fits = {}, {}
    for test_rows in (None, 40 + 16 * 100):  # 1,600 hidden test images: 100 batches of 16
        clock, lines = FakeClock(), []
        run = make_run(tmp_path / f"out{test_rows}", budget=400.0, clock=clock, lines=lines)
        _slow_embeddings(comp, make_cfg(demo, EMBED_CHUNK=32, TEST_ROWS=test_rows), run, clock, monkeypatch)
        plan = next(line for line in lines if "embedding plan" in line)
        reserves[test_rows] = re.search(r"\n  reserve +(\S+)", plan).group(1)
        fits[test_rows] = run.record.get("test_rows")
    # 1.5 x 1/16 s per image x 1,600 images kept back for the rerun's test images, next to write and verify
    assert reserves == {None: "10s", 1640: "160s"}
    assert fits == {None: None, 1640: 1640}
    run = make_run(tmp_path / "unit", budget=3600.0)
    cfg = make_cfg(demo, TEST_ROWS=500_000, BATCH_SIZE=128)
    from kagglekit_nb.tasks.isic._time import HIDDEN_EMBEDDINGS, declare_reserves

    assert declare_reserves(run, 3, cfg) == 500_000
    assert run.budget.reserves["features"] == pytest.approx(50.0)  # 1e-4 s a row
    assert run.budget.reserves.get(HIDDEN_EMBEDDINGS, 0.0) == 0.0  # no pace measured yet
    run.budget.observe(E.EMBED_IMAGE, 0.002)
    declare_reserves(run, 3, cfg)
    assert run.budget.reserves[HIDDEN_EMBEDDINGS] == pytest.approx(1.5 * 0.002 * 499_997)
    run = make_run(tmp_path / "short", budget=1000.0)  # the rerun gives its embeddings EMBED_SHARE at most
    run.budget.observe(E.EMBED_IMAGE, 0.002)
    declare_reserves(run, 3, cfg)
    assert run.budget.reserves[HIDDEN_EMBEDDINGS] == pytest.approx(0.5 * (1000.0 - 5 - 5 - 50))
    with pytest.raises(ValueError, match=r"TEST_ROWS=0 must be at least 1"):
        task.Config(TEST_ROWS=0)


def bad_image_copy(demo: Path, copy_tree) -> tuple[Path, str]:
    data = copy_tree(demo)
    bad = pd.read_csv(data / "train-metadata.csv")["isic_id"][5]
    with h5py.File(data / "train-image.hdf5", "a") as f:
        del f[bad]
        f.create_dataset(bad, data=np.void(b"\xff\xd8 not really a jpeg"))
    return data, bad


def test_a_corrupt_image_raises_naming_it_or_is_skipped_and_reported(demo, tmp_path, copy_tree):
    data, bad = bad_image_copy(demo, copy_tree)
    comp = task.load(make_cfg(data), make_run(tmp_path / "out"))
    with pytest.raises(ValueError, match=f"the image of isic_id '{bad}' in .*train-image.hdf5 is not a readable JPEG"):
        quiet_embeddings(comp, make_cfg(data), make_run(tmp_path / "out"))
    run = make_run(tmp_path / "out")
    with pytest.warns(UserWarning, match=f"skipped: the image of isic_id '{bad}'"):
        emb = quiet_embeddings(comp, make_cfg(data, ON_BAD_IMAGE="skip"), run)
    assert emb.skipped == [bad] and run.record["embeddings"]["skipped"] == [bad]
    assert np.isnan(emb.train[5]).all() and emb.rows("train") == 199 and emb.complete
    assert quiet_embeddings(comp, make_cfg(data, ON_BAD_IMAGE="skip"), make_run(tmp_path / "out")).skipped == [bad]
    feats = F.features(comp, emb, None, make_cfg(data, ON_BAD_IMAGE="skip"), run)
    assert feats.train.loc[5, feats.columns["image"]].isna().all()
    assert feats.train.drop(index=5)[feats.columns["image"]].notna().all(axis=None)


# --- features ---------------------------------------------------------------------------------

def test_patient_normalise_matches_a_groupby_z_score():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 3)).astype(np.float32)
    patients = np.array(list("aaabbbbcccdd"))
    values[4] = np.nan  # not extracted: stays NaN and does not count for its patient
    values[10:] = 5.0   # no spread: 0
    frame = pd.DataFrame(values)
    groups = frame.groupby(patients)
    expected = ((frame - groups.transform("mean")) / groups.transform("std", ddof=0)).to_numpy()
    got = F.patient_normalise(values, patients)
    np.testing.assert_allclose(got[:10][~np.isnan(expected[:10]).any(1)],
                               expected[:10][~np.isnan(expected[:10]).any(1)], rtol=1e-5, atol=1e-6)
    assert np.isnan(got[4]).all() and (got[10:] == 0).all()
    with pytest.raises(ValueError, match="one row per patient entry"):
        F.patient_normalise(values, patients[:5])


def test_features_have_image_columns_for_two_models_and_no_train_only_column(demo, tmp_path):
    run = make_run(tmp_path / "out")
    cfg = make_cfg(demo)
    comp = task.load(cfg, run)
    feats = F.features(comp, quiet_embeddings(comp, cfg, run), None, cfg, run)
    assert feats.columns["image"] == [f"img_pc{i}" for i in range(8)]
    assert feats.columns["combined"] == feats.columns["tabular"] + feats.columns["image"]
    assert feats.test_complete == {"tabular": True, "image": True, "combined": True}
    for cols in feats.columns.values():
        assert not set(cols) & (set(TRAIN_ONLY_COLUMNS) | set(ID_COLUMNS))
    assert list(feats.test.columns) == list(feats.train.columns)
    assert feats.train[feats.columns["image"]].notna().all(axis=None)


def test_image_pca_is_fitted_on_at_most_pca_fit_rows_and_projects_every_row(demo, tmp_path, monkeypatch):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    cfg, lines = make_cfg(demo), []
    run = make_run(tmp_path / "out", lines=lines)
    comp = task.load(cfg, run)
    rng = np.random.default_rng(0)
    emb = E.Embeddings(key="made-up", train=rng.normal(size=(200, 24)).astype(np.float32),
                       test=rng.normal(size=(40, 24)).astype(np.float32))
    emb.train[7] = np.nan  # an image not extracted
    monkeypatch.setattr(F, "PCA_FIT_ROWS", 60)
    monkeypatch.setattr(F, "_TRANSFORM_ROWS", 16)  # projected 16 rows at a time
    feats = F.features(comp, emb, None, cfg, run)

    z = F.patient_normalise(emb.train, comp.train["patient_id"])
    extracted = np.delete(np.arange(200), 7)
    rows = np.sort(np.random.default_rng(cfg.SEED).choice(extracted, 60, replace=False))
    scaler = StandardScaler().fit(z[rows])
    pca = PCA(8, random_state=cfg.SEED).fit(scaler.transform(z[rows]))
    got = feats.train[feats.columns["image"]].to_numpy()
    np.testing.assert_allclose(got[extracted], pca.transform(scaler.transform(z[extracted])), rtol=1e-4, atol=1e-4)
    assert np.isnan(got[7]).all()
    z_test = F.patient_normalise(emb.test, comp.test["patient_id"])
    np.testing.assert_allclose(feats.test[feats.columns["image"]].to_numpy(),
                               pca.transform(scaler.transform(z_test)), rtol=1e-4, atol=1e-4)
    assert any("fitted on 60 rows" in line and "199/200 train rows have them" in line for line in lines)


# --- LightGBM ---------------------------------------------------------------------------------

@pytest.fixture
def tabular_setup(demo, tmp_path):
    cfg = make_cfg(demo, IMAGE_PCA=0, LGBM_SEEDS=2)
    run = make_run(tmp_path / "out")
    comp = task.load(cfg, run)
    folds = task.make_folds(comp, cfg, run)
    return cfg, run, comp, folds


def test_train_runs_the_steps_in_order_and_predict_uses_its_models(tabular_setup):
    cfg, run, comp, folds = tabular_setup
    trained = task.train(comp, folds, cfg, run)
    assert trained.embeddings is None and trained.image_scores is None  # IMAGE_PCA=0, FINETUNE=False
    assert list(trained.features.columns) == ["tabular"]
    assert list(trained.table().index) == ["tabular"]
    alone = L.train_lgbm(F.features(comp, None, None, cfg, run), folds, cfg, run)  # reuses every saved fit
    np.testing.assert_array_equal(trained.lgbm.models["tabular"].oof, alone.models["tabular"].oof)
    preds = task.predict(comp, trained, cfg, run)  # SUBMIT="combined" is absent: the tabular model
    assert run.record["submitted_model"] == "tabular" and preds.shape == (len(comp.test),)
    path = task.write_submission(comp, preds, cfg, run)
    assert task.finish(comp, path, cfg, run).valid
    figures = task.plot_results(run, comp, trained, folds)
    assert set(figures) == {"time_bar", "roc_tabular"} and all(p.is_file() for p in figures.values())


def test_train_only_columns_never_reach_lightgbm(tabular_setup, lgb_calls, tmp_path):
    cfg, run, comp, folds = tabular_setup
    models = L.train_lgbm(F.features(comp, None, None, cfg, run), folds, cfg, run)
    assert len(lgb_calls) == cfg.FOLDS * cfg.LGBM_SEEDS
    for call in lgb_calls:
        assert not set(call["X"].columns) & (set(TRAIN_ONLY_COLUMNS) | set(ID_COLUMNS))
    # The same run on a train file whose train-only columns hold the answer gives the same predictions.
    leaky = comp.train.copy()
    for col in TRAIN_ONLY_COLUMNS:
        leaky[col] = comp.train["target"]
    comp2 = dataclasses.replace(comp, train=leaky)
    run2 = make_run(tmp_path / "leaky")
    again = L.train_lgbm(F.features(comp2, None, None, cfg, run2), folds, cfg, run2)
    np.testing.assert_array_equal(again.models["tabular"].oof, models.models["tabular"].oof)


def test_each_fit_trains_on_other_folds_down_sampled_and_stops_early_on_its_own(tabular_setup, lgb_calls):
    cfg, run, comp, folds = tabular_setup
    cfg = dataclasses.replace(cfg, NEG_PER_POS=3, MAX_ROUNDS=400, EARLY_STOPPING=5)
    models = L.train_lgbm(F.features(comp, None, None, cfg, run), folds, cfg, run)
    fold_of, y = folds.to_numpy(), comp.y
    for i, call in enumerate(lgb_calls):
        k = i % cfg.FOLDS
        assert set(fold_of[call["X"].index]) == set(range(cfg.FOLDS)) - {k}
        assert list(call["val"].index) == list(np.flatnonzero(fold_of == k))
        positives = int(((fold_of != k) & (y == 1)).sum())
        assert call["y"].sum() == positives and len(call["y"]) == 4 * positives  # 3 negatives per positive
    assert max(models.models["tabular"].best_iterations) < 400  # early stopping did stop
    assert lgb_calls[0]["X"].index.tolist() != lgb_calls[cfg.FOLDS]["X"].index.tolist()  # seeds sample anew


def test_fits_are_reused_on_rerun_and_refitted_when_settings_change(tabular_setup, lgb_calls):
    cfg, run, comp, folds = tabular_setup
    feats = F.features(comp, None, None, cfg, run)
    first = L.train_lgbm(feats, folds, cfg, run)
    n = len(lgb_calls)
    again = L.train_lgbm(feats, folds, cfg, make_run(run.dir))
    assert len(lgb_calls) == n  # nothing refitted
    np.testing.assert_array_equal(again.models["tabular"].oof, first.models["tabular"].oof)
    assert again.scores() == first.scores()
    L.train_lgbm(feats, folds, dataclasses.replace(cfg, LEARNING_RATE=0.1), make_run(run.dir))
    assert len(lgb_calls) == 2 * n


def test_test_predictions_are_the_mean_over_folds_and_seeds(tabular_setup):
    cfg, run, comp, folds = tabular_setup
    feats = F.features(comp, None, None, cfg, run)
    models = L.train_lgbm(feats, folds, cfg, run)
    probs = task.predict(comp, _trained(feats, models), dataclasses.replace(cfg, SUBMIT="tabular"), run)
    fits = models.models["tabular"].fits
    assert sorted((s, k) for s, k, _ in fits) == [(s, k) for s in range(2) for k in range(3)]
    each = [lightgbm.Booster(model_file=str(p)).predict(feats.test[feats.columns["tabular"]]) for _, _, p in fits]
    np.testing.assert_allclose(probs, np.mean(each, axis=0), rtol=1e-12)
    assert len({round(float(e[0]), 9) for e in each}) > 1  # the fits really differ
    assert run.record["submitted_model"] == "tabular" and len(run.record["predicted_with"]) == 6


def test_lightgbm_stops_for_the_budget_and_what_exists_is_submitted(tabular_setup, monkeypatch, tmp_path):
    cfg, _, comp, folds = tabular_setup
    clock = FakeClock()
    real = lightgbm.train

    def slow(*args, **kwargs):  # each fit takes 10 s on the budget's clock
        clock.advance(10.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(lightgbm, "train", slow)
    run = make_run(tmp_path / "budget", budget=60.0, clock=clock)
    feats = F.features(comp, None, None, cfg, run)
    models = L.train_lgbm(feats, folds, cfg, run)
    fits = models.models["tabular"].fits
    # 60 s - 10 s reserve: a fit is started only while 1.5 x the last fit's 10 s still fits.
    assert 1 <= len(fits) < cfg.FOLDS * cfg.LGBM_SEEDS
    assert models.stop_reason.startswith("budget") and run.record["lgbm_stop_reason"] == models.stop_reason
    assert run.budget.elapsed() <= 60.0 - run.budget.reserve_s + 1e-9
    probs = task.predict(comp, _trained(feats, models), dataclasses.replace(cfg, SUBMIT="tabular"), run)
    assert probs.shape == (len(comp.test),) and np.isfinite(probs).all()
    assert len(run.record["predicted_with"]) == len(fits)


def test_oof_pauc_scores_each_fold_on_its_own_scale():
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1] * 4)
    fold_of = np.repeat([0, 1], 16)
    perfect = y * 0.5 + np.linspace(0, 0.1, 32)     # within each fold every positive ranks first
    shifted = perfect + np.where(fold_of == 1, 10.0, 0.0)  # fold 1's model is calibrated differently
    assert L.oof_pauc(y, shifted, fold_of) == pytest.approx(0.2)
    assert partial_auc(y, shifted) < 0.2  # pooled as they are, fold 1's negatives outrank fold 0's positives
    with_gap = shifted.copy()
    with_gap[:16] = np.nan  # a fold not fitted (budget): scored on the rows that exist
    assert L.oof_pauc(y, with_gap, fold_of) == pytest.approx(0.2)
    assert L.oof_pauc(np.zeros(32, int), perfect, fold_of) is None


def test_submit_best_or_a_missing_model_falls_back(tabular_setup):
    cfg, run, comp, folds = tabular_setup
    feats = F.features(comp, None, None, cfg, run)
    models = L.train_lgbm(feats, folds, cfg, run)
    lines: list[str] = []
    run.echo = lines.append
    task.predict(comp, _trained(feats, models), dataclasses.replace(cfg, SUBMIT="combined"), run)
    assert run.record["submitted_model"] == "tabular"
    assert any("SUBMIT='combined' is not available" in line for line in lines)


def test_three_models_are_scored_and_best_submits_the_highest_oof_pauc(demo, tmp_path):
    cfg = make_cfg(demo, SUBMIT="best", LGBM_SEEDS=1)
    run = make_run(tmp_path / "out")
    comp = task.load(cfg, run)
    folds = task.make_folds(comp, cfg, run)
    feats = F.features(comp, quiet_embeddings(comp, cfg, run), None, cfg, run)
    models = L.train_lgbm(feats, folds, cfg, run)
    scores = run.record["oof_pauc"]
    assert list(scores) == ["tabular", "image", "combined"] and all(0 < v <= 0.2 for v in scores.values())
    assert run.record["folds_done"] == [0, 1, 2] and run.record["lgbm_fits_reused"] == 0
    probs = task.predict(comp, _trained(feats, models), cfg, run)
    assert run.record["submitted_model"] == max(scores, key=scores.get)
    assert run.record["cv_score"] == max(scores.values()) and probs.shape == (40,)
    assert list(models.table().index) == ["tabular", "image", "combined"]


def test_without_any_fit_the_emergency_baseline_is_written_and_verified(tabular_setup, tmp_path):
    cfg, _, comp, folds = tabular_setup
    run = make_run(tmp_path / "nothing", budget=5.0)  # all of it is the reserve
    feats = F.features(comp, None, None, cfg, run)
    models = L.train_lgbm(feats, folds, cfg, run)
    assert all(not m.fits for m in models.models.values())
    path = task.write_submission(comp, task.predict(comp, _trained(feats, models), cfg, run), cfg, run)
    report = task.finish(comp, path, cfg, run)
    assert report.valid
    sub = pd.read_csv(path)
    assert sub["isic_id"].tolist() == comp.sample["isic_id"].tolist()
    assert np.allclose(sub["target"], comp.y.mean())


# --- fine-tuning ------------------------------------------------------------------------------

def test_finetuned_image_scores_are_out_of_fold_and_test_scores_the_fold_mean(demo, tmp_path, monkeypatch):
    from kagglekit_nb import cv
    from kagglekit_nb.loaders import make_loader
    from kagglekit_nb.loop import predict

    captured = {}
    real_train_folds = cv.train_folds

    def spy(run, *, setup, **kwargs):
        captured["setup"] = setup
        return real_train_folds(run, setup=setup, **kwargs)

    monkeypatch.setattr(cv, "train_folds", spy)
    cfg = make_cfg(demo, FINETUNE=True, FINETUNE_EPOCHS=1, IMG_SIZE=16, BATCH_SIZE=32, IMAGE_PCA=0,
                   FINETUNE_NEG_PER_POS=2)
    run = make_run(tmp_path / "out", clock=time.monotonic)  # the fold loop times epochs on the budget's clock
    comp = task.load(cfg, run)
    folds = task.make_folds(comp, cfg, run)
    with pytest.warns(UserWarning, match="random weights"):
        ft = FT.finetune(comp, folds, cfg, run)
    fold_of, y = folds.to_numpy(), comp.y
    assert ft.folds_used == [0, 1, 2] and np.isfinite(ft.train).all() and np.isfinite(ft.test).all()
    ids = comp.train["isic_id"].to_numpy()
    test_each = []
    for k in range(3):
        fs = captured["setup"](k)  # the weights were resolved (and the warning given) once, before the folds
        rows = fs.train_loader.dataset.dataset.rows
        assert not (fold_of[rows] == k).any()                       # fold k's model never sees fold k
        assert (y[rows] == 1).sum() == ((fold_of != k) & (y == 1)).sum()  # every positive, balanced
        assert len(rows) == 3 * (y[rows] == 1).sum()
        oof = pd.read_csv(run.dir / f"oof_fold{k}.csv", dtype={"id": str})
        assert set(oof["id"]) == set(ids[fold_of == k])             # it scores exactly its own fold
        weights, _ = cv.load_fold_model(cv.fold_dir(run, k) / "best.ckpt")
        fs.model.load_state_dict(weights)
        val = predict(fs.model, fs.val_loader, device="cpu")[:, 1]
        np.testing.assert_allclose(ft.train[fold_of == k], val, rtol=1e-4, atol=1e-6)
        test_ds = FT._Labelled(D.HDF5Images(comp.images["test"], comp.test["isic_id"],
                                                 transform=fs.val_loader.dataset.images.transform),
                                 np.zeros(len(comp.test), int), np.arange(len(comp.test)), 16)
        test_each.append(predict(fs.model, make_loader(test_ds, 32, train=False, num_workers=0), device="cpu")[:, 1])
    np.testing.assert_allclose(ft.test, np.mean(test_each, axis=0), rtol=1e-4, atol=1e-6)
    assert "cv_score" not in run.record and run.record["finetune"]["folds_done"] == [0, 1, 2]
    feats = F.features(comp, None, ft, cfg, run)
    assert feats.columns["image"] == ["img_finetune", "img_finetune_patient_z"]
    np.testing.assert_array_equal(feats.train["img_finetune"], ft.train)


def test_finetuning_in_two_processes_trains_every_fold_at_the_same_steps_and_scores_out_of_fold(demo, tmp_path,
                                                                                                   monkeypatch):
    """DEVICES="cpu:2": the folds train in two torchrun workers, each step's batch split between them;
    the notebook process then scores out of fold and averages the test scores, as with one process."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # start_run sets it for the workers
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines: list[str] = []
    cfg = make_cfg(demo, OUTPUT_DIR=str(tmp_path / "run"), BUDGET="1h", DEVICES="cpu:2", FINETUNE=True,
                   FINETUNE_EPOCHS=1, IMG_SIZE=16, BATCH_SIZE=32, IMAGE_PCA=0, FINETUNE_NEG_PER_POS=2)
    run = task.start(cfg, environ={}, echo=lines.append)
    comp = task.load(cfg, run)
    folds = task.make_folds(comp, cfg, run)
    with pytest.warns(UserWarning, match="random weights"):
        ft = FT.finetune(comp, folds, cfg, run)
    assert np.isfinite(ft.train).all() and np.isfinite(ft.test).all()  # every row scored by its own fold's model
    record = json.loads((run.dir / "run.json").read_text())
    assert record["finetune"]["folds_done"] == [0, 1, 2] and "cv_score" not in record
    # a fold no better than the class prior is left out of the test mean (on 6 malignant lesions, most are)
    left_out = {int(k) for k in record.get("folds_left_out", {})}
    assert ft.folds_used == sorted({0, 1, 2} - left_out) and ft.folds_used
    ranks = json.loads((run.dir / distributed.WORKERS_DIR / distributed.RESULT_FILE).read_text())["ranks"]
    steps = {str(k): record["finetune"]["folds"][str(k)]["steps"] for k in range(3)}
    assert all(v > 0 for v in steps.values()) and [r["steps"] for r in ranks] == [steps, steps]
    assert any("starting 2 processes on CPUs (gloo)" in line for line in lines)
    with pytest.raises(ValueError, match=r"BATCH_SIZE=33 is the batch of one optimizer step, shared by the 2"):
        make_cfg(demo, DEVICES="cpu:2", FINETUNE=True, BATCH_SIZE=33)


def test_a_load_failing_after_the_sample_leaves_the_baseline(demo, tmp_path, copy_tree):
    from kagglekit_nb.submission import verify

    data = copy_tree(demo)
    (data / "test-image.hdf5").unlink()  # the test images are not attached
    run = make_run(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"test-image.hdf5 does not exist"):
        task.load(make_cfg(data), run)
    path = run.dir / "submission.csv"
    assert verify(path, data / "sample_submission.csv", kind="binary_proba").valid
    train = pd.read_csv(data / "train-metadata.csv", usecols=["target"])
    assert pd.read_csv(path)["target"].unique().tolist() == pytest.approx([train["target"].mean()])
    assert run.record["submission"].startswith("emergency baseline")


def test_two_isic_runs_blend_by_out_of_fold_pauc(demo, tmp_path):
    from kagglekit_nb.ensemble import blend_runs
    from kagglekit_nb.submission import verify

    for name, rounds in (("short", 20), ("long", 60)):
        cfg = make_cfg(demo, IMAGE_PCA=0, LGBM_SEEDS=1, MAX_ROUNDS=rounds)
        run = make_run(tmp_path / name)
        comp = task.load(cfg, run)
        folds = task.make_folds(comp, cfg, run)
        trained = task.train(comp, folds, cfg, run)
        task.write_submission(comp, task.predict(comp, trained, cfg, run), cfg, run)
        run.save()
    result = blend_runs([tmp_path / "short", tmp_path / "long"], tmp_path / "blend")
    assert result.metric == "pauc80" and result.valid
    assert verify(result.submission, comp.sample_path).valid
    best = max(s for s in result.scores.values() if s is not None)
    assert result.score >= best - 1e-12  # the weights never score below the better run out of fold
    sub = pd.read_csv(result.submission)
    assert list(sub.columns) == ["isic_id", "target"] and sub["target"].between(0, 1).all()
