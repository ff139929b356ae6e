"""Test doubles shared by several test files: `from _fakes import FakeClock` (the tests folder is on
sys.path, as for `conftest`), or the `fake_clock` fixture for a clock at the default start; `FakeApi`,
a stand-in for `kaggle.KaggleApi` that kaggle_io's `api_factory` takes."""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

SECRET = "0123456789abcdef0123456789abcdef"  # the fake API key: it must never appear in any output


class FakeClock:
    """A monotonic clock that moves only when the test moves it, for code that takes `clock=`.

    `clock()` reads the time in seconds; `clock.advance(s)` moves it forward (never back, never by a
    non-finite amount). `now` is the reading, public so a dataset or hook can tick it.
    The default start, 1000.0, is far from zero so that code mixing up a reading and an elapsed time
    gives visibly wrong numbers; pass `FakeClock(0.0)` where a test reasons in elapsed seconds.
    """

    def __init__(self, now: float = 1000.0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; returns None (so it can be a forward hook, which must not return)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance({seconds!r}): a monotonic clock only moves forward by a finite amount.")
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


class FakeApi:
    """Records the calls kaggle_io makes; answers like `kaggle.KaggleApi` does."""

    COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"

    def __init__(self, user: str | None = "alice", *, files: dict[str, str] | None = None,
                 error: Exception | None = None, push_error: str = "",
                 outputs: dict[str, dict[str, str | bytes]] | None = None):
        self.config_values = {"username": user, "key": SECRET}
        self.calls: list[tuple] = []
        self.files = files or {"train.csv": "id,label\na,cat\n", "sample_submission.csv": "id,label\nb,cat\n"}
        self.error = error
        self.push_error = push_error
        self.pushed_metadata: dict | None = None
        self.outputs = outputs or {}  # kernel "owner/slug" -> its output files (relative path -> content)

    def get_config_value(self, name):
        return self.config_values.get(name)

    def kernels_push(self, folder, timeout=None, acc=None):
        self.calls.append(("kernels_push", folder))
        if self.error:
            raise self.error
        self.pushed_metadata = json.loads((Path(folder) / "kernel-metadata.json").read_text())
        return SimpleNamespace(error=self.push_error, url="https://www.kaggle.com/code/alice/x", version_number=3,
                               invalid_dataset_sources=[], invalid_competition_sources=[],
                               invalid_kernel_sources=[])

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("competition_download_files", competition, path))
        if self.error:
            raise self.error
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as z:
            for name, text in self.files.items():
                z.writestr(name, text)

    def kernels_output(self, kernel, path, file_pattern=None, force=False, quiet=True, page_token=None,
                       page_size=20):
        """Like kaggle 2.x: every page of the output files into `path`, plus the session log as <slug>.log."""
        self.calls.append(("kernels_output", kernel, path))
        if self.error:
            raise self.error
        owner_slug = "/".join(kernel.split("/")[:2])
        if owner_slug not in self.outputs:
            raise HttpError(404, f"404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/{kernel}")
        written = []
        for name, content in self.outputs[owner_slug].items():
            target = Path(path) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
            written.append(str(target))
        (Path(path) / f"{kernel.split('/')[1]}.log").write_text('[{"data": "session log"}]')
        return written, None

    def competition_submit(self, file_name, message, competition, quiet=False, sandbox=False):
        self.calls.append(("competition_submit", file_name, message, competition))
        if self.error:
            raise self.error
        return SimpleNamespace(message="Successfully submitted to the competition", ref=1)


class HttpError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.response = SimpleNamespace(status_code=status)
