"""Both glacier notebooks' training in two CPU processes (gloo, started by torchrun as on Kaggle's two
GPUs): the pretrain hands its weights on, the fine-tune starts from them, every rank stops at the same
step, and each step still ends in its verified output."""
from __future__ import annotations

import json
import math

import pytest

from kagglekit_nb import distributed
from kagglekit_nb.cv import load_fold_model
from kagglekit_nb.demo.glacier import make_glacier_demo
from kagglekit_nb.tasks.glacier import finetune, pretrain
from kagglekit_nb.tasks.glacier.training import SegConfig

SMALL = dict(ENCODER="resnet18", WEIGHTS=None, EPOCHS=2, MIN_EPOCHS=1, SAMPLES_PER_EPOCH=16, BATCH_SIZE=4,
             NUM_WORKERS=0, BUDGET="1h", SEED=0, DEVICES="cpu:2", FOLDS=2, TRAIN_FOLDS=1)


@pytest.fixture(autouse=True)
def _hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # start_run seeds everything and writes it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread for each of the two workers on two cores


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_glacier_demo(tmp_path_factory.mktemp("glacier") / "demo", seed=1, tile_size=64, n_patches=8,
                             n_train=8, n_test=2)


def _run_step(module, cfg):
    """start .. finish of one glacier notebook: (run, result, output path, report, streamed log)."""
    lines: list[str] = []
    run = module.start(cfg, environ={}, echo=lines.append)
    data = module.load(cfg, run)
    result = module.train(data, module.make_folds(data, cfg, run), cfg, run)
    path = module.write_submission(data, module.predict(data, result, cfg, run), cfg, run)
    return run, result, path, module.finish(data, path, cfg, run), lines


def _check_two_ranks(run, result, cfg: SegConfig) -> None:
    record = json.loads((run.dir / "run.json").read_text())
    assert (record["world_size"], record["backend"]) == (2, "gloo")
    steps = cfg.EPOCHS * math.ceil(cfg.SAMPLES_PER_EPOCH / cfg.BATCH_SIZE)  # the global batch sets the steps
    assert result.folds[0]["status"] == "done" and result.folds[0]["steps"] == steps
    ranks = json.loads((run.dir / distributed.WORKERS_DIR / distributed.RESULT_FILE).read_text())["ranks"]
    assert [r["steps"] for r in ranks] == [{"0": steps}, {"0": steps}]  # every rank, every step


def test_pretrain_then_finetune_in_two_processes_hand_on_the_weights_and_verify(demo, tmp_path):
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), OUTPUT_DIR=str(tmp_path / "pretrain"), **SMALL)
    run, result, path, report, lines = _run_step(pretrain, cfg)
    _check_two_ranks(run, result, cfg)
    assert any("starting 2 processes on CPUs (gloo)" in line for line in lines)
    assert any("fold 0 epoch 2/2: train_loss" in line for line in lines)  # rank 0's log, streamed
    assert path is not None and report.valid
    weights, meta = load_fold_model(run.dir / "checkpoints" / "fold0" / "best.ckpt")
    assert not any(k.startswith("module.") for k in weights)  # plain keys: one process loads them as they are

    cfg = finetune.Config(DATA_DIR=str(demo / "glacierhack"), OUTPUT_DIR=str(tmp_path / "finetune"),
                          PRETRAINED=str(path), HOLDOUT=2, **SMALL)
    run, result, package, report, lines = _run_step(finetune, cfg)
    _check_two_ranks(run, result, cfg)
    assert sum("initialised from glacier_pretrained.pth" in line for line in lines) == 1  # rank 0 speaks for all
    assert json.loads((run.dir / "run.json").read_text())["weights"]["source"] == "glacier_pretrain"
    assert report.valid, report
    assert (package / "model.pth").is_file()


def test_sync_bn_is_said_where_it_cannot_apply():
    world = distributed.World(2, "cpu", "gloo")
    assert "not used by CPU processes" in distributed.sync_bn_note(True, world)
    assert "one training process" in distributed.sync_bn_note(True, distributed.World())
    assert distributed.sync_bn_note(True, distributed.World(2, "cuda", "nccl")) is None
    assert distributed.sync_bn_note(False, world) is None
    with pytest.raises(ValueError, match=r"BATCH_SIZE=5 is the batch of one optimizer step, shared by the 2"):
        finetune.Config(DEVICES="cpu:2", BATCH_SIZE=5)
