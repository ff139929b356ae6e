"""Tests for kagglekit_nb.env: platform detection, input and weights discovery, run dirs (the
machine report: test_hardware)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kagglekit_nb import env

KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "KAGGLE_DATA_PROXY_URL": "http://proxy"}
KAGGLE_BATCH = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_DATA_PROXY_URL": "http://proxy"}
COLAB = {"COLAB_RELEASE_TAG": "release-colab_20240101-060000_RC00"}


class FakeKernelShell:
    """Stands in for ZMQInteractiveShell: a shell attached to a kernel."""

    kernel = object()


class FakeTerminalShell:
    """Stands in for the terminal IPython shell, which has no kernel."""


# --------------------------------------------------------------------------- platform


@pytest.mark.parametrize(
    ("environ", "colab_importable", "expected"),
    [
        (KAGGLE, False, "kaggle"),
        (KAGGLE_BATCH, False, "kaggle"),
        ({**KAGGLE, **COLAB}, True, "kaggle"),  # Kaggle's image is built on Colab's
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, False, "local"),  # one Kaggle var is not enough
        ({"KAGGLE_DATA_PROXY_URL": "http://proxy"}, False, "local"),
        ({"KAGGLE_DATA_PROXY_URL": "http://proxy", **COLAB}, False, "colab"),
        (COLAB, False, "colab"),
        ({}, True, "colab"),  # google.colab importable
        ({}, False, "local"),
        ({"HOME": "/root", "PATH": "/usr/bin"}, False, "local"),
    ],
)
def test_detect_platform(environ, colab_importable, expected):
    assert env.detect_platform(environ, colab_importable=colab_importable) == expected


def test_detect_platform_checks_google_colab_module_when_not_told():
    expected = "colab" if importlib.util.find_spec("google") and importlib.util.find_spec(
        "google.colab"
    ) else "local"
    assert env.detect_platform({}) == expected


def test_kaggle_run_type():
    assert env.kaggle_run_type(KAGGLE) == "Interactive"
    assert env.kaggle_run_type(KAGGLE_BATCH) == "Batch"
    assert env.kaggle_run_type({}) is None
    assert env.kaggle_run_type({"KAGGLE_KERNEL_RUN_TYPE": ""}) is None


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, None),
        (KAGGLE, None),
        (KAGGLE_BATCH, "KAGGLE_KERNEL_RUN_TYPE=Batch"),
        ({"CI": "true"}, "CI=true"),
        ({"CI": "false"}, None),
        ({"CI": "0"}, None),
        ({"KAGGLEKIT_HEADLESS": "1"}, "KAGGLEKIT_HEADLESS=1"),
        ({"KAGGLEKIT_HEADLESS": ""}, None),
        ({"PAPERMILL_EXECUTION": "yes"}, "PAPERMILL_EXECUTION=yes"),
        ({"PYTEST_CURRENT_TEST": "tests/x.py::t (call)"}, "PYTEST_CURRENT_TEST=tests/x.py::t"),
    ],
)
def test_headless_reason(environ, reason):
    got = env.headless_reason(environ)
    if reason is None:
        assert got is None
    else:
        assert got.startswith(reason)


def test_has_live_frontend_needs_a_kernel_shell():
    assert env.has_live_frontend({}, ipython=FakeKernelShell()) is True
    assert env.has_live_frontend(KAGGLE, ipython=FakeKernelShell()) is True
    assert env.has_live_frontend({}, ipython=FakeTerminalShell()) is False
    # Plain python (no IPython loaded into this test process by us): no front end.
    if "IPython" not in sys.modules:
        assert env.has_live_frontend({}) is False


@pytest.mark.parametrize(
    "environ",
    [KAGGLE_BATCH, {"CI": "true"}, {"KAGGLEKIT_HEADLESS": "1"}, {"PAPERMILL_EXECUTION": "1"}],
)
def test_has_live_frontend_false_when_headless(environ):
    assert env.has_live_frontend(environ, ipython=FakeKernelShell()) is False


# --------------------------------------------------------------------------- input discovery

REQUIRED = ["train.csv", "sample_submission.csv"]


def _competition(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or ("train.csv", "test.csv", "sample_submission.csv"):
        (folder / name).write_text("id,label\n")
    return folder


def test_find_competition_dir_slug_layout(tmp_path):
    comp = _competition(tmp_path / "digit-recognizer")
    _competition(tmp_path / "some-weights-dataset", "model.pth")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) == comp


def test_find_competition_dir_competitions_layout(tmp_path):
    comp = _competition(tmp_path / "competitions" / "isic-2024")
    _competition(tmp_path / "datasets" / "someone" / "pretrained", "weights.pth")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) == comp


def test_find_competition_dir_dataset_one_level_deeper(tmp_path):
    comp = _competition(tmp_path / "datasets" / "owner" / "glacier-data")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) == comp


def test_find_competition_dir_glob_patterns_and_folders(tmp_path):
    comp = _competition(tmp_path / "glacierhack", "train.csv")
    (comp / "Train" / "Band1").mkdir(parents=True)
    (comp / "Train" / "Band1" / "img001.tif").write_bytes(b"x")
    _competition(tmp_path / "other", "train.csv")
    found = env.find_competition_dir(["*.csv", "Train/Band1/*.tif"], input_root=tmp_path)
    assert found == comp


def test_find_competition_dir_root_itself(tmp_path):
    _competition(tmp_path)
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) == tmp_path


def test_find_competition_dir_prefers_shallowest_copy(tmp_path):
    comp = _competition(tmp_path / "comp")
    _competition(tmp_path / "comp" / "copy")  # a dataset that repeats its files one level down
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) == comp


def test_find_competition_dir_ambiguous_raises_with_candidates(tmp_path):
    first = _competition(tmp_path / "competitions" / "comp-a")
    second = _competition(tmp_path / "comp-b")
    with pytest.raises(ValueError, match="DATA_DIR") as info:
        env.find_competition_dir(REQUIRED, input_root=tmp_path)
    message = str(info.value)
    assert str(first) in message and str(second) in message
    assert "slug" in message


def test_find_competition_dir_slug_disambiguates(tmp_path):
    first = _competition(tmp_path / "competitions" / "comp-a")
    second = _competition(tmp_path / "comp-b")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path, slug="comp-a") == first
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path, slug="comp-b") == second


def test_find_competition_dir_slug_prefers_shallowest(tmp_path):
    shallow = _competition(tmp_path / "comp")
    _competition(tmp_path / "competitions" / "comp")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path, slug="comp") == shallow


def test_find_competition_dir_unknown_slug_lists_candidates(tmp_path):
    comp = _competition(tmp_path / "comp-a")
    with pytest.raises(ValueError, match="slug='nope'") as info:
        env.find_competition_dir(REQUIRED, input_root=tmp_path, slug="nope")
    assert str(comp) in str(info.value)


def test_find_competition_dir_missing_returns_none(tmp_path):
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path / "absent") is None
    _competition(tmp_path / "comp", "train.csv")  # no sample_submission.csv
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) is None


def test_find_competition_dir_respects_max_depth(tmp_path):
    deep = _competition(tmp_path / "a" / "b" / "c" / "d")
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path) is None
    assert env.find_competition_dir(REQUIRED, input_root=tmp_path, max_depth=4) == deep


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"required": "train.csv"}, "required='train.csv'"),
        ({"required": []}, "required=[]"),
        ({"required": ["train.csv", ""]}, "required contains"),
        ({"required": REQUIRED, "max_depth": -1}, "max_depth=-1"),
    ],
)
def test_find_competition_dir_validates_arguments(tmp_path, kwargs, needle):
    with pytest.raises(ValueError) as info:
        env.find_competition_dir(input_root=tmp_path, **kwargs)
    assert needle in str(info.value)


# --------------------------------------------------------------------------- directories


def test_working_dir_per_platform():
    assert env.working_dir("kaggle") == Path("/kaggle/working")
    assert env.working_dir("colab") == Path("/content")
    assert env.working_dir("local") == Path.cwd()
    assert env.working_dir(None, KAGGLE) == Path("/kaggle/working")
    with pytest.raises(ValueError, match="platform='windows'.*kaggle, colab, local"):
        env.working_dir("windows")


def test_scratch_dir_per_platform(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert env.scratch_dir("kaggle", {}) == Path("/kaggle/temp")
    assert env.scratch_dir("colab", {}) == Path("/content/kagglekit_data")
    assert env.scratch_dir("local", {}) == tmp_path / ".kagglekit_data"
    assert not (tmp_path / ".kagglekit_data").exists()  # callers create it


def test_scratch_dir_detects_the_platform_and_the_override_wins_everywhere(tmp_path):
    assert env.scratch_dir(environ=KAGGLE) == Path("/kaggle/temp")
    assert env.scratch_dir(environ=COLAB) == Path("/content/kagglekit_data")
    for platform in env.PLATFORMS:
        assert env.scratch_dir(platform, {"KAGGLEKIT_SCRATCH": str(tmp_path / "s")}) == tmp_path / "s"
    assert env.scratch_dir(None, {**KAGGLE, "KAGGLEKIT_SCRATCH": "  "}) == Path("/kaggle/temp")  # blank: unset
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="platform='windows'"):
        env.scratch_dir("windows", {})


def test_make_scratch_dir_creates_the_folder(tmp_path):
    path = env.make_scratch_dir("kaggle", {"KAGGLEKIT_SCRATCH": str(tmp_path / "a" / "b")})
    assert path == tmp_path / "a" / "b" and path.is_dir()


def test_kaggle_scratch_falls_back_when_its_folder_cannot_be_made(tmp_path):
    assert env._scratch_dirs("kaggle", {}) == [Path("/kaggle/temp"), Path("/tmp/kagglekit")]
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder would go")
    said: list[str] = []
    assert env._first_creatable([blocker / "temp", tmp_path / "fallback"], said.append) == tmp_path / "fallback"
    assert (tmp_path / "fallback").is_dir()
    assert len(said) == 1 and f"cannot create {blocker / 'temp'}" in said[0] and "goes to" in said[0]
    with pytest.raises(OSError, match="cannot create the scratch folder .*KAGGLEKIT_SCRATCH"):
        env._first_creatable([blocker / "only"], said.append)


class FakeMount:
    """Records calls and creates the MyDrive folder like google.colab.drive.mount does."""

    def __init__(self, fail: Exception | None = None, create: bool = True):
        self.calls: list[str] = []
        self.fail = fail
        self.create = create

    def __call__(self, root: str) -> None:
        self.calls.append(root)
        if self.fail is not None:
            raise self.fail
        if self.create:
            (Path(root) / "MyDrive").mkdir(parents=True)


def test_run_dir_colab_interactive_mounts_drive(tmp_path):
    mount, warned = FakeMount(), []
    path = env.run_dir(
        "exp1", platform="colab", environ={}, interactive=True, drive_root=tmp_path / "drive",
        mount=mount, local_root=tmp_path / "local", warn=warned.append,
    )
    assert path == tmp_path / "drive" / "MyDrive" / "kagglekit" / "exp1"
    assert path.is_dir()
    assert mount.calls == [str(tmp_path / "drive")]
    assert warned == []


def test_run_dir_colab_detects_front_end_from_environ(tmp_path):
    mount = FakeMount()
    with pytest.warns(UserWarning, match="CI=true.*NOT survive"):
        path = env.run_dir(
            "exp1", platform="colab", environ={"CI": "true"}, drive_root=tmp_path / "drive",
            mount=mount, local_root=tmp_path / "local",
        )
    assert path == tmp_path / "local" / "exp1"
    assert mount.calls == []


def test_run_dir_colab_headless_falls_back_with_warning(tmp_path):
    mount = FakeMount()
    with pytest.warns(UserWarning, match="will NOT survive a disconnect"):
        path = env.run_dir(
            "exp1", platform="colab", environ={}, interactive=False,
            drive_root=tmp_path / "drive", mount=mount, local_root=tmp_path / "local",
        )
    assert path == tmp_path / "local" / "exp1"
    assert path.is_dir()
    assert mount.calls == []
    assert not (tmp_path / "drive").exists()


def test_run_dir_colab_uses_drive_already_mounted_even_headless(tmp_path):
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    mount, warned = FakeMount(), []
    path = env.run_dir(
        "exp1", platform="colab", environ={}, interactive=False, drive_root=tmp_path / "drive",
        mount=mount, local_root=tmp_path / "local", warn=warned.append,
    )
    assert path == tmp_path / "drive" / "MyDrive" / "kagglekit" / "exp1"
    assert mount.calls == [] and warned == []


@pytest.mark.parametrize(
    ("mount", "needle"),
    [
        (FakeMount(fail=RuntimeError("mount failed: user declined")), "RuntimeError: mount failed"),
        (FakeMount(create=False), "no MyDrive folder"),
    ],
)
def test_run_dir_colab_mount_failure_falls_back(tmp_path, mount, needle):
    warned: list[str] = []
    path = env.run_dir(
        "exp1", platform="colab", environ={}, interactive=True, drive_root=tmp_path / "drive",
        mount=mount, local_root=tmp_path / "local", warn=warned.append,
    )
    assert path == tmp_path / "local" / "exp1"
    assert path.is_dir()
    assert len(warned) == 1
    assert needle in warned[0] and "will NOT survive a disconnect" in warned[0]


def test_run_dir_local_and_kaggle_roots(tmp_path, monkeypatch):
    path = env.run_dir("exp2", platform="local", local_root=tmp_path)
    assert path == tmp_path / "exp2" and path.is_dir()
    kaggle = env.run_dir("exp2", platform="kaggle", local_root=tmp_path / "k")
    assert kaggle == tmp_path / "k" / "exp2"
    monkeypatch.chdir(tmp_path)  # the default local root is ./runs
    assert env.run_dir("exp3", platform="local") == tmp_path / "runs" / "exp3"
    assert (tmp_path / "runs" / "exp3").is_dir()


@pytest.mark.parametrize(
    "name", ["", "   ", "a/b", "a\\b", "..", ".", "x..y", "../up", "a\0b", None]
)
def test_run_dir_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="run_name="):
        env.run_dir(name, platform="local", local_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_dir_rejects_unknown_platform(tmp_path):
    with pytest.raises(ValueError, match="platform='kagle'"):
        env.run_dir("exp", platform="kagle", local_root=tmp_path)
