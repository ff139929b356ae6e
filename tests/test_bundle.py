"""Internet-off notebooks: the wheels bundle (`kagglekit bundle`) installs the kit from its folder alone,
through the notebooks' setup cell; pretrained weights resolve from attached files by model name.

The install test stands a fresh virtual environment in for Kaggle's image: it sees every package of
the development environment except kagglekit_nb itself (what "the image already has"), so the bundle
holds only the kit's wheel and nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from kagglekit_nb import bundle as bundle_module
from kagglekit_nb import env, kaggle_io
from kagglekit_nb.bundle import BundleError, build_bundle
from kagglekit_nb.setup_cell import SETUP_CELL

ROOT = Path(__file__).resolve().parents[1]
DATASET = "tester/kagglekit-nb-wheels"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The real bundle of the kit alone (its dependencies stand for what Kaggle's image has)."""
    out = tmp_path_factory.mktemp("bundle") / "wheels"
    return build_bundle(out, defaults=False, dataset=DATASET, log=lambda m: None)


def test_the_bundle_holds_the_kit_wheel_a_manifest_and_dataset_metadata(bundle):
    (wheel,) = bundle.wheels
    assert wheel.name.startswith("kagglekit_nb-") and wheel.name.endswith("-py3-none-any.whl")
    notebooks = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".ipynb"))
    assert notebooks == sorted(f"kagglekit_nb/notebooks/{p.name}" for p in
                               (Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
    manifest = json.loads((bundle.folder / "manifest.json").read_text())
    assert manifest == bundle.manifest
    assert manifest["wheels"] == [{"file": wheel.name, "bytes": wheel.stat().st_size,
                                   "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}]
    meta = json.loads((bundle.folder / "dataset-metadata.json").read_text())
    # what `kaggle datasets create` checks: owner/slug id, slug and title of 6-50 characters, one license
    assert meta["id"] == DATASET
    assert 6 <= len(meta["id"].split("/")[1]) <= 50 and 6 <= len(meta["title"]) <= 50
    assert len(meta["licenses"]) == 1 and meta["licenses"][0]["name"]
    readme = (bundle.folder / "README.txt").read_text()
    assert "kaggle datasets create -p" in readme and wheel.name in readme
    assert not [p for p in bundle.folder.parent.iterdir() if p.name.startswith(".wheels.")]  # no build leftovers


def _fake_kaggle_image(tmp_path: Path) -> Path:
    """A fresh venv that sees the development environment's packages, minus kagglekit_nb."""
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "kagglekit" not in entry.name.lower():
            (preinstalled / entry.name).symlink_to(entry)
    (site / "preinstalled.pth").write_text(f"{preinstalled}\n")
    return python


def test_the_setup_cell_installs_the_kit_from_the_bundle_alone(bundle, tmp_path):
    python = _fake_kaggle_image(tmp_path)
    probe = "import kagglekit_nb, importlib.metadata as m; print(kagglekit_nb.__file__); print(m.version('kagglekit_nb'))"
    before = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120)
    assert before.returncode != 0 and "No module named 'kagglekit_nb'" in before.stderr

    kaggle_input = tmp_path / "kaggle_input"  # the bundle attached as a dataset
    (kaggle_input / "datasets" / "tester").mkdir(parents=True)
    (kaggle_input / "datasets" / "tester" / "kagglekit-nb-wheels").symlink_to(bundle.folder)
    cell = SETUP_CELL.replace('_kaggle_input = "/kaggle/input"', f"_kaggle_input = {str(kaggle_input)!r}")
    # No index at all: pip may only use the bundle's folder.
    installed = subprocess.run([str(python), "-c", cell], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300,
                               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_INDEX_URL": "http://0.0.0.0:9/"})
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "installing kagglekit_nb from" in installed.stdout and "kagglekit-nb-wheels" in installed.stdout

    after = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120)
    assert after.returncode == 0, after.stderr[-3000:]
    location, version = after.stdout.split()
    assert Path(location).is_relative_to(tmp_path / "image")  # from the wheel, not the source checkout
    assert bundle.wheels[0].name.startswith(f"kagglekit_nb-{version}-")
    again = subprocess.run([str(python), "-c", cell], capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120)
    assert again.returncode == 0 and "installing" not in again.stdout  # installed now: the cell does nothing


# --------------------------------------------------------------------------- what gets built (fake pip)


class FakePip:
    """Records pip commands and writes the wheels they would build."""

    def __init__(self, fail: bool = False):
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, args):
        self.commands.append(list(args))
        self.from_source = getattr(self, "from_source", []) + [Path(args[-1], "pyproject.toml").is_file()]
        if self.fail:
            raise BundleError("`pip wheel` failed: no network")
        out = Path(args[args.index("--wheel-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if len(self.commands) == 1:
            (out / "kagglekit_nb-0.1.0-py3-none-any.whl").write_bytes(b"kit")
        else:
            (out / "segmentation_models_pytorch-0.6.0-py3-none-any.whl").write_bytes(b"smp")


def test_only_missing_adds_the_documented_packages_without_their_dependencies(tmp_path):
    pip = FakePip()
    result = build_bundle(tmp_path / "w", packages=["lightgbm==4.5.0"], dataset=DATASET, pip=pip, log=lambda m: None)
    kit, extra = pip.commands
    assert kit[:2] == ["wheel", "--no-deps"] and pip.from_source == [True, False]  # the kit from a source copy
    assert extra[:2] == ["wheel", "--no-deps"]
    assert extra[-2:] == [*bundle_module.KAGGLE_MISSING, "lightgbm==4.5.0"]
    assert [w.name for w in result.wheels] == ["kagglekit_nb-0.1.0-py3-none-any.whl",
                                              "segmentation_models_pytorch-0.6.0-py3-none-any.whl"]
    assert result.manifest["requested"] == ["kagglekit_nb", *bundle_module.KAGGLE_MISSING, "lightgbm==4.5.0"]


def test_all_resolves_every_dependency_of_the_kit_wheel(tmp_path):
    pip = FakePip()
    build_bundle(tmp_path / "w", all_dependencies=True, dataset=DATASET, pip=pip, log=lambda m: None)
    deps = pip.commands[1]
    assert "--no-deps" not in deps and deps[-1].endswith("kagglekit_nb-0.1.0-py3-none-any.whl")
    assert "--find-links" in deps


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files"):
        build_bundle(tmp_path / "w", dataset=DATASET, pip=FakePip(), log=lambda m: None)
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["notes.txt"]


def test_a_rebuild_replaces_the_earlier_bundle_only_when_it_succeeds(tmp_path):
    out = tmp_path / "w"
    build_bundle(out, dataset=DATASET, pip=FakePip(), log=lambda m: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BundleError, match="no network"):
        build_bundle(out, dataset=DATASET, pip=FakePip(fail=True), log=lambda m: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # the failed build's temp folder is gone
    result = build_bundle(out, defaults=False, dataset=DATASET, pip=FakePip(), log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "dataset-metadata.json",
                                                     "kagglekit_nb-0.1.0-py3-none-any.whl", "manifest.json"]
    assert [w.name for w in result.wheels] == ["kagglekit_nb-0.1.0-py3-none-any.whl"]


@pytest.mark.parametrize("dataset", ["wheels", "tester/short", "tester/Upper-Case", "a/b/c"])
def test_a_bad_dataset_id_is_refused_before_building(tmp_path, dataset):
    pip = FakePip()
    with pytest.raises(ValueError, match="OWNER/NAME"):
        build_bundle(tmp_path / "w", dataset=dataset, pip=pip, log=lambda m: None)
    assert pip.commands == []


def test_without_credentials_the_metadata_asks_for_an_owner(tmp_path):
    def no_credentials():
        raise kaggle_io.KaggleCredentialsError("no Kaggle credentials found")

    lines: list[str] = []
    build_bundle(tmp_path / "w", pip=FakePip(), api_factory=no_credentials, log=lines.append)
    meta = json.loads((tmp_path / "w" / "dataset-metadata.json").read_text())
    assert meta["id"] == "INSERT_YOUR_KAGGLE_USERNAME/kagglekit-nb-wheels"
    assert any("--dataset OWNER/NAME" in line for line in lines)


def test_bundle_command_usage_errors(tmp_path, capsys):
    from kagglekit_nb.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bundle", "--out", str(tmp_path / "w"), "--only-missing", "--all"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    assert main(["bundle", "--out", str(tmp_path / "w"), "--dataset", DATASET]) == 2
    assert "already holds other files" in capsys.readouterr().err


# --------------------------------------------------------------------------- pretrained weights by name


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w")
    return path


def test_find_weights_in_an_attached_dataset(tmp_path):
    found = _touch(tmp_path / "input" / "timm-weights" / "resnet18.a1_in1k.safetensors")
    _touch(tmp_path / "input" / "timm-weights" / "resnet18d.pth")  # another model
    _touch(tmp_path / "input" / "comp" / "train" / "resnet18.png")  # not a weights file
    assert env.find_weights("resnet18", input_root=tmp_path / "input", local_dir=tmp_path / "none") == found


def test_find_weights_in_a_hub_snapshot_folder(tmp_path):
    found = _touch(tmp_path / "input" / "models--timm--efficientnet_b0.ra_in1k" / "snapshots" / "abc"
                   / "model.safetensors")
    assert env.find_weights("efficientnet_b0", input_root=tmp_path / "input", local_dir=tmp_path / "no") == found


def test_find_weights_order_explicit_then_input_then_local(tmp_path):
    local = _touch(tmp_path / "weights" / "resnet34.pth")
    kw = {"input_root": tmp_path / "input", "local_dir": tmp_path / "weights"}
    assert env.find_weights("resnet34", **kw) == local
    attached = _touch(tmp_path / "input" / "w" / "resnet34-333f7ec4.pth")
    assert env.find_weights("resnet34", **kw) == attached
    explicit = _touch(tmp_path / "mine" / "r34.bin")
    assert env.find_weights("resnet34", explicit, **kw) == explicit
    assert env.find_weights("resnet34", tmp_path / "weights", **kw) == local  # a folder is searched


def test_find_weights_ambiguous_or_missing_says_what_to_do(tmp_path):
    _touch(tmp_path / "input" / "a" / "resnet18.a1_in1k.safetensors")
    _touch(tmp_path / "input" / "b" / "resnet18.tv_in1k.pth")
    kw = {"input_root": tmp_path / "input", "local_dir": tmp_path / "weights"}
    with pytest.raises(ValueError, match="several weights files for resnet18") as e:
        env.find_weights("resnet18", **kw)
    assert "Set WEIGHTS" in str(e.value)
    exact = _touch(tmp_path / "input" / "c" / "resnet18.pth")
    assert env.find_weights("resnet18", **kw) == exact
    with pytest.raises(FileNotFoundError, match="no pretrained weights for 'convnext_tiny'") as e:
        env.find_weights("convnext_tiny", **kw)
    assert "attach a Kaggle dataset" in str(e.value) and "WEIGHTS=None" in str(e.value)
    assert env.find_weights("convnext_tiny", required=False, **kw) is None
    with pytest.raises(FileNotFoundError, match="WEIGHTS="):
        env.find_weights("resnet18", tmp_path / "missing.pth", **kw)


def test_input_dir_is_kaggle_input_on_kaggle_and_local_elsewhere(tmp_path):
    kaggle = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_DATA_PROXY_URL": "x"}
    assert env.input_dir(environ=kaggle) == env.KAGGLE_INPUT
    assert env.input_dir(environ={}) == Path.cwd() / "input"
    assert env.input_dir(environ={env.INPUT_VAR: str(tmp_path)}) == tmp_path
