"""What the notebook runs on: GPUs, CPUs, memory, disk, library versions, and the report of them all.

Nothing here touches ``torch.cuda``: a notebook process that initialises CUDA breaks multi-GPU
launchers started from it, so GPUs are read through NVML or ``nvidia-smi`` instead, and library
versions through ``importlib.metadata`` (nothing gets imported). Standard library only.

    print(format_report(environment_report()))       # what `kagglekit env` prints
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform as _platform
import shutil
import subprocess
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .env import _env, detect_platform, headless_reason, kaggle_run_type, working_dir

__all__ = ["NOT_INSTALLED", "cpu_count", "environment_report", "format_report", "gpu_info"]

# Report name -> distribution name; read through importlib.metadata so nothing gets imported.
_LIBRARIES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "albumentations": "albumentations",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "lightgbm": "lightgbm",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "numpy": "numpy",
    "papermill": "papermill",
}
NOT_INSTALLED = "not installed"

_NVIDIA_SMI = (
    "nvidia-smi",
    "--query-gpu=name,memory.total,memory.used,driver_version",
    "--format=csv,noheader,nounits",
)
_SUBPROCESS_TIMEOUT_S = 10.0
_MIB = 2**20
_GIB = 2**30

Runner = Callable[[Sequence[str]], str]


# --------------------------------------------------------------------------- hardware


def _run_command(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S, check=True
    )
    return done.stdout


def _to_int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]" on some virtualised GPUs
        return None


def _parse_nvidia_smi(text: str) -> list[dict]:
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # The name is the only field that may hold commas, so split from the right.
        fields = [f.strip() for f in line.rsplit(",", 3)]
        if len(fields) != 4:
            continue
        name, total, used, driver = fields
        gpus.append(
            {
                "index": len(gpus),
                "name": name,
                "memory_total_mib": _to_int(total),
                "memory_used_mib": _to_int(used),
                "driver": driver,
            }
        )
    return gpus


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _gpu_info_nvml() -> list[dict] | None:
    try:
        with warnings.catch_warnings():  # the old ``pynvml`` wrapper warns on import
            warnings.simplefilter("ignore")
            import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver or no GPU; let nvidia-smi have its say
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_total_mib": int(memory.total) // _MIB,
                    "memory_used_mib": int(memory.used) // _MIB,
                    "driver": driver,
                }
            )
        return gpus
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def gpu_info(*, runner: Runner | None = None) -> list[dict]:
    """List GPUs as dicts (index, name, memory_total_mib, memory_used_mib, driver) without CUDA.

    Reads NVML through ``pynvml`` when installed, else ``nvidia-smi``; ``runner(argv) -> stdout``
    replaces the ``nvidia-smi`` call (and skips NVML). Returns [] when there is no GPU or driver.
    """
    if runner is None:
        gpus = _gpu_info_nvml()
        if gpus is not None:
            return gpus
        runner = _run_command
    try:
        text = runner(list(_NVIDIA_SMI))
    except (OSError, subprocess.SubprocessError):  # no nvidia-smi, driver error, or a hang
        return []
    return _parse_nvidia_smi(text)


def _cgroup_cpu_limit(cgroup_root: Path) -> int | None:
    try:  # cgroup v2
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def cpu_count(
    environ: Mapping[str, str] | None = None, *, cgroup_root: str | Path = "/sys/fs/cgroup"
) -> int:
    """Return the CPUs this process may use (affinity and container quota), e.g. for num_workers.

    ``PYTHON_CPU_COUNT`` (as in Python 3.13) overrides the measurement.
    """
    override = _env(environ).get("PYTHON_CPU_COUNT", "").strip()
    if override and override != "default":
        if not override.isdigit() or int(override) < 1:
            raise ValueError(
                f"PYTHON_CPU_COUNT={override!r} must be a positive integer or 'default'"
            )
        return int(override)
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(Path(cgroup_root))
    return max(1, min(count, limit) if limit is not None else count)


def _memory_gib(meminfo: Path = Path("/proc/meminfo")) -> dict[str, float | None]:
    values: dict[str, int] = {}
    try:
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024  # reported in kB
    except OSError:
        pass
    total = values.get("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            total = None
    available = values.get("MemAvailable")
    return {
        "ram_total_gib": None if total is None else round(total / _GIB, 1),
        "ram_available_gib": None if available is None else round(available / _GIB, 1),
    }


def _cgroup_memory_limit_gib(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    # A container may be killed well below the machine's RAM; this is the limit that counts.
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
            return round(int(text) / _GIB, 1)
        return None
    return None


def _disk_free_gib(path: Path) -> float | None:
    try:
        return round(shutil.disk_usage(path).free / _GIB, 1)
    except OSError:
        return None


# --------------------------------------------------------------------------- versions, report


def _library_versions() -> dict[str, str]:
    versions = {}
    for name, dist in _LIBRARIES.items():
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


def _git_revision(package_dir: Path, runner: Runner = _run_command) -> str | None:
    """Return the short commit (``-dirty`` if changed) when git tracks package_dir, else None."""
    repo = str(package_dir.parent)
    try:
        # The package must be tracked here: a copy inside some other checkout's ignored venv is not.
        if not runner(["git", "-C", repo, "ls-files", "--", package_dir.name]).strip():
            return None
        commit = runner(["git", "-C", repo, "rev-parse", "--short", "HEAD"]).strip()
        dirty = bool(runner(["git", "-C", repo, "status", "--porcelain"]).strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit or None


def environment_report(
    *,
    environ: Mapping[str, str] | None = None,
    paths: Mapping[str, str | Path] | None = None,
) -> dict:
    """Collect platform, hardware, library versions and paths into a JSON-ready dict."""
    env = _env(environ)
    platform = detect_platform(env)
    work = working_dir(platform, env)
    return {
        "platform": platform,
        "kaggle_run_type": kaggle_run_type(env),
        "headless": headless_reason(env),
        "python": _platform.python_version(),
        "os": _platform.platform(),
        "cpu_count": cpu_count(env),
        **_memory_gib(),
        "ram_limit_gib": _cgroup_memory_limit_gib(),
        "working_dir": str(work),
        "disk_free_gib": _disk_free_gib(work),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpu_info(),
        "versions": _library_versions(),
        "kagglekit_nb_git": _git_revision(Path(__file__).resolve().parent),
        "paths": {name: str(path) for name, path in (paths or {}).items()},
    }


def _format_gpu(gpu: Mapping[str, Any]) -> str:
    return (
        f"{gpu.get('name')}, {gpu.get('memory_used_mib')}/{gpu.get('memory_total_mib')} MiB used, "
        f"driver {gpu.get('driver')}"
    )


def format_report(report: Mapping[str, Any]) -> str:
    """Render an environment report as aligned ``key: value`` lines, nested parts indented."""
    rows: list[tuple[str, str]] = []
    for key, value in report.items():
        if key == "gpus":
            rows.append(("gpus", "none found" if not value else str(len(value))))
            rows.extend((f"  {g.get('index', i)}", _format_gpu(g)) for i, g in enumerate(value))
        elif isinstance(value, Mapping):
            rows.append((key, "" if value else "-"))
            rows.extend((f"  {k}", _format_value(v)) for k, v in value.items())
        else:
            rows.append((key, _format_value(value)))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}: {v}".rstrip() for k, v in rows)


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)
