"""Tests for kagglekit_nb.hardware: GPUs without CUDA, CPUs under cgroup quotas, memory, git
revision, the environment report and its text form, and that none of it imports torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kagglekit_nb import hardware

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_BATCH = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_DATA_PROXY_URL": "http://proxy"}

NVIDIA_SMI_TEXT = """\
Tesla T4, 15360, 3, 535.104.05
NVIDIA H100 80GB HBM3, 81559, [N/A], 550.54.15
"""


def test_gpu_info_parses_nvidia_smi():
    seen: list[list[str]] = []

    def runner(argv):
        seen.append(list(argv))
        return NVIDIA_SMI_TEXT

    gpus = hardware.gpu_info(runner=runner)
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

    assert hardware.gpu_info(runner=runner) == []


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
    assert hardware.gpu_info() == [
        {"index": 0, "name": "Tesla T4", "memory_total_mib": 16384, "memory_used_mib": 300,
         "driver": "535.104.05"},
    ]
    assert fake.shutdown is True


def test_gpu_info_empty_output():
    assert hardware.gpu_info(runner=lambda argv: "\n") == []


def test_cpu_count_honours_affinity_and_quota(tmp_path):
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    no_cgroup = tmp_path / "none"
    assert hardware.cpu_count({}, cgroup_root=no_cgroup) == available
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 workers
    assert hardware.cpu_count({}, cgroup_root=tmp_path) == min(2, available)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert hardware.cpu_count({}, cgroup_root=tmp_path) == available
    assert hardware.cpu_count({"PYTHON_CPU_COUNT": "3"}, cgroup_root=no_cgroup) == 3
    assert hardware.cpu_count({"PYTHON_CPU_COUNT": "default"}, cgroup_root=no_cgroup) == available
    with pytest.raises(ValueError, match="PYTHON_CPU_COUNT='zero'"):
        hardware.cpu_count({"PYTHON_CPU_COUNT": "zero"})


def test_cpu_count_cgroup_v1(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert hardware.cpu_count({}, cgroup_root=tmp_path) == 1


def test_memory_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:  1 kB\nMemAvailable:    8388608 kB\n")
    assert hardware._memory_gib(meminfo) == {"ram_total_gib": 16.0, "ram_available_gib": 8.0}
    missing = hardware._memory_gib(tmp_path / "absent")  # falls back to sysconf for the total
    assert missing["ram_available_gib"] is None
    assert missing["ram_total_gib"] is None or missing["ram_total_gib"] > 0


def test_git_revision(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    package = tmp_path / "kagglekit_nb"
    package.mkdir()
    (package / "hardware.py").write_text("x = 1\n")
    assert hardware._git_revision(package) is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert hardware._git_revision(package) is None  # a checkout, but the package is not tracked
    subprocess.run([*git, "add", "kagglekit_nb"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert hardware._git_revision(package) == head
    (package / "hardware.py").write_text("x = 2\n")
    assert hardware._git_revision(package) == f"{head}-dirty"


# --------------------------------------------------------------------------- report


def test_environment_report_is_complete_and_json_ready(tmp_path):
    report = hardware.environment_report(environ={"CI": "true"}, paths={"data": tmp_path, "out": "o"})
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
        return hardware.NOT_INSTALLED


def test_environment_report_on_kaggle_environ():
    report = hardware.environment_report(environ=KAGGLE_BATCH)
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
        "versions": {"torch": "2.3.0", "timm": hardware.NOT_INSTALLED},
        "paths": {},
    }
    text = hardware.format_report(report)
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
        """
        import json, sys
        import kagglekit_nb as kk
        from kagglekit_nb import hardware
        hardware.format_report(kk.environment_report())
        imported_torch = "torch" in sys.modules
        try:
            import torch
        except ImportError:
            initialised = None
        else:
            initialised = torch.cuda.is_initialized()
        print(json.dumps({"imported_torch": imported_torch, "cuda_initialised": initialised}))
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
        "kk.fit, kk.start_run  # the torch-side names load too\n"
        "kk.hardware.format_report(kk.environment_report())\n"
        "print(json.dumps({'cuda_initialised': torch.cuda.is_initialized()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"cuda_initialised": False}
