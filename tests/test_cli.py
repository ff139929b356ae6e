"""Tests for the command line: exit codes, messages, files written.

A few tests start `python -m kagglekit_nb` in a subprocess (the real entry point); the rest call
`cli.main` in-process, since each subprocess pays for importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kagglekit_nb.cli import main

ROOT = Path(__file__).resolve().parents[1]


def kagglekit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLEKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "kagglekit_nb", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`main(args)` in-process: (exit code, stdout, stderr); argparse errors exit through SystemExit."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def competition(tmp_path):
    """A sample submission and three candidate submissions for `verify`."""
    (tmp_path / "sample.csv").write_text("id,label\na,cat\nb,cat\nc,cat\n")
    (tmp_path / "good.csv").write_text("id,label\na,cat\nb,dog\nc,cat\n")
    (tmp_path / "bad.csv").write_text("id,label\na,cat\nb,bird\n")
    return tmp_path


# --------------------------------------------------------------------------- the real entry point


def test_no_arguments_is_a_usage_error(tmp_path):
    result = kagglekit(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: kagglekit" in result.stderr
    assert "kagglekit --help" in result.stderr


def test_demo_writes_the_competition(tmp_path):
    result = kagglekit("demo", "classification", "--out", "comp", "--image-size", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    comp = tmp_path / "comp"
    assert "comp" in result.stdout
    for name in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv"):
        assert (comp / name).is_file(), name
    train = pd.read_csv(comp / "train.csv", dtype=str)
    assert len(train) + len(pd.read_csv(comp / "test.csv")) == 1797
    assert len(list((comp / "train").glob("*.png"))) == len(train)
    from PIL import Image

    with Image.open(comp / "train" / f"{train['id'].iloc[0]}.png") as img:
        assert img.size == (16, 16)


def test_run_unknown_parameter_lists_the_valid_ones(tmp_path):
    result = kagglekit("run", "classification", "--out", "out", "-p", "NOPE", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "no parameter 'NOPE'" in result.stderr
    for name in ("EPOCHS", "IMG_SIZE", "DATA_DIR", "BUDGET"):
        assert name in result.stderr
    assert not (tmp_path / "out" / "image_classification.ipynb").exists()


def test_env_json(tmp_path):
    result = kagglekit("env", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["platform"] in ("local", "kaggle", "colab")
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))


# --------------------------------------------------------------------------- in-process


def test_unknown_command_is_a_usage_error(capsys):
    code, _, err = run_main(capsys, "train")
    assert code == 2
    assert "invalid choice: 'train'" in err


def test_demo_with_a_bad_choice_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_main(capsys, "demo", "classification", "--out", str(tmp_path / "comp"), "--color", "cmyk")
    assert code == 2
    assert "cmyk" in err
    assert not (tmp_path / "comp").exists()


def test_demo_with_a_bad_size_names_it(tmp_path, capsys):
    code, _, err = run_main(capsys, "demo", "classification", "--out", str(tmp_path / "comp"),
                            "--image-size", "2")
    assert code == 2
    assert "kagglekit demo: image_size=2" in err


def test_run_unknown_notebook(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", "segmentation", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "unknown notebook 'segmentation'" in err
    assert "classification" in err


def test_run_bad_parameter_value(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", "classification", "--out", str(tmp_path / "out"), "-p", "EPOCHS", "ten")
    assert code == 2
    assert "-p EPOCHS: 'ten' is not valid; enter a whole number" in err


def test_run_bad_budget(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", "classification", "--out", str(tmp_path / "out"), "--budget", "abc")
    assert code == 2
    assert "--budget='abc'" in err
    assert not (tmp_path / "out" / "image_classification.ipynb").exists()


def test_run_missing_data_folder(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", "classification", "--out", str(tmp_path / "out"),
                            "--data", str(tmp_path / "nope"))
    assert code == 2
    assert "--data" in err and "is not a folder" in err


def test_run_needs_out(capsys):
    code, _, err = run_main(capsys, "run", "classification")
    assert code == 2
    assert "--out" in err


def test_verify_missing_sample_is_a_usage_error(competition, capsys):
    code, _, err = run_main(capsys, "verify", str(competition / "good.csv"), "--sample", str(competition / "nope.csv"))
    assert code == 2
    assert "nope.csv does not exist" in err


def test_verify_valid_submission(competition, capsys):
    code, out, _ = run_main(capsys, "verify", str(competition / "good.csv"), "--sample",
                            str(competition / "sample.csv"), "--labels", "cat,dog")
    assert code == 0, out
    assert "VALID" in out and "INVALID" not in out


def test_verify_invalid_submission(competition, capsys):
    code, out, _ = run_main(capsys, "verify", str(competition / "bad.csv"), "--sample",
                            str(competition / "sample.csv"), "--labels", "cat, dog")
    assert code == 1
    assert "INVALID" in out
    assert "'bird'" in out  # the illegal label is named, with the legal ones
    assert "['cat', 'dog']" in out


def test_verify_missing_submission_is_invalid(competition, capsys):
    code, out, _ = run_main(capsys, "verify", str(competition / "nope.csv"), "--sample",
                            str(competition / "sample.csv"))
    assert code == 1
    assert "INVALID" in out and "does not exist" in out


def test_verify_json(competition, capsys):
    code, out, _ = run_main(capsys, "verify", str(competition / "bad.csv"), "--sample",
                            str(competition / "sample.csv"), "--labels", "cat,dog", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False
    assert report["kind"] == "label"
    assert len(report["errors"]) >= 2
    code, out, _ = run_main(capsys, "verify", str(competition / "good.csv"), "--sample",
                            str(competition / "sample.csv"), "--json")
    assert code == 0
    assert json.loads(out)["valid"] is True


def test_env_report(capsys):
    code, out, _ = run_main(capsys, "env")
    assert code == 0
    assert out.startswith("platform")
    assert "python" in out
