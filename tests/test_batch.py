"""Tests for kagglekit_nb.batch: grid files, run folder names, skipping finished runs, GPU slots, parallel
runs (one GPU each) and the one-at-a-time fallback, and one tiny batch end to end (cached and random
weights), then `kagglekit blend` of the two."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from kagglekit_nb.batch import check_grid, combinations, gpu_slots, is_finished, load_grid, run_batch, run_name


def test_yaml_and_json_grids_read_the_same(tmp_path):
    (tmp_path / "g.yaml").write_text("SEED: [0, 1, 2]\nMODEL: [resnet18, efficientnet_b0]\nHFLIP: true\n")
    (tmp_path / "g.json").write_text(json.dumps({"SEED": [0, 1, 2], "MODEL": ["resnet18", "efficientnet_b0"],
                                                 "HFLIP": True}))
    grid = load_grid(tmp_path / "g.yaml")
    assert grid == load_grid(tmp_path / "g.json") == {"SEED": [0, 1, 2], "MODEL": ["resnet18", "efficientnet_b0"],
                                                      "HFLIP": [True]}
    combos = combinations(grid)
    assert len(combos) == 6
    assert combos[0] == {"SEED": 0, "MODEL": "resnet18", "HFLIP": True}
    assert combos[1] == {"SEED": 0, "MODEL": "efficientnet_b0", "HFLIP": True}


def test_a_bad_grid_lists_every_problem(tmp_path):
    with pytest.raises(ValueError) as e:
        check_grid({"SEED": [], "OUTPUT_DIR": ["x"], "LR": [{"a": 1}], "MODEL": ["a", "a"]})
    text = str(e.value)
    for part in ("SEED: the list of values is empty", "OUTPUT_DIR is set by the batch", "LR: {'a': 1} is not a single",
                 "MODEL: a value is listed twice"):
        assert part in text
    with pytest.raises(ValueError, match="non-empty mapping"):
        check_grid([0, 1])
    (tmp_path / "g.yaml").write_text("SEED: [0, 1\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_grid(tmp_path / "g.yaml")
    (tmp_path / "g.txt").write_text("{}")
    with pytest.raises(ValueError, match=r"must end in \.yaml, \.yml or \.json"):
        load_grid(tmp_path / "g.txt")


def test_unknown_grid_names_are_errors_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"the grid names SEEDS, .*its parameters are .*SEED"):
        run_batch("classification", out=tmp_path, grid={"SEEDS": [0, 1]}, gpus=0)
    with pytest.raises(ValueError, match="SEED is both in the grid and in -p"):
        run_batch("classification", out=tmp_path, grid={"SEED": [0, 1]}, params=[("SEED", "3")], gpus=0)
    with pytest.raises(ValueError, match="-p EPOCHS"):
        run_batch("classification", out=tmp_path, grid={"EPOCHS": ["many"]}, gpus=0)
    assert list(tmp_path.iterdir()) == []


def test_run_names_are_the_values_and_safe_on_disk():
    assert run_name({"SEED": 1, "MODEL": "resnet18"}) == "SEED=1,MODEL=resnet18"
    assert run_name({"LR": 0.001, "TTA": "none"}) == "LR=0.001,TTA=none"
    odd = run_name({"DATA": "a/b c:d"})
    assert "/" not in odd and " " not in odd and ":" not in odd and odd.startswith("DATA=a_b_c_d")
    assert odd != run_name({"DATA": "a_b_c_d"})  # a changed name carries a hash of the real one
    long = run_name({"MODEL": "x" * 300})
    assert len(long) <= 120


def _finished(folder: Path, valid: bool = True, config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": config or {}, "cv_score": 0.5,
                                                 "candidates": {"deep": 0.5}, "submitted": "deep", "elapsed_s": 3}))
    (folder / "verification.json").write_text(json.dumps({"valid": valid}))
    return folder


def test_finished_means_valid_verification_and_run_json(tmp_path):
    assert is_finished(_finished(tmp_path / "a"))
    assert not is_finished(_finished(tmp_path / "b", valid=False))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run.json").write_text("{")
    (tmp_path / "c" / "verification.json").write_text(json.dumps({"valid": True}))
    assert not is_finished(tmp_path / "c")
    assert not is_finished(tmp_path / "missing")


def test_a_rerun_skips_finished_runs_and_runs_the_rest(tmp_path):
    out = tmp_path / "out"
    _finished(out / "SEED=0", config={"SEED": 0})
    _finished(out / "SEED=2", valid=False, config={"SEED": 2})  # unfinished: run again in its folder
    fake = tmp_path / "fake_run.py"  # stands in for `python -m kagglekit_nb`: records its argv, finishes
    fake.write_text("import json, sys, pathlib\n"
                    "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
                    "(out / 'argv.json').write_text(json.dumps(sys.argv))\n"
                    "(out / 'run.json').write_text(json.dumps({'config': {}}))\n"
                    "(out / 'verification.json').write_text(json.dumps({'valid': 'FAIL' not in str(out)}))\n")
    import sys
    lines: list[str] = []
    runs = run_batch("classification", out=out, grid={"SEED": [0, 1, 2]}, budget="90s", gpus=0,
                     params=[("EPOCHS", "1")], command=[sys.executable, str(fake)], echo=lines.append)
    assert [r.status for r in runs] == ["skipped (already finished)", "finished", "finished"]
    assert not (out / "SEED=0" / "argv.json").exists()
    argv = json.loads((out / "SEED=1" / "argv.json").read_text())
    assert argv[argv.index("-p"):] == ["-p", "EPOCHS", "1", "-p", "SEED", "1"]
    assert argv[argv.index("--budget") + 1] == "45s"  # 90 s left, 2 runs to go
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["run"].tolist() == ["SEED=0", "SEED=1", "SEED=2"]
    assert board["valid"].tolist() == [True, True, True]
    # a finished folder made with other values is not silently taken for this batch
    with pytest.raises(ValueError, match=r"made with other parameters \(SEED=0 there, 5 now"):
        _finished(out / "SEED=5", config={"SEED": 0})
        run_batch("classification", out=out, grid={"SEED": [5]}, gpus=0, command=[sys.executable, str(fake)])


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    import sys
    fake = tmp_path / "fake_run.py"
    fake.write_text("import json, sys, pathlib\n"
                    "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
                    "if out.name == 'TTA=hflip':\n"
                    "    print('kagglekit run: cell 3 failed: boom'); sys.exit(1)\n"
                    "(out / 'run.json').write_text('{}')\n"
                    "(out / 'verification.json').write_text(json.dumps({'valid': True}))\n")
    runs = run_batch("classification", out=tmp_path / "out", grid={"TTA": ["hflip", "none"]}, gpus=0,
                     command=[sys.executable, str(fake)], echo=lambda m: None)
    assert [r.status for r in runs] == ["failed (exit 1)", "finished"]
    assert runs[0].message == "kagglekit run: cell 3 failed: boom"
    assert "boom" in (tmp_path / "out" / "TTA=hflip" / "batch.log").read_text()


def test_gpu_slots():
    assert gpu_slots(4, 2, environ={}) == (["0", "1"], "2 run(s) at a time, one GPU each (0, 1); "
                                                         "--parallel 4 is more than the 2 GPUs")
    assert gpu_slots(2, 4, environ={"CUDA_VISIBLE_DEVICES": "2,3"})[0] == ["2", "3"]
    assert gpu_slots(3, 1, environ={}) == ([None], "one GPU: the runs go one at a time (--parallel 3 ignored: "
                                                     "it needs two GPUs or more)")
    assert gpu_slots(2, 0, environ={}) == ([None], "no GPU: the runs go one at a time on the CPU (--parallel 2 "
                                                   "ignored: it needs two GPUs or more)")
    assert gpu_slots(1, 0, environ={}) == ([None], "no GPU: the runs go one at a time on the CPU")
    with pytest.raises(ValueError, match="--parallel 0"):
        gpu_slots(0, 0, environ={})


# Stands in for `python -m kagglekit_nb run`: writes its split at once (the batch's later runs wait for
# the first one's), says it started, waits up to FAKE_WAIT_S for the other runs of the batch to start,
# then records its GPU, its budget, whom it saw running and when, and finishes.
_OVERLAP_FAKE = """\
import json, os, sys, time, pathlib
out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])
begin = time.time()
(out / 'folds.csv').write_text('id,fold\\n')
started = out.parent / 'started'
started.mkdir(exist_ok=True)
(started / out.name).write_text('')
deadline = time.monotonic() + float(os.environ['FAKE_WAIT_S'])
while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.02)
seen = sorted(p.name for p in started.iterdir())
(out / 'fake.json').write_text(json.dumps({'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), 'seen': seen,
                                           'budget': sys.argv[sys.argv.index('--budget') + 1],
                                           'begin': begin, 'end': time.time()}))
(out / 'run.json').write_text(json.dumps({'config': {}}))
(out / 'verification.json').write_text(json.dumps({'valid': True}))
"""


def _fake_batch(tmp_path, monkeypatch, *, gpus: int, wait_s: float):
    import sys
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_WAIT_S", str(wait_s))
    fake = tmp_path / "fake_run.py"
    fake.write_text(_OVERLAP_FAKE)
    lines: list[str] = []
    runs = run_batch("classification", out=tmp_path / "out", grid={"SEED": [0, 1]}, budget="60s", parallel=2,
                     gpus=gpus, command=[sys.executable, str(fake)], echo=lines.append,
                     clock=lambda: 0.0)   # the budget's clock stands still: exact shares
    said = [json.loads((r.dir / "fake.json").read_text()) for r in runs]
    return runs, said, lines


def test_parallel_runs_start_together_one_gpu_each(tmp_path, monkeypatch):
    """Two GPUs, --parallel 2: both runs are running at the same time, on GPU 0 and GPU 1, and each
    gets the whole budget (one wave of two)."""
    runs, said, lines = _fake_batch(tmp_path, monkeypatch, gpus=2, wait_s=60)
    assert [r.status for r in runs] == ["finished", "finished"]
    assert "2 run(s) at a time, one GPU each (0, 1)" in lines[0]
    assert sorted(s["gpu"] for s in said) == ["0", "1"]
    assert all(f"on GPU {s['gpu']}" in next(ln for ln in lines if f"{r.name}: started" in ln)
               for r, s in zip(runs, said))
    assert [s["seen"] for s in said] == [["SEED=0", "SEED=1"]] * 2       # each saw the other one running
    assert max(s["begin"] for s in said) < min(s["end"] for s in said)   # their times overlap
    assert [s["budget"] for s in said] == ["60s", "60s"]


def test_parallel_without_a_gpu_runs_one_at_a_time_and_says_so(tmp_path, monkeypatch):
    runs, said, lines = _fake_batch(tmp_path, monkeypatch, gpus=0, wait_s=0.5)
    assert [r.status for r in runs] == ["finished", "finished"]
    assert "no GPU: the runs go one at a time on the CPU (--parallel 2 ignored: it needs two GPUs or more)" \
        in lines[0]
    assert [s["seen"] for s in said] == [["SEED=0"], ["SEED=0", "SEED=1"]]   # the first ran alone
    assert said[1]["begin"] >= said[0]["end"]
    assert [s["gpu"] for s in said] == [None, None]                        # CUDA_VISIBLE_DEVICES left alone
    assert said[0]["budget"] == "30s"                                      # two waves of one


SMALL = ["-p", "FOLDS", "2", "-p", "TRAIN_FOLDS", "1", "-p", "EPOCHS", "1", "-p", "MIN_EPOCHS", "1",
         "-p", "IMG_SIZE", "16", "-p", "MODEL", "test_resnet", "-p", "BATCH_SIZE", "32"]


@pytest.mark.notebook
def test_batch_of_cached_and_random_weights_then_blend(tmp_path, digits_competition):
    """Two runs of the classification notebook on a small copy of the digits, one starting from the
    weights in a Hugging Face cache (WEIGHTS "auto"), one from random weights asked for on the command
    line (the grid's null becomes `-p WEIGHTS None`); then their blend: a verified submission whose
    OOF score is at least the best single run's."""
    import hashlib
    import shutil

    from conftest import make_hf_cache

    data = Path(shutil.copytree(digits_competition, tmp_path / "data"))
    train = pd.read_csv(data / "train.csv", dtype=str)
    train.groupby("label").head(30).to_csv(data / "train.csv", index=False)   # 300 rows
    pd.read_csv(data / "sample_submission.csv", dtype=str).head(60).to_csv(data / "sample_submission.csv", index=False)
    cache = make_hf_cache(tmp_path / "hf", staged=tmp_path / "staged")
    sha = hashlib.sha256(cache.path.read_bytes()).hexdigest()
    env = {"HF_HOME": str(cache.home), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "grid.json").write_text(json.dumps({"WEIGHTS": ["auto", None]}))
    out = tmp_path / "runs"
    proc = run_cli("batch", "classification", "--out", str(out), "--grid", str(tmp_path / "grid.json"),
                   "--data", str(data), *SMALL, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["run"]) == ["WEIGHTS=None", "WEIGHTS=auto"] and board["valid"].all()
    assert (out / "WEIGHTS=auto" / "folds.csv").read_text() == (out / "WEIGHTS=None" / "folds.csv").read_text()
    cached, random = (json.loads((out / name / "run.json").read_text()) for name in ("WEIGHTS=auto", "WEIGHTS=None"))
    assert cached["weights"] == {"source": "attached", "model": "test_resnet", "path": str(cache.path), "sha256": sha}
    assert random["config"]["WEIGHTS"] is None   # the text None arrived as None, through papermill
    assert random["weights"] == {"source": "random", "model": "test_resnet", "path": None, "sha256": None}
    # real weights also give the frozen-embeddings candidate (tasks/frozen.py); random weights do not
    assert cached["frozen"]["weights"]["path"] == str(cache.path) and cached["frozen"]["computed"] == 360
    assert 0.0 <= cached["candidates"]["embeddings"] <= 1.0   # an accuracy on the 300 OOF rows
    assert random["frozen"] == {"skipped": "no pretrained weights attached or downloadable"}
    assert "embeddings" not in random["candidates"]
    logs = {name: (out / name / "image_classification.ipynb").read_text() for name in ("WEIGHTS=auto", "WEIGHTS=None")}
    assert f"test_resnet: pretrained weights attached to the session: {cache.path} (sha256 {sha[:12]})" \
        in logs["WEIGHTS=auto"]
    assert "test_resnet: random initialisation (WEIGHTS=None)" in logs["WEIGHTS=None"]
    assert "starts from random weights" not in logs["WEIGHTS=auto"] + logs["WEIGHTS=None"]   # no warning in either
    again = run_cli("batch", "classification", "--out", str(out), "--grid", str(tmp_path / "grid.json"),
                    "--data", str(data), *SMALL, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stdout

    proc = run_cli("blend", str(out / "WEIGHTS=auto"), str(out / "WEIGHTS=None"), "--out", str(tmp_path / "blend"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "blend" / "blend.json").read_text())
    assert report["valid"] and json.loads((tmp_path / "blend" / "verification.json").read_text())["valid"]
    assert report["score"] >= max(r["oof_score"] for r in report["runs"].values())
    sub = pd.read_csv(tmp_path / "blend" / "submission.csv", dtype=str)
    assert len(sub) == 60 and set(sub["label"]) <= set(train["label"])
