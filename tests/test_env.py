"""Tests for kagglekit_nb.env: platform detection, input discovery, run dirs, hardware report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "kagglekit_nb" / "env.py"


def _load_env_module():
    try:
        import kagglekit_nb.env as module
    except ImportError:  # the package __init__ may not exist yet: load the module file on its own
        spec = importlib.util.spec_from_file_location("kagglekit_nb_env", ENV_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


env = _load_env_module()

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


# --------------------------------------------------------------------------- hardware

NVIDIA_SMI_TEXT = """\
Tesla T4, 15360, 3, 535.104.05
NVIDIA H100 80GB HBM3, 81559, [N/A], 550.54.15
"""


def test_gpu_info_parses_nvidia_smi():
    seen: list[list[str]] = []

    def runner(argv):
        seen.append(list(argv))
        return NVIDIA_SMI_TEXT

    gpus = env.gpu_info(runner=runner)
    assert gpus == [
        {"index": 0, "name": "Tesla T4", "memory_total_mib": 15360, "memory_used_mib": 3,
         "driver": "535.104.05"},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
         "memory_used_mib": None, "driver": "550.54.15"},
    ]
    assert seen[0][0] == "nvidia-smi"
    assert "--format=csv,noheader,nounits" in seen[0]


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError("nvidia-smi"), subprocess.CalledProcessError(9, ["nvidia-smi"]),
     subprocess.TimeoutExpired(["nvidia-smi"], 10)],
)
def test_gpu_info_without_gpu_is_empty(error):
    def runner(argv):
        raise error

    assert env.gpu_info(runner=runner) == []


class FakeNvml:
    """The few pynvml calls gpu_info makes, answering for one 16 GiB GPU."""

    def __init__(self):
        self.shutdown = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self):
        return b"535.104.05"  # old pynvml versions return bytes

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return "Tesla T4"

    def nvmlDeviceGetMemoryInfo(self, handle):
        class Memory:
            total = 16 * 2**30
            used = 300 * 2**20

        return Memory()


def test_gpu_info_reads_nvml_when_installed(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert env.gpu_info() == [
        {"index": 0, "name": "Tesla T4", "memory_total_mib": 16384, "memory_used_mib": 300,
         "driver": "535.104.05"},
    ]
    assert fake.shutdown is True


def test_gpu_info_empty_output():
    assert env.gpu_info(runner=lambda argv: "\n") == []


def test_cpu_count_honours_affinity_and_quota(tmp_path):
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    no_cgroup = tmp_path / "none"
    assert env.cpu_count({}, cgroup_root=no_cgroup) == available
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 workers
    assert env.cpu_count({}, cgroup_root=tmp_path) == min(2, available)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert env.cpu_count({}, cgroup_root=tmp_path) == available
    assert env.cpu_count({"PYTHON_CPU_COUNT": "3"}, cgroup_root=no_cgroup) == 3
    assert env.cpu_count({"PYTHON_CPU_COUNT": "default"}, cgroup_root=no_cgroup) == available
    with pytest.raises(ValueError, match="PYTHON_CPU_COUNT='zero'"):
        env.cpu_count({"PYTHON_CPU_COUNT": "zero"})


def test_cpu_count_cgroup_v1(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert env.cpu_count({}, cgroup_root=tmp_path) == 1


def test_memory_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:  1 kB\nMemAvailable:    8388608 kB\n")
    assert env._memory_gib(meminfo) == {"ram_total_gib": 16.0, "ram_available_gib": 8.0}
    missing = env._memory_gib(tmp_path / "absent")  # falls back to sysconf for the total
    assert missing["ram_available_gib"] is None
    assert missing["ram_total_gib"] is None or missing["ram_total_gib"] > 0


def test_git_revision(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    package = tmp_path / "kagglekit_nb"
    package.mkdir()
    (package / "env.py").write_text("x = 1\n")
    assert env._git_revision(package) is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert env._git_revision(package) is None  # a checkout, but the package is not tracked
    subprocess.run([*git, "add", "kagglekit_nb"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert env._git_revision(package) == head
    (package / "env.py").write_text("x = 2\n")
    assert env._git_revision(package) == f"{head}-dirty"


# --------------------------------------------------------------------------- report


def test_environment_report_is_complete_and_json_ready(tmp_path):
    report = env.environment_report(environ={"CI": "true"}, paths={"data": tmp_path, "out": "o"})
    expected = {
        "platform", "kaggle_run_type", "headless", "python", "os", "cpu_count", "ram_total_gib",
        "ram_available_gib", "ram_limit_gib", "working_dir", "disk_free_gib",
        "cuda_visible_devices", "gpus", "versions", "kagglekit_nb_git", "paths",
    }
    assert set(report) == expected
    assert json.loads(json.dumps(report)) == report
    assert report["platform"] in ("local", "colab")
    assert report["headless"] == "CI=true"
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cpu_count"] >= 1
    assert report["paths"] == {"data": str(tmp_path), "out": "o"}
    assert set(report["versions"]) == {
        "torch", "torchvision", "timm", "albumentations", "segmentation_models_pytorch",
        "lightgbm", "sklearn", "pandas", "numpy", "papermill",
    }
    assert report["versions"]["numpy"] == _installed_version("numpy")
    assert report["versions"]["sklearn"] == _installed_version("scikit-learn")


def _installed_version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return env.NOT_INSTALLED


def test_environment_report_on_kaggle_environ():
    report = env.environment_report(environ=KAGGLE_BATCH)
    assert report["platform"] == "kaggle"
    assert report["kaggle_run_type"] == "Batch"
    assert report["working_dir"] == "/kaggle/working"


def test_format_report_aligns_keys():
    report = {
        "platform": "kaggle",
        "cpu_count": 4,
        "ram_limit_gib": None,
        "gpus": [{"index": 0, "name": "Tesla T4", "memory_total_mib": 15360,
                  "memory_used_mib": 3, "driver": "535.104.05"}],
        "versions": {"torch": "2.3.0", "timm": env.NOT_INSTALLED},
        "paths": {},
    }
    text = env.format_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("platform") and lines[0].endswith(": kaggle")
    assert len({line.index(":") for line in lines}) == 1  # every colon in one column
    assert any(line.endswith(": Tesla T4, 3/15360 MiB used, driver 535.104.05") for line in lines)
    assert any(line.strip().startswith("timm") and line.endswith(": not installed")
               for line in lines)
    assert any(line.startswith("ram_limit_gib") and line.endswith(": -") for line in lines)
    assert any(line.startswith("gpus") and line.endswith(": 1") for line in lines)


def test_report_does_not_import_torch_or_initialise_cuda():
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        # Load env.py on its own: the package __init__ imports torch (allowed), env must not.
        spec = importlib.util.spec_from_file_location("kagglekit_nb_env", {str(ENV_FILE)!r})
        env = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(env)
        env.format_report(env.environment_report())
        imported_torch = "torch" in sys.modules
        try:
            import torch
        except ImportError:
            initialised = None
        else:
            initialised = torch.cuda.is_initialized()
        print(json.dumps({{"imported_torch": imported_torch, "cuda_initialised": initialised}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported_torch"] is False
    assert result["cuda_initialised"] in (False, None)


def test_package_import_and_report_leave_cuda_uninitialised():
    script = (
        "import json, kagglekit_nb as kk, torch\n"
        "kk.env.format_report(kk.environment_report())\n"
        "print(json.dumps({'cuda_initialised': torch.cuda.is_initialized()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"cuda_initialised": False}
