"""The kit as people install it: the built wheel (not an editable checkout) carries the notebooks,
and `kagglekit new`, `run` and `verify` work from it in a fresh virtual env and an unrelated folder."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_the_package_list_names_every_package_folder():
    """pyproject lists packages by hand (the notebooks are mapped in from the top level): a new
    sub-package that is not listed would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kagglekit_nb").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"kagglekit_nb.notebooks"}
    assert config["package-dir"] == {"kagglekit_nb.notebooks": "notebooks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, cwd=out)
    (path,) = out.glob("kagglekit_nb-*.whl")
    return path


def test_the_wheel_carries_the_four_notebooks_and_their_twins(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert len(NOTEBOOKS) == 4
    for name in NOTEBOOKS:
        assert f"kagglekit_nb/notebooks/{name}" in names
        assert f"kagglekit_nb/notebooks/{Path(name).with_suffix('.py')}" in names


@pytest.mark.notebook
def test_new_run_and_verify_from_the_installed_wheel(wheel, tmp_path):
    """A fresh venv gets the wheel (not editable) and reuses this env's other packages offline; from
    an unrelated folder `kagglekit new`, `kagglekit run classification` and `kagglekit verify` work."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # the test env's packages (torch, timm, papermill...) without its editable kagglekit_nb: a plain
    # path entry, so the editable finder's .pth in that folder is not run
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "test_env_packages.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KAGGLEKIT_NOTEBOOKS", "KAGGLEKIT_BUDGET")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    kagglekit = str(venv / "bin" / "kagglekit")

    where = subprocess.check_output([str(python), "-c", "import kagglekit_nb; print(kagglekit_nb.__file__)"],
                                    text=True, cwd=work, env=env).strip()
    assert Path(where).is_relative_to(site), where       # the installed copy, not the checkout

    new = subprocess.run([kagglekit, "new", "classification"], cwd=work, env=env, capture_output=True, text=True)
    assert new.returncode == 0, new.stderr
    assert (work / "image_classification.ipynb").is_file()
    again = subprocess.run([kagglekit, "new", "classification"], cwd=work, env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr

    demo = subprocess.run([kagglekit, "demo", "classification", "--out", "demo"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr
    run = subprocess.run([kagglekit, "run", "classification", "--data", "demo", "--out", "out", "--budget", "90s",
                          "-p", "FOLDS", "2", "-p", "EPOCHS", "2", "-p", "MODEL", "resnet18", "-p", "IMG_SIZE", "32"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # a quiet terminal: no kernel-transport warning, no library deprecation noise
    for noise in ("running over TCP without encryption", "DeprecationWarning", "FutureWarning"):
        assert noise not in run.stderr + run.stdout, noise
    assert (work / "out" / "submission.csv").is_file()

    verify = subprocess.run([kagglekit, "verify", "out/submission.csv", "--sample", "demo/sample_submission.csv"],
                            cwd=work, env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
