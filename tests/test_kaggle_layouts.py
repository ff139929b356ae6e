"""The classification task on real Kaggle competitions' published layouts (tests/layouts.py): the reader
reads each as the competitor would expect, `kagglekit inspect` prints that reading, and one tiny run per
layout goes load -> ... -> finish and ends in a file the competition's own rules accept, scored by its
own metric against the held-out answers."""
from __future__ import annotations

import json
import time

import pytest

from kagglekit_nb.tasks import classification as clf
from kagglekit_nb.tasks.competition import Overrides, read
from layouts import LAYOUTS, is_better, make

from conftest import run_cli


def _reading(layout, tmp_path):
    return read(layout.data_dir, Overrides(), scratch=tmp_path / "scratch", log=lambda m: None)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_reader_reads_the_layout_as_published(name, tmp_path):
    layout = make(name, tmp_path / "data")
    comp = _reading(layout, tmp_path)
    expect = layout.expect
    assert comp.kind == layout.target
    assert comp.id_col == expect["id_col"]
    assert (len(comp.train), len(comp.test)) == (expect["n_train"], expect["n_test"])
    if comp.kind in ("class_proba", "multilabel_proba"):  # the sample's column order, which is the writer's
        assert comp.classes == comp.target_cols and sorted(comp.classes) == sorted(expect["classes"])
    else:
        assert comp.classes == expect["classes"]
    assert comp.test["id"].tolist() == layout.answers[expect["id_col"]].astype(str).tolist()
    decisions = {d.what: d.value for d in comp.decisions}
    if expect["labels_file"]:
        assert decisions["labels"].startswith(expect["labels_file"].rsplit("/", 1)[-1])
    if expect["label_column"]:
        assert f"column {expect['label_column']!r}" in decisions["labels"]
    if expect["label_source"] != "pixels":
        assert {p.rsplit(".", 1)[-1] for p in comp.train["path"]} == {expect["image_format"].lstrip(".")}
    assert len(set(comp.train["path"])) == len(comp.train) and not set(comp.train["path"]) & set(comp.test["path"])


def test_inspect_prints_the_reading_with_the_overrides(tmp_path):
    layout = make("siim-isic-melanoma-classification", tmp_path / "data")
    done = run_cli("inspect", str(layout.data_dir), "--scratch", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in ("binary_proba", "P(1)", "train.csv column 'target'", "roc_auc", "TARGET", "LABEL_COLUMN",
                 "120 .jpg in jpeg/train"):
        assert text in out, (text, out)
    as_json = run_cli("inspect", str(layout.data_dir), "--scratch", str(tmp_path / "s"), "--json",
                      "-p", "METRIC", "log_loss")
    assert {d["decision"]: d["value"] for d in json.loads(as_json.stdout)}["metric"] == "log_loss"
    bad = run_cli("inspect", str(layout.data_dir), "-p", "COLOUR", "x")
    assert bad.returncode == 2 and "LABELS_FILE" in bad.stderr


def _tiny_run(data_dir, out, **params):
    params = {"MODEL": "resnet18", "IMG_SIZE": 32, **params}
    cfg = clf.Config(DATA_DIR=str(data_dir), OUTPUT_DIR=str(out), BUDGET="5m", EPOCHS=1, FOLDS=2, BATCH_SIZE=32,
                     WEIGHTS=None, NUM_WORKERS=0, SEED=0, **params)
    run = clf.start(cfg, environ={"KAGGLEKIT_START": repr(time.monotonic())})  # the budget starts now
    data = clf.load(cfg, run)
    folds = clf.make_folds(data, cfg, run)
    models = clf.train(data, folds, cfg, run)
    preds = clf.predict(data, models, cfg, run)
    path = clf.write_submission(data, preds, cfg, run)
    report = clf.finish(data, path, cfg, run)
    return run, data, path, report


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_tiny_run_submits_a_valid_file_that_beats_the_baseline(name, tmp_path):
    layout = make(name, tmp_path / "data", n_train=90, n_test=30)
    run, data, path, report = _tiny_run(layout.data_dir, tmp_path / "out")
    assert report.valid, report.errors
    assert layout.validate(path) == []
    score, base = layout.score(path), layout.baseline_score()
    record = json.loads((run.dir / "run.json").read_text())
    assert record["submitted"] in ("classical", "deep", "blend"), record.get("candidates")
    assert is_better(layout.metric, score, base), (score, base, record.get("candidates"))


@pytest.mark.parametrize("name", ["plant-pathology-2021-fgvc8", "aerial-cactus-identification"])
def test_two_runs_of_a_layout_blend_into_a_valid_submission(name, tmp_path):
    from kagglekit_nb.ensemble import blend_runs

    layout = make(name, tmp_path / "data", n_train=90, n_test=30)
    for size in (24, 32):
        _tiny_run(layout.data_dir, tmp_path / f"px{size}", IMG_SIZE=size)
    result = blend_runs([tmp_path / "px24", tmp_path / "px32"], tmp_path / "blend")
    assert result.valid and layout.validate(result.submission) == []
    assert result.metric == layout.metric  # the metric the runs used, read from their run.json
    assert is_better(layout.metric, layout.score(result.submission), layout.baseline_score())
