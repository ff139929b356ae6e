"""Tests for kagglekit_nb.plots (each plot a real PNG in <run>/plots, clear errors on bad input) and
the classification task's out-of-fold reader and plot step."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _fakes import FakeClock
from PIL import Image

from kagglekit_nb import plots
from kagglekit_nb.budget import Budget
from kagglekit_nb.metrics import partial_auc
from kagglekit_nb.run import Run
from kagglekit_nb.tasks import classification as clf


def _history(folds: int = 2, epochs: int = 4) -> pd.DataFrame:
    rows = []
    for k in range(folds):
        for e in range(1, epochs + 1):
            rows.append({"fold": k, "epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e + 0.05 * k,
                         "score": 0.5 + 0.1 * e - 0.02 * k, "lr": 1e-3, "seconds": 3.5})
    return pd.DataFrame(rows)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run folder: run.json (budget, phases, config) and history.csv as kagglekit_nb.cv writes it."""
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"run_name": "t", "config": {"METRIC": "accuracy"}, "budget_s": 600.0, "elapsed_s": 480.0,
              "reserve_s": 60.0, "phases": {"setup": 20.0, "train": 400.0, "predict": 30.0, "verify": 2.5}}
    (folder / "run.json").write_text(json.dumps(record))
    _history().to_csv(folder / "history.csv", index=False)
    return folder


def _assert_png(path: Path, folder: Path, name: str) -> None:
    assert path == folder / "plots" / f"{name}.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 300 and img.height >= 150
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas
    assert not list(path.parent.glob("*.tmp"))


# --------------------------------------------------------------------------- shared behaviour


def test_plots_leave_no_figure_open_switch_no_backend_and_print_nothing(run_dir, capsys):
    import matplotlib

    backend = matplotlib.get_backend()
    for _ in range(3):
        plots.training_curves(run_dir)
        plots.time_bar(run_dir)
    assert matplotlib.get_backend() == backend
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []
    assert capsys.readouterr() == ("", "")
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["time_bar.png", "training_curves.png"]


def test_a_plot_is_displayed_in_a_kernel(run_dir, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(plots, "_in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    path = plots.time_bar(run_dir)
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Image)
    assert shown[0].data == path.read_bytes()


def test_run_may_be_a_run_object_a_path_or_a_string_but_must_exist(run_dir, tmp_path):
    assert plots.time_bar(str(run_dir)).parent == run_dir / "plots"
    assert plots.time_bar(SimpleNamespace(dir=run_dir), name="t2").name == "t2.png"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.time_bar(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="must be a Run"):
        plots.time_bar(42)
    with pytest.raises(ValueError, match="plain file name"):
        plots.time_bar(run_dir, name="../up")


# --------------------------------------------------------------------------- training curves


def test_training_curves(run_dir):
    _assert_png(plots.training_curves(run_dir), run_dir, "training_curves")
    _assert_png(plots.training_curves(run_dir, metric="my_score", name="other"), run_dir, "other")


def test_training_curves_say_which_file_is_missing_and_what_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"history\.csv is missing: kagglekit_nb\.cv \(train_folds\)"):
        plots.training_curves(tmp_path)


def test_training_curves_reject_an_empty_or_foreign_history(run_dir):
    pd.DataFrame(columns=["fold", "epoch", "train_loss", "val_loss", "score", "lr", "seconds"]).to_csv(
        run_dir / "history.csv", index=False)
    with pytest.raises(ValueError, match="no rows: no training epoch has finished"):
        plots.training_curves(run_dir)
    pd.DataFrame({"epoch": [1], "loss": [0.3]}).to_csv(run_dir / "history.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks the columns \['fold', 'train_loss', 'val_loss', 'score'\]"):
        plots.training_curves(run_dir)


# --------------------------------------------------------------------------- time bar


def test_time_bar_from_run_json(run_dir):
    _assert_png(plots.time_bar(run_dir), run_dir, "time_bar")


def test_time_bar_from_a_live_run_over_and_without_a_budget(tmp_path):
    clock = FakeClock(0.0)
    budget = Budget(total_s=120, start=0.0, clock=clock)
    run = Run(name="t", dir=tmp_path, budget=budget, device=torch.device("cpu"), seed=0)
    budget.add_phase("setup", 10)
    budget.add_phase("train", 100)
    budget.add_phase("predict", 25)
    clock.advance(140.0)               # 20 s over the budget, 5 s outside any phase
    _assert_png(plots.time_bar(run), tmp_path, "time_bar")
    run.budget = Budget(total_s=float("inf"), start=0.0, clock=clock, phases={"train": 50.0})
    _assert_png(plots.time_bar(run, name="unlimited"), tmp_path, "unlimited")


def test_time_bar_errors(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run\.json is missing: start_run writes it"):
        plots.time_bar(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "phases": {}}))
    with pytest.raises(ValueError, match="records no phases"):
        plots.time_bar(run_dir)
    (run_dir / "run.json").write_text(json.dumps({**record, "phases": {"train": -3}}))
    with pytest.raises(ValueError, match=r"phases \{'train': -3\} are not durations"):
        plots.time_bar(run_dir)
    (run_dir / "run.json").write_text("{torn")
    with pytest.raises(ValueError, match="not readable JSON"):
        plots.time_bar(run_dir)


# --------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_from_indices_and_from_names(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.8, y, (y + 1) % 3)
    _assert_png(plots.confusion_matrix(y, pred, ["cat", "dog", "fox"], tmp_path), tmp_path, "confusion_matrix")
    names = np.array(["cat", "dog", "fox"])
    path = plots.confusion_matrix(list(names[y]), pd.Series(names[pred]), ("cat", "dog", "fox"), tmp_path,
                                  name="by_name")
    _assert_png(path, tmp_path, "by_name")
    many = [f"c{i}" for i in range(40)]      # too many classes to write the counts in
    y40 = rng.integers(0, 40, 500)
    _assert_png(plots.confusion_matrix(y40, y40, many, tmp_path, name="many"), tmp_path, "many")


@pytest.mark.parametrize("y_true, y_pred, labels, error, message", [
    ([], [], ["a", "b"], ValueError, "y_true is empty"),
    ([0, 1, 1], [0, 1], ["a", "b"], ValueError, "same length; got 3 and 2"),
    ([0, 1, 2], [0, 1, 1], ["a", "b"], ValueError, r"class indices \[2\] outside 0\.\.1"),
    (["a", "z"], ["a", "b"], ["a", "b"], ValueError, r"holds \['z'\], which are not in labels"),
    ([[0, 1]], [[0, 1]], ["a", "b"], ValueError, "1-D"),
    ([0, 1], [0, 1], [], ValueError, "labels is empty"),
    ([0, 1], [0, 1], ["a", "a"], ValueError, "repeat names"),
    ([0, 1], [0, 1], "ab", ValueError, "list of class names"),
])
def test_confusion_matrix_errors(tmp_path, y_true, y_pred, labels, error, message):
    with pytest.raises(error, match=message):
        plots.confusion_matrix(y_true, y_pred, labels, tmp_path)


# --------------------------------------------------------------------------- segmentation overlays


def _tiles(n: int = 3, size: int = 24, channels: int = 5):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(n, size, size, channels)).astype(np.float32)
    truth = rng.integers(0, 4, size=(n, size, size)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.9, truth, 0).astype(np.uint8)
    return images, truth, pred


def test_overlays(tmp_path):
    images, truth, pred = _tiles()
    images[0, 0, 0, 0] = np.nan                           # a no-data pixel is drawn black, not an error
    path = plots.overlays(images, truth, pred, tmp_path, names=["img001", "img002", "img003"], max_tiles=2)
    _assert_png(path, tmp_path, "overlays")
    # (C, H, W) tensors, one channel, masks in the label-file encoding 0/85/170/255
    chw = torch.from_numpy(images[:, :, :, :1]).permute(0, 3, 1, 2)
    _assert_png(plots.overlays(chw, truth * 85, list(pred * 85), tmp_path, name="chw"), tmp_path, "chw")


@pytest.mark.parametrize("change, message", [
    (lambda i, t, p: (i[:0], t[:0], p[:0]), "images is empty"),
    (lambda i, t, p: (i, t, p[:2]), "same number of tiles; got 3, 3 and 2"),
    (lambda i, t, p: (i, t, p[:, :, :10]), r"masks_pred\[0\] has shape \(24, 10\)"),
    (lambda i, t, p: (i[:, :10], t, p), r"images\[0\] has shape \(10, 24, 5\)"),
    (lambda i, t, p: (i, t + 7, p), r"masks_true\[0\] holds values \[7, 8, 9, 10\]"),
    (lambda i, t, p: (i, t, np.zeros((3, 4, 24, 24))), r"masks_pred\[0\] must be a class map.*argmax"),
])
def test_overlays_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        plots.overlays(*change(*_tiles()), tmp_path)


def test_overlays_argument_errors(tmp_path):
    images, truth, pred = _tiles()
    with pytest.raises(ValueError, match="names has 1 entries for 3 tiles"):
        plots.overlays(images, truth, pred, tmp_path, names=["a"])
    with pytest.raises(ValueError, match="max_tiles=0"):
        plots.overlays(images, truth, pred, tmp_path, max_tiles=0)
    with pytest.raises(ValueError, match=r"rgb=\(5, 1, 0\) must be three channel indices below 5"):
        plots.overlays(images, truth, pred, tmp_path, rgb=(5, 1, 0))


# --------------------------------------------------------------------------- ROC and pAUC


def test_roc_pauc(tmp_path):
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.05).astype(int)
    scores = y * 1.5 + rng.normal(size=2000)
    path = plots.roc_pauc(y, scores, tmp_path)
    _assert_png(path, tmp_path, "roc_pauc")
    assert 0 < partial_auc(y, scores) < 0.2
    _assert_png(plots.roc_pauc(y.astype(bool), scores, tmp_path, min_tpr=0.5, name="half"), tmp_path, "half")


@pytest.mark.parametrize("y, s, kwargs, message", [
    ([], [], {}, "y_true is empty"),
    ([0, 1, 1], [0.1, 0.2], {}, "same length; got 3 and 2"),
    ([0, 0, 0], [0.1, 0.2, 0.3], {}, "needs both positives"),
    ([0, 2, 1], [0.1, 0.2, 0.3], {}, "only 0 and 1"),
    ([0, 1, 1], [0.1, np.nan, 0.3], {}, "NaN or infinite"),
    ([0, 1, 1], [0.1, 0.2, 0.3], {"min_tpr": 1.0}, r"min_tpr=1\.0 must be in \[0, 1\)"),
])
def test_roc_pauc_errors(tmp_path, y, s, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.roc_pauc(y, s, tmp_path, **kwargs)


# --------------------------------------------------------------------------- the classification task


def _oof(folder: Path, fold: int, targets: list[int], probs: list[list[float]]) -> None:
    frame = pd.DataFrame(probs, columns=[f"p{c}" for c in range(len(probs[0]))])
    frame.insert(0, "id", [f"{fold}_{i:03d}" for i in range(len(targets))])
    frame.insert(1, "target", targets)
    frame.to_csv(folder / f"oof_fold{fold}.csv", index=False)


def test_out_of_fold_reads_every_fold_and_the_class_names(run_dir):
    (run_dir / "labels.json").write_text(json.dumps({"classes": ["cat", "dog", "fox"], "kind": "label"}))
    oof, classes = clf.out_of_fold(run_dir)
    assert classes == ["cat", "dog", "fox"] and oof.empty
    _oof(run_dir, 1, [2, 0], [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    _oof(run_dir, 0, [0, 1, 1], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    oof, classes = clf.out_of_fold(run_dir)
    assert list(oof.columns[:4]) == ["id", "fold", "target", "pred"]
    assert oof["fold"].tolist() == [0, 0, 0, 1, 1]
    assert oof["target"].tolist() == [0, 1, 1, 2, 0]
    assert oof["pred"].tolist() == [0, 1, 2, 2, 1]
    assert oof["id"].tolist()[0] == "0_000"


def test_out_of_fold_needs_labels_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"labels\.json is missing: load\(\) writes it"):
        clf.out_of_fold(tmp_path)


def test_plot_results_draws_what_has_data_and_says_what_it_skips(tmp_path):
    logged = []
    budget = Budget(total_s=300, start=0.0, clock=FakeClock(200.0), phases={"setup": 5.0, "train": 150.0})
    run = Run(name="t", dir=tmp_path, budget=budget, device=torch.device("cpu"), seed=0,
              config={"METRIC": "accuracy"}, echo=logged.append)
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["a", "b"], "kind": "label"}))
    assert set(clf.plot_results(run)) == {"time_bar"}
    assert any("no training curves" in m for m in logged) and any("no confusion matrix" in m for m in logged)
    _history(folds=1, epochs=2).to_csv(tmp_path / "history.csv", index=False)
    _oof(tmp_path, 0, [0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    made = clf.plot_results(run)
    assert set(made) == {"training_curves", "time_bar", "confusion_matrix"}
    for name, path in made.items():
        _assert_png(path, tmp_path, name)
