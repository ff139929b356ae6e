"""Tests for kagglekit_nb.ui: the parameter form (no-op headless, typed write-back live) and progress
(plain periodic lines headless, a tqdm bar live), and progress inside `fit`."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch
from _fakes import FakeClock
from conftest import ROOT
from torch import nn
from torch.utils.data import TensorDataset

from kagglekit_nb import ui
from kagglekit_nb.budget import Budget
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.loop import fit
from kagglekit_nb.metrics import METRICS, get_metric
from kagglekit_nb.options import LoopOptions
from kagglekit_nb.tasks.classification import TTA_CHOICES, Config


def _params() -> dict:
    """A notebook namespace: the classification parameters plus what a kernel holds besides."""
    ns = dataclasses.asdict(Config())
    ns.update({"In": [""], "Out": {}, "_kaggle_input": "/kaggle/input", "get_ipython": print, "os": os})
    return ns


# --------------------------------------------------------------------------- form, headless


def test_form_headless_imports_no_widgets_prints_nothing_and_changes_nothing():
    code = ("import sys, kagglekit_nb as kk\n"
            "ns = {'EPOCHS': 12, 'LR': 0.003, 'DATA_DIR': None, 'HFLIP': False}\n"
            "before = dict(ns)\n"
            "assert kk.ui.form(ns) is None\n"
            "assert ns == before, ns\n"
            "assert 'ipywidgets' not in sys.modules\n"
            "assert 'IPython' not in sys.modules\n")
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


@pytest.mark.parametrize("environ", [{"KAGGLEKIT_HEADLESS": "1"}, {"PAPERMILL_EXECUTION": "true"},
                                     {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, {}])
def test_form_shows_nothing_headless_or_outside_a_kernel(environ, capsys):
    ns, shown = _params(), []
    before = dict(ns)
    assert ui.form(ns, config=Config, environ=environ, display=shown.append) is None
    assert shown == [] and ns == before
    assert capsys.readouterr() == ("", "")


def test_form_checks_its_arguments_even_headless():
    ns = _params()
    with pytest.raises(ValueError, match=r"names \['EPOCS'\] are not defined.*EPOCHS"):
        ui.form(ns, ["EPOCS"], environ={"CI": "1"})
    with pytest.raises(ValueError, match="must be a list of parameter names"):
        ui.form(ns, "EPOCHS", environ={"CI": "1"})
    with pytest.raises(ValueError, match=r"not os \(module\)"):
        ui.form(ns, ["EPOCHS", "os"], environ={"CI": "1"})
    with pytest.raises(ValueError, match="choices names 'MODE'"):
        ui.form(ns, choices={"MODE": ["a"]}, environ={"CI": "1"})
    with pytest.raises(ValueError, match=r"choices\['TTA'\] is empty"):
        ui.form(ns, choices={"TTA": []}, environ={"CI": "1"})
    with pytest.raises(ValueError, match="found no parameters"):
        ui.form({"x": 1, "In": []}, environ={"CI": "1"})
    with pytest.raises(TypeError, match="globals"):
        ui.form([("EPOCHS", 3)], environ={"CI": "1"})
    with pytest.raises(ValueError, match="config=.*Config class"):
        ui.form(ns, config=dict, environ={"CI": "1"})


# --------------------------------------------------------------------------- form, live


@pytest.fixture
def live(monkeypatch):
    monkeypatch.setattr(ui, "has_live_frontend", lambda environ=None: True)


def _show(ns, **kwargs):
    shown = []
    ui.form(ns, display=shown.append, **kwargs)
    assert len(shown) == 1
    box = shown[0]
    fields = {w.description: w for w in box.children if getattr(w, "description", "")}
    button = next(w for w in box.children[-2].children if w.description == "Apply")
    return fields, button, box.children[-1]


def test_form_builds_one_widget_per_parameter_by_type(live):
    import ipywidgets as w

    ns = _params()
    fields, _, _ = _show(ns, config=Config, choices={"TTA": TTA_CHOICES, "METRIC": METRICS})
    assert list(fields) == [f.name for f in dataclasses.fields(Config)]  # the parameters cell's order
    assert isinstance(fields["HFLIP"], w.Checkbox) and fields["HFLIP"].value is False
    assert isinstance(fields["TTA"], w.Dropdown) and [v for _, v in fields["TTA"].options] == list(TTA_CHOICES)
    assert isinstance(fields["METRIC"], w.Dropdown) and fields["METRIC"].value is None  # None: the competition's
    assert ("pauc80", "pauc80") in fields["METRIC"].options and ("None", None) in fields["METRIC"].options
    for name in ("EPOCHS", "LR", "MODEL", "BUDGET", "TRAIN_FOLDS"):
        assert type(fields[name]) is w.Text, name
    assert fields["EPOCHS"].value == "" and fields["LR"].value == "0.003"   # EPOCHS = None: what fits
    assert fields["BUDGET"].value == "" and fields["BUDGET"].placeholder == "None"


def test_apply_writes_values_back_typed_like_the_defaults(live):
    ns = _params()
    fields, button, status = _show(ns, config=Config, choices={"TTA": TTA_CHOICES})
    fields["EPOCHS"].value = " 20 "
    fields["LR"].value = "1e-3"
    fields["WEIGHT_DECAY"].value = "0"          # a whole number typed into a float parameter
    fields["HFLIP"].value = True
    fields["TTA"].value = "hflip"
    fields["TRAIN_FOLDS"].value = "2"           # default None, the config says int | None
    fields["BUDGET"].value = "45m"              # default None, the config says str | None
    fields["MODEL"].value = "resnet34"
    button.click()
    assert "Applied" in status.value and "EPOCHS = 20" in status.value
    expected = {"EPOCHS": 20, "LR": 0.001, "WEIGHT_DECAY": 0.0, "HFLIP": True, "TTA": "hflip",
                "TRAIN_FOLDS": 2, "BUDGET": "45m", "MODEL": "resnet34"}
    for name, value in expected.items():
        assert ns[name] == value and type(ns[name]) is type(value), (name, ns[name])
    assert ns["DATA_DIR"] is None and ns["PATIENCE"] is None  # untouched None stays None
    Config.from_namespace(ns)  # what the Setup cell builds next accepts them

    fields["TRAIN_FOLDS"].value = "None"
    button.click()
    assert ns["TRAIN_FOLDS"] is None


def test_apply_writes_nothing_when_a_value_is_invalid(live):
    ns = _params()
    before = dict(ns)
    fields, button, status = _show(ns, config=Config)
    fields["EPOCHS"].value = "many"
    assert fields["EPOCHS"].layout.border  # flagged as soon as it is typed
    fields["LR"].value = "nan"
    fields["SEED"].value = "None"              # None is not allowed where the default is an int
    button.click()
    assert ns == before
    assert "Not applied" in status.value
    for message in ("EPOCHS: &#x27;many&#x27; is not valid; enter a whole number", "LR: &#x27;nan&#x27;",
                    "SEED: &#x27;None&#x27;"):
        assert message in status.value, status.value

    fields["EPOCHS"].value, fields["LR"].value, fields["SEED"].value = "3", "0.01", "1"
    fields["FOLDS"].value = "1"               # well typed, but the config's own check refuses it
    button.click()
    assert ns == before and "FOLDS=1 must be at least 2" in status.value


def test_form_without_config_types_by_default_and_guesses_none_defaults(live):
    ns = {"EPOCHS": 3, "NAME": "x", "LIMIT": None, "ROOT": None, "DRY": True}
    fields, button, _ = _show(ns, names=["EPOCHS", "LIMIT", "ROOT", "DRY"])
    assert set(fields) == {"EPOCHS", "LIMIT", "ROOT", "DRY"}
    fields["LIMIT"].value, fields["ROOT"].value, fields["DRY"].value = "7", "/data/set", False
    button.click()
    assert ns == {"EPOCHS": 3, "NAME": "x", "LIMIT": 7, "ROOT": "/data/set", "DRY": False}
    fields["LIMIT"].value = "None"             # still allowed: the default was None
    button.click()
    assert ns["LIMIT"] is None


# --------------------------------------------------------------------------- progress, headless


def test_headless_progress_writes_plain_lines_at_the_cadence_with_eta_and_budget(capsys):
    clock, lines = FakeClock(0.0), []
    budget = Budget(total_s=600, start=0.0, clock=clock)
    with ui.progress(400, "fold 2 epoch 3/12", budget=budget, every_s=30, echo=lines.append, clock=clock,
                     live=False) as bar:
        for _ in range(400):
            clock.advance(0.5)      # 0.5 s per step: 200 s for the loop
            bar.update()
    assert len(lines) == 6          # at 30, 60, ..., 180 s; the last step (200 s) writes nothing
    assert lines[0] == ("fold 2 epoch 3/12: step 60/400 (15%), 0.5 s/step, ~2m50s to go, "
                        "budget left 9m30s")
    assert lines[-1].startswith("fold 2 epoch 3/12: step 360/400 (90%)")
    assert "~20s to go, budget left 7m00s" in lines[-1]
    assert not any("\r" in line for line in lines)
    assert capsys.readouterr() == ("", "")


def test_headless_progress_is_silent_for_loops_shorter_than_the_cadence(fake_clock):
    clock, lines = fake_clock, []
    for _ in ui.progress(range(50), "predict", every_s=30, echo=lines.append, clock=clock, live=False):
        clock.advance(0.5)          # 25 s in all
    assert lines == []


def test_headless_progress_with_print_goes_to_stdout_as_lines(capsys, fake_clock):
    clock = fake_clock
    items = iter(range(5))          # no length: counts without a total
    out = []
    for item in ui.progress(items, "", every_s=1, clock=clock, live=False, info=lambda: "loss 0.25"):
        clock.advance(1.5)
        out.append(item)
    assert out == [0, 1, 2, 3, 4]
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "step 1, 1.5 s/step, loss 0.25"
    assert len(printed.splitlines()) == 5 and "\r" not in printed and "application/vnd" not in printed


def test_progress_checks_its_arguments():
    with pytest.raises(ValueError, match="every_s=0"):
        ui.progress(3, every_s=0, live=False)
    with pytest.raises(ValueError, match="total=-1"):
        ui.progress(-1, live=False)
    with pytest.raises(ValueError, match="budget="):
        ui.progress(3, budget="10m", live=False)
    with pytest.raises(TypeError, match="number of steps or an iterable"):
        ui.progress("abc", live=False)
    with pytest.raises(TypeError, match="wrap"):
        iter(ui.progress(3, live=False))


def test_live_progress_is_a_tqdm_bar_and_writes_no_lines():
    from tqdm import tqdm

    lines = []
    with ui.progress(10, "predict", every_s=1e-9, echo=lines.append, live=True) as bar:
        assert isinstance(bar.bar, tqdm)
        for _ in bar.wrap(range(10)):
            pass
        assert bar.bar.n == 10 and bar.bar.total == 10
        bar.total = 12
        assert bar.bar.total == 12
    assert bar.bar is None and lines == []


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (190, "3m10s"), (3600, "1h00m"),
                                           (7500, "2h05m"), (-90, "-1m30s"), (float("inf"), "unlimited")])
def test_format_duration(seconds, text):
    assert ui.format_duration(seconds) == text


# --------------------------------------------------------------------------- progress inside fit


def _train(**kwargs):
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    train = make_loader(TensorDataset(x, y), 8, train=True, seed=3)
    val = make_loader(TensorDataset(x[:32], y[:32]), 16, train=False)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    logged = []
    result = fit(model, train, val, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=2, device="cpu",
                 metric=get_metric("accuracy"), log=logged.append, **kwargs)
    return model, result, logged


def _untimed(item):
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k != "seconds"}
    return re.sub(r"\d+(\.\d+)?s\b", "Ns", item)


def test_fit_progress_lines_change_nothing_that_training_computes():
    plain_model, plain, plain_log = _train(options=LoopOptions(progress_every_s=None))
    model, result, logged = _train(options=LoopOptions(progress_every_s=1e-9), progress_label="fold 2",
                                   budget=Budget(total_s=600, clock=FakeClock(100.0), start=0.0))
    lines = [m for m in logged if ": batch " in m]
    assert len(lines) == 2 * (12 - 1)   # every batch but the last of each of 2 epochs of 12 batches
    assert lines[0].startswith("fold 2 epoch 1/2: batch 1/12 (8%), ")
    assert lines[-1].startswith("fold 2 epoch 2/2: batch 11/12 (92%), ")
    assert all("budget left 8m20s" in m and "train loss " in m and "\r" not in m for m in lines)
    assert [_untimed(m) for m in logged if ": batch " not in m] == [_untimed(m) for m in plain_log]
    assert [_untimed(h) for h in result.history] == [_untimed(h) for h in plain.history]
    for a, b in zip(plain_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_writes_no_progress_lines_for_epochs_shorter_than_the_cadence():
    _, _, logged = _train()               # default: at most one line every 30 s
    assert logged and not any(": batch " in m for m in logged)
    with pytest.raises(ValueError, match="progress_every_s=0 must be a positive number of seconds or None"):
        LoopOptions(progress_every_s=0)
