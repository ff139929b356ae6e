"""Tests for kagglekit_nb.kaggle_io and its commands: kernel metadata as the kaggle package requires
it, push / download / submit / restore against a fake API object (`_fakes.FakeApi`), Kaggle Secrets
and missing credentials.

No test talks to Kaggle: the API object comes from the injectable factory (a fake here), or, where
the kaggle package's own checks are the point, a real `KaggleApi` whose HTTP client is replaced.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from _fakes import SECRET, FakeApi, HttpError

from kagglekit_nb import env, kaggle_io
from kagglekit_nb.cli import main
from kagglekit_nb.kaggle_io import (
    KaggleCredentialsError,
    KaggleError,
    SubmissionRefused,
    check_kernel_metadata,
    kernel_metadata,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "image_classification.ipynb"


def factory(api):
    return lambda: api


# --------------------------------------------------------------------------- kernel metadata


@pytest.mark.parametrize(("gpu", "enabled", "shape"), [("t4x2", True, "NvidiaTeslaT4"),
                                                       ("p100", True, "NvidiaTeslaP100"),
                                                       ("none", False, None)])
def test_kernel_metadata_has_every_setting_explicit(gpu, enabled, shape):
    meta = kernel_metadata(user="alice", title="Digit Recognizer: ResNet18 baseline", code_file="nb.ipynb",
                           competition="digit-recognizer", datasets=["alice/kagglekit-nb-wheels"],
                           kernels=["alice/earlier-run"], gpu=gpu, internet=False)
    assert meta["id"] == "alice/digit-recognizer-resnet18-baseline"
    assert meta["title"] == "Digit Recognizer: ResNet18 baseline"
    assert (meta["code_file"], meta["kernel_type"], meta["language"]) == ("nb.ipynb", "notebook", "python")
    assert meta["is_private"] is True
    assert meta["enable_internet"] is False
    assert meta["enable_gpu"] is enabled
    assert meta.get("machine_shape") == shape
    assert meta["competition_sources"] == ["digit-recognizer"]
    assert meta["dataset_sources"] == ["alice/kagglekit-nb-wheels"]
    assert meta["kernel_sources"] == ["alice/earlier-run"]
    assert check_kernel_metadata(meta) == []
    assert kernel_metadata(user="a", title="A long title", code_file="n.ipynb", competition="c",
                           public=True, internet=True)["is_private"] is False


def test_machine_shapes_are_the_ones_kagglesdk_documents():
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest

    documented = inspect.getsource(ApiSaveKernelRequest)
    for shape in filter(None, kaggle_io.ACCELERATORS.values()):
        assert f"* {shape}" in documented


def test_the_slug_is_the_one_kaggle_derives_from_the_title():
    from slugify import slugify  # what kaggle's kernels_push compares the id with

    for title in ("Digit Recognizer — ResNet18 (5 folds)", "ÄÖÜ straße test", "a  b__c--d"):
        assert kaggle_io.kernel_slug(title) == slugify(title)


@pytest.mark.parametrize(("change", "needle"), [
    ({"title": "Abc"}, "at least 5 characters"),
    ({"id": "alice/something-else"}, "is not the slug of the title"),
    ({"id": "alice/digit-recognizer-baseline/3"}, "USER/SLUG"),
    ({"language": "julia"}, "language"),
    ({"kernel_type": "app"}, "kernel_type"),
    ({"machine_shape": "NvidiaTeslaA100"}, "machine_shape"),
    ({"enable_gpu": False}, "disagree"),
    ({"enable_internet": "false"}, "true or false"),
    ({"kernel_sources": ["alice/abc"]}, "at least 5 characters"),
    ({"dataset_sources": ["wheels"]}, "OWNER/NAME"),
])
def test_check_kernel_metadata_names_what_kaggle_would_refuse(change, needle):
    meta = kernel_metadata(user="alice", title="Digit Recognizer Baseline", code_file="nb.ipynb",
                           competition="digit-recognizer")
    meta.update(change)
    problems = check_kernel_metadata(meta)
    assert any(needle in p for p in problems), problems


def test_check_kernel_metadata_reports_missing_fields_and_code_file(tmp_path):
    meta = kernel_metadata(user="alice", title="Digit Recognizer Baseline", code_file="nb.ipynb",
                           competition="digit-recognizer")
    del meta["enable_internet"]
    problems = check_kernel_metadata(meta, tmp_path)
    assert "enable_internet is missing" in problems
    assert any("code_file 'nb.ipynb' is not in" in p for p in problems)


# --------------------------------------------------------------------------- push


def test_push_dry_run_stages_the_notebook_and_metadata_and_pushes_nothing(tmp_path):
    api = FakeApi()
    out = tmp_path / "stage"
    lines: list[str] = []
    result = kaggle_io.push("classification", competition="digit-recognizer", datasets=["alice/kagglekit-nb-wheels"],
                            gpu="p100", internet=False, out=out, dry_run=True, api_factory=factory(api),
                            log=lines.append)
    assert api.calls == []
    assert result.pushed is False and result.folder == out
    assert (out / NOTEBOOK.name).read_bytes() == NOTEBOOK.read_bytes()
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta == result.metadata
    assert meta["id"] == "alice/digit-recognizer-image-classification"
    assert meta["machine_shape"] == "NvidiaTeslaP100" and meta["enable_internet"] is False
    assert check_kernel_metadata(meta, out) == []
    assert any("dry run" in line for line in lines)
    assert SECRET not in (out / "kernel-metadata.json").read_text()


def test_push_sends_the_staging_folder(tmp_path):
    api = FakeApi()
    result = kaggle_io.push(NOTEBOOK, competition="digit-recognizer", title="My digits notebook",
                            out=tmp_path / "s", api_factory=factory(api), log=lambda m: None)
    assert api.calls == [("kernels_push", str(tmp_path / "s"))]
    assert api.pushed_metadata["id"] == "alice/my-digits-notebook"
    assert api.pushed_metadata["enable_internet"] is True and api.pushed_metadata["enable_gpu"] is True
    assert (result.pushed, result.version, result.url) == (True, 3, "https://www.kaggle.com/code/alice/x")


def test_push_through_the_kaggle_package_builds_the_request_kaggle_sends(tmp_path, monkeypatch, capsys):
    """The real KaggleApi.kernels_push reads and checks the staged folder; only its HTTP client is fake."""
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    from kaggle.api.kaggle_api_extended import KaggleApi

    sent = []

    class Client:
        def __enter__(self):
            save = lambda request: sent.append(request) or SimpleNamespace(
                error="", url="u", version_number=1, invalid_dataset_sources=[], invalid_competition_sources=[],
                invalid_kernel_sources=[])
            return SimpleNamespace(kernels=SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=save)))

        def __exit__(self, *exc):
            return False

    api = KaggleApi()
    api.config_values = {"username": "alice"}
    api.build_kaggle_client = Client
    kaggle_io.push("classification", competition="digit-recognizer", datasets=["alice/kagglekit-nb-wheels"],
                   kernels=["alice/digits-run-one"], gpu="t4x2", internet=False, out=tmp_path / "s",
                   api_factory=factory(api), log=lambda m: None)
    (request,) = sent
    assert request.slug == "alice/digit-recognizer-image-classification"
    assert request.new_title == "digit-recognizer image classification"
    assert (request.language, request.kernel_type) == ("python", "notebook")
    assert request.machine_shape == "NvidiaTeslaT4"
    assert request.enable_gpu is True and request.enable_internet is False and request.is_private is True
    assert list(request.competition_data_sources) == ["digit-recognizer"]
    assert list(request.dataset_data_sources) == ["alice/kagglekit-nb-wheels"]
    assert list(request.kernel_data_sources) == ["alice/digits-run-one"]
    assert json.loads(request.text)["metadata"]["kernelspec"]["name"] == "python3"
    assert "does not resolve to the specified id" not in capsys.readouterr().out


def test_push_refuses_a_notebook_without_kernelspec(tmp_path):
    nb = json.loads(NOTEBOOK.read_text())
    del nb["metadata"]["kernelspec"]
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps(nb))
    api = FakeApi()
    with pytest.raises(ValueError, match="no metadata.kernelspec"):
        kaggle_io.push(bad, competition="digit-recognizer", out=tmp_path / "s", api_factory=factory(api))
    assert api.calls == [] and not (tmp_path / "s").exists()


def test_push_refuses_a_short_title_before_writing(tmp_path):
    with pytest.raises(ValueError, match="at least 5 characters"):
        kaggle_io.push(NOTEBOOK, competition="digit-recognizer", title="Abc", out=tmp_path / "s",
                       api_factory=factory(FakeApi()))
    assert not (tmp_path / "s").exists()


def test_push_errors_become_messages_without_the_key(tmp_path):
    api = FakeApi(error=HttpError(403, f"403 Forbidden for url https://x?key={SECRET}"))
    with pytest.raises(KaggleError) as e:
        kaggle_io.push(NOTEBOOK, competition="digit-recognizer", out=tmp_path / "s", api_factory=factory(api),
                       log=lambda m: None)
    assert "accept the rules" in str(e.value) and SECRET not in str(e.value) and "***" in str(e.value)
    with pytest.raises(KaggleError, match="Kaggle refused the notebook: Notebook title taken"):
        kaggle_io.push(NOTEBOOK, competition="digit-recognizer", out=tmp_path / "s",
                       api_factory=factory(FakeApi(push_error="Notebook title taken")), log=lambda m: None)


def test_push_warns_when_internet_is_off_and_no_wheels_dataset_is_attached(tmp_path):
    result = kaggle_io.push(NOTEBOOK, competition="digit-recognizer", internet=False, out=tmp_path / "s",
                            dry_run=True, api_factory=factory(FakeApi()), log=lambda m: None)
    assert any("kagglekit bundle" in w for w in result.warnings)


def test_push_without_a_user_name_is_a_credentials_error(tmp_path):
    with pytest.raises(KaggleCredentialsError, match="KAGGLE_USERNAME"):
        kaggle_io.push(NOTEBOOK, competition="digit-recognizer", out=tmp_path / "s",
                       api_factory=factory(FakeApi(user=None)))


# --------------------------------------------------------------------------- download


def test_download_unzips_into_the_folder_the_notebooks_search(tmp_path, monkeypatch):
    monkeypatch.setenv(env.INPUT_VAR, str(tmp_path / "input"))
    api = FakeApi()
    folder = kaggle_io.download("digit-recognizer", api_factory=factory(api), log=lambda m: None)
    assert folder == tmp_path / "input" / "digit-recognizer"
    assert api.calls == [("competition_download_files", "digit-recognizer", str(folder))]
    assert (folder / "train.csv").read_text() == "id,label\na,cat\n"
    assert not list(folder.glob("*.zip"))
    # a notebook with DATA_DIR=None looks there
    environ = {env.INPUT_VAR: str(tmp_path / "input")}
    assert env.find_competition_dir(["train.csv", "sample_submission.csv"], environ=environ) == folder


def test_download_saves_the_evaluation_metric_the_notebook_reads(tmp_path):
    from kagglekit_nb.metrics import from_kaggle

    class ListingApi(FakeApi):
        def competitions_list(self, search=None):
            return [SimpleNamespace(ref="https://www.kaggle.com/competitions/aptos2019-blindness-detection-x",
                                    evaluation_metric="Categorization Accuracy"),
                    SimpleNamespace(ref="https://www.kaggle.com/competitions/aptos2019-blindness-detection",
                                    evaluation_metric="Quadratic Weighted Kappa")]

    folder = kaggle_io.download("aptos2019-blindness-detection", tmp_path / "d", api_factory=factory(ListingApi()),
                                log=lambda m: None)
    info = json.loads((folder / kaggle_io.INFO_FILE).read_text())
    assert info == {"competition": "aptos2019-blindness-detection", "evaluation_metric": "Quadratic Weighted Kappa"}
    assert from_kaggle(info["evaluation_metric"]) == "qwk"
    # an API without the listing downloads all the same, without the file
    other = kaggle_io.download("digit-recognizer", tmp_path / "e", api_factory=factory(FakeApi()), log=lambda m: None)
    assert (other / "train.csv").is_file() and not (other / kaggle_io.INFO_FILE).exists()


def test_download_leaves_an_earlier_download_alone_unless_forced(tmp_path):
    out = tmp_path / "comp"
    out.mkdir()
    (out / "train.csv").write_text("mine")
    api = FakeApi()
    assert kaggle_io.download("digit-recognizer", out, api_factory=factory(api), log=lambda m: None) == out
    assert api.calls == [] and (out / "train.csv").read_text() == "mine"
    kaggle_io.download("digit-recognizer", out, force=True, api_factory=factory(api), log=lambda m: None)
    assert len(api.calls) == 1 and (out / "train.csv").read_text() == "id,label\na,cat\n"


def test_download_points_at_the_single_folder_inside_the_archive(tmp_path):
    api = FakeApi(files={"comp/train.csv": "id\n", "comp/sample_submission.csv": "id\n"})
    assert kaggle_io.download("comp-x", tmp_path / "d", api_factory=factory(api), log=lambda m: None) \
        == tmp_path / "d" / "comp"


def test_download_403_says_to_accept_the_rules(tmp_path):
    api = FakeApi(error=HttpError(403, "403 Client Error: Forbidden"))
    with pytest.raises(KaggleError, match=r"accept the competition's rules first: .*/competitions/titanic/rules"):
        kaggle_io.download("titanic", tmp_path / "t", api_factory=factory(api))


def test_download_rejects_a_bad_competition_name(tmp_path):
    api = FakeApi()
    with pytest.raises(ValueError, match="name in the competition's URL"):
        kaggle_io.download("https://www.kaggle.com/competitions/titanic", tmp_path / "t", api_factory=factory(api))
    assert api.calls == []


# --------------------------------------------------------------------------- submit


@pytest.fixture
def submission_dir(tmp_path):
    (tmp_path / "sample_submission.csv").write_text("id,label\na,cat\nb,cat\nc,cat\n")
    (tmp_path / "good.csv").write_text("id,label\na,cat\nb,dog\nc,cat\n")
    (tmp_path / "bad.csv").write_text("id,label\na,cat\nb,dog\n")
    return tmp_path


def test_submit_verifies_then_submits(submission_dir):
    api = FakeApi()
    lines: list[str] = []
    kaggle_io.submit(submission_dir / "good.csv", competition="digit-recognizer", message="resnet18 5 folds",
                     api_factory=factory(api), log=lines.append)
    assert api.calls == [("competition_submit", str(submission_dir / "good.csv"), "resnet18 5 folds",
                          "digit-recognizer")]
    assert any("valid" in line for line in lines)


def test_submit_refuses_an_invalid_file_with_reasons(submission_dir):
    api = FakeApi()
    with pytest.raises(SubmissionRefused) as e:
        kaggle_io.submit(submission_dir / "bad.csv", competition="digit-recognizer", message="m",
                         api_factory=factory(api))
    assert "INVALID" in str(e.value) and "ids missing from the submission (e.g. c)" in str(e.value)
    assert api.calls == []


def test_submit_without_a_sample_warns_and_submits(tmp_path):
    (tmp_path / "sub.csv").write_text("id,label\na,cat\n")
    api = FakeApi()
    lines: list[str] = []
    kaggle_io.submit(tmp_path / "sub.csv", competition="comp-without-download", message="m",
                     api_factory=factory(api), log=lines.append)
    assert len(api.calls) == 1 and any("not verified" in line for line in lines)


def test_submit_finds_the_sample_of_a_downloaded_competition(tmp_path, monkeypatch):
    monkeypatch.setenv(env.INPUT_VAR, str(tmp_path / "input"))
    comp = tmp_path / "input" / "comp"
    comp.mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("id,label\na,cat\nb,cat\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "submission.csv").write_text("id,label\na,cat\n")
    with pytest.raises(SubmissionRefused):
        kaggle_io.submit(tmp_path / "run" / "submission.csv", competition="comp", message="m",
                         api_factory=factory(FakeApi()))


def test_submit_upload_failure_is_an_error(submission_dir):
    api = FakeApi()
    api.competition_submit = lambda *a, **k: SimpleNamespace(message=FakeApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE)
    with pytest.raises(KaggleError, match="upload did not complete"):
        kaggle_io.submit(submission_dir / "good.csv", competition="c", message="m", api_factory=factory(api),
                         log=lambda m: None)


def test_submit_checks_its_arguments(submission_dir):
    api = FakeApi()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kaggle_io.submit(submission_dir / "nope.csv", competition="c", message="m", api_factory=factory(api))
    with pytest.raises(ValueError, match="--message"):
        kaggle_io.submit(submission_dir / "good.csv", competition="c", message=" ", api_factory=factory(api))
    assert api.calls == []


# --------------------------------------------------------------------------- restore

KERNEL = "alice/digits-resnet"
CKPT = "checkpoints/fold0/step-000000010.ckpt"


def saved_run(prefix: str = "digits/", sessions: int = 2) -> dict[str, str | bytes]:
    """A notebook's output as OUTPUT_DIR = None leaves it: /kaggle/working/<RUN_NAME>/..., plus other files."""
    return {f"{prefix}run.json": json.dumps({"run_name": "digits", "sessions": sessions}),
            f"{prefix}{CKPT}": b"state",
            f"{prefix}folds.csv": "id,fold\na,0\n",
            f"{prefix}run.lock": json.dumps({"host": "kaggle-session", "pid": 7}),  # that session's lock
            "kagglekit_demo/train.csv": "id,label\n"}


def test_restore_output_moves_the_saved_run_into_an_empty_folder(tmp_path):
    api = FakeApi(outputs={KERNEL: saved_run()})
    out = tmp_path / "working" / "digits"
    lines: list[str] = []
    assert kaggle_io.restore_output(KERNEL, out, run_name="digits", api_factory=factory(api),
                                    log=lines.append) == out
    assert [c[:2] for c in api.calls] == [("kernels_output", KERNEL)]
    assert json.loads((out / "run.json").read_text())["sessions"] == 2
    assert (out / CKPT).read_bytes() == b"state" and (out / "folds.csv").read_text() == "id,fold\na,0\n"
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid()  # our lock, not the saved session's
    assert not (out / "kagglekit_demo").exists()             # only the run folder is taken
    assert not list(out.glob(".restore-*")) and sorted(p.name for p in out.parent.iterdir()) == ["digits"]
    assert any(f"restored the run saved by {KERNEL} (digits/: " in line and "2 session(s) so far" in line
               for line in lines), lines


def test_restore_output_takes_a_run_saved_at_the_output_root(tmp_path):
    """OUTPUT_DIR = "/kaggle/working": the run is the whole output; the session log is not part of it."""
    files = {k.removeprefix("digits/"): v for k, v in saved_run().items()}
    api = FakeApi(outputs={KERNEL: files})
    out = kaggle_io.restore_output(f"{KERNEL}/4", tmp_path / "run", api_factory=factory(api), log=lambda m: None)
    assert api.calls[0][1] == f"{KERNEL}/4"                      # a pinned version is passed on
    assert (out / CKPT).read_bytes() == b"state" and (out / "kagglekit_demo" / "train.csv").exists()
    assert not (out / "digits-resnet.log").exists()


def test_restore_output_without_a_run_name_takes_the_only_run_folder(tmp_path):
    api = FakeApi(outputs={KERNEL: saved_run("classification/")})
    out = kaggle_io.restore_output(KERNEL, tmp_path / "x", api_factory=factory(api), log=lambda m: None)
    assert (out / CKPT).read_bytes() == b"state"


def test_restore_output_never_touches_a_folder_that_holds_a_run(tmp_path):
    out = tmp_path / "digits"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text('{"sessions": 5}')
    (out / "checkpoints" / "mine.ckpt").write_bytes(b"mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    api = FakeApi(outputs={KERNEL: saved_run()})
    with pytest.raises(FileExistsError) as e:
        kaggle_io.restore_output(KERNEL, out, run_name="digits", api_factory=factory(api), log=lambda m: None)
    assert "already holds a run (run.json): nothing was restored" in str(e.value)
    assert "another OUTPUT_DIR" in str(e.value)
    assert api.calls == []                                       # nothing downloaded
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_restore_cut_short_is_done_again_keeping_what_is_there(tmp_path):
    """A killed restore leaves files but no run.json (the last file moved) and its staging folder."""
    out = tmp_path / "digits"
    (out / "checkpoints" / "fold0").mkdir(parents=True)
    (out / CKPT).write_bytes(b"moved before the kill")
    (out / ".restore-old" / "digits").mkdir(parents=True)
    api = FakeApi(outputs={KERNEL: saved_run()})
    lines: list[str] = []
    kaggle_io.restore_output(KERNEL, out, run_name="digits", api_factory=factory(api), log=lines.append)
    assert (out / "run.json").is_file() and (out / "folds.csv").is_file()
    assert (out / CKPT).read_bytes() == b"moved before the kill"  # kept, never replaced
    assert not list(out.glob(".restore-*"))
    assert any(f"kept 1 file(s) already there (e.g. {CKPT})" in line for line in lines), lines


def test_restore_output_of_a_notebook_without_output_is_a_clear_error(tmp_path):
    api = FakeApi(outputs={"alice/fresh-notebook": {}})
    with pytest.raises(KaggleError, match=r"alice/fresh-notebook has no output yet: .*Save & Run All.*"
                                          r"OWNER/SLUG/VERSION"):
        kaggle_io.restore_output("alice/fresh-notebook", tmp_path / "d", api_factory=factory(api))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["run.lock"]  # no run, no staging left


def test_restore_output_of_an_unknown_notebook_says_to_use_the_url(tmp_path):
    with pytest.raises(KaggleError, match=r"no notebook 'alice/no-such-notebook' that these credentials may read: "
                                          r"use OWNER/SLUG from its URL, kaggle.com/code/OWNER/SLUG"):
        kaggle_io.restore_output("alice/no-such-notebook", tmp_path / "d", api_factory=factory(FakeApi()))
    with pytest.raises(ValueError, match=r"kernel='digits' must be OWNER/NAME or OWNER/NAME/VERSION"):
        kaggle_io.restore_output("digits", tmp_path / "d", api_factory=factory(FakeApi()))


def test_restore_output_without_a_run_folder_names_what_the_output_holds(tmp_path):
    api = FakeApi(outputs={KERNEL: {"submission.csv": "id,label\n"}, "alice/two-runs": {
        **saved_run("first/"), **saved_run("second/")}})
    with pytest.raises(KaggleError, match=r"the output of alice/digits-resnet holds no run folder: no run.json at "
                                          r"its root or in digits/ \(1 files, e.g. submission.csv\)"):
        kaggle_io.restore_output(KERNEL, tmp_path / "a", run_name="digits", api_factory=factory(api))
    with pytest.raises(KaggleError, match=r"It holds runs in first/, second/: set RUN_NAME"):
        kaggle_io.restore_output("alice/two-runs", tmp_path / "b", run_name="digits", api_factory=factory(api))
    assert not (tmp_path / "b" / "run.json").exists()


def test_restore_output_network_errors_say_to_turn_internet_on(tmp_path):
    class ConnectionError(OSError):  # the name requests gives it
        pass

    api = FakeApi(error=ConnectionError(f"Max retries exceeded with url: /api?key={SECRET}"))
    with pytest.raises(KaggleError) as e:
        kaggle_io.restore_output(KERNEL, tmp_path / "d", api_factory=factory(api))
    assert "turn Internet on (Settings > Internet)" in str(e.value) and SECRET not in str(e.value)


class FakeSecrets:
    """A stand-in for Kaggle's `kaggle_secrets` module: `UserSecretsClient().get_secret(label)`."""

    def __init__(self, secrets: dict[str, str]):
        store = secrets

        class UserSecretsClient:
            def get_secret(self, label):
                if label not in store:
                    raise RuntimeError(f"No secret named {label} attached to this notebook")
                return store[label]

        self.UserSecretsClient = UserSecretsClient


def test_kaggle_secrets_reach_the_environment_unprinted(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kaggle_secrets", FakeSecrets({"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": SECRET}))
    environ: dict[str, str] = {}
    assert kaggle_io.use_kaggle_secrets(environ) == ["KAGGLE_USERNAME", "KAGGLE_KEY"]
    assert environ == {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": SECRET}
    # set ones are kept; a missing secret is skipped; nothing is read once both are there
    environ = {"KAGGLE_USERNAME": "bob"}
    assert kaggle_io.use_kaggle_secrets(environ) == ["KAGGLE_KEY"] and environ["KAGGLE_USERNAME"] == "bob"
    assert kaggle_io.use_kaggle_secrets(environ) == []
    monkeypatch.setitem(sys.modules, "kaggle_secrets", FakeSecrets({}))
    environ = {}
    assert kaggle_io.use_kaggle_secrets(environ) == [] and environ == {}
    out, err = capsys.readouterr()
    assert SECRET not in out + err


# --------------------------------------------------------------------------- the commands


def run_main(capsys, *args, api=None):
    try:
        code = main(list(args), kaggle_api_factory=factory(api) if api else None)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_push_dry_run_prints_the_metadata(capsys, tmp_path):
    code, out, err = run_main(capsys, "push", "classification", "--competition", "digit-recognizer",
                              "--dataset", "alice/kagglekit-nb-wheels", "--gpu", "none", "--internet", "off",
                              "--public", "--title", "Digits baseline", "--out", str(tmp_path / "s"), "--dry-run",
                              api=FakeApi())
    assert code == 0, err
    printed = json.loads(out[out.index("{"):])
    assert printed == json.loads((tmp_path / "s" / "kernel-metadata.json").read_text())
    assert printed["is_private"] is False and printed["enable_gpu"] is False and "machine_shape" not in printed


def test_cli_submit_exit_codes(capsys, submission_dir):
    api = FakeApi()
    code, _, err = run_main(capsys, "submit", str(submission_dir / "bad.csv"), "--competition", "c", "-m", "x",
                            api=api)
    assert code == 1 and "not submitted" in err and api.calls == []
    code, out, _ = run_main(capsys, "submit", str(submission_dir / "good.csv"), "--competition", "c", "-m", "x",
                            api=api)
    assert code == 0 and "submitted" in out and len(api.calls) == 1
    code, _, err = run_main(capsys, "submit", str(submission_dir / "good.csv"), "--competition", "c", api=api)
    assert code == 2 and "-m/--message" in err


def test_cli_download_prints_the_data_argument(capsys, tmp_path):
    code, out, _ = run_main(capsys, "download", "digit-recognizer", "--out", str(tmp_path / "d"), api=FakeApi())
    assert code == 0
    assert f"--data {tmp_path / 'd'}" in out


def test_cli_kaggle_errors_exit_1(capsys, tmp_path):
    code, _, err = run_main(capsys, "download", "titanic", "--out", str(tmp_path / "t"),
                            api=FakeApi(error=HttpError(404, "404 Not Found")))
    assert code == 1 and "no competition named 'titanic'" in err


def _bare_env(home: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE", "XDG_CONFIG"))}
    environ.update({"HOME": str(home), "PYTHONPATH": str(ROOT), **extra})
    return environ


def test_missing_credentials_give_a_clear_message_not_an_exit(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-m", "kagglekit_nb", "download", "titanic", "--out", str(tmp_path / "t")],
                          env=_bare_env(home), capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 1, proc.stderr
    assert "no Kaggle credentials found" in proc.stderr
    assert "kaggle.json" in proc.stderr and "KAGGLE_USERNAME and KAGGLE_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "kaggle auth login" not in proc.stdout + proc.stderr  # the kaggle package's own help is not shown
    assert not (tmp_path / "t").exists()


def test_connect_reads_the_user_from_the_environment_and_never_prints_the_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = "from kagglekit_nb import kaggle_io; print('user:', kaggle_io.username(kaggle_io.connect()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          env=_bare_env(home, KAGGLE_USERNAME="alice", KAGGLE_KEY=SECRET))
    assert proc.returncode == 0, proc.stderr
    assert "user: alice" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_cli_restore_exit_codes(capsys, tmp_path):
    api = FakeApi(outputs={KERNEL: saved_run()})
    code, out, err = run_main(capsys, "restore", KERNEL, "--out", str(tmp_path / "digits"), "--run-name", "digits",
                              api=api)
    assert code == 0, err
    assert f"continue it with: kagglekit run NOTEBOOK --out {tmp_path / 'digits'}" in out
    code, _, err = run_main(capsys, "restore", KERNEL, "--out", str(tmp_path / "digits"), api=api)
    assert code == 1 and "already holds a run" in err and len(api.calls) == 1
    code, _, err = run_main(capsys, "restore", "digits-resnet", "--out", str(tmp_path / "x"), api=api)
    assert code == 2 and "OWNER/NAME" in err


def _fake_secrets_module(folder: Path, secrets: dict[str, str]) -> Path:
    folder.mkdir()
    (folder / "kaggle_secrets.py").write_text(
        f"SECRETS = {secrets!r}\n"
        "class UserSecretsClient:\n"
        "    def get_secret(self, label):\n"
        "        if label not in SECRETS:\n"
        "            raise RuntimeError('no such secret: ' + label)\n"
        "        return SECRETS[label]\n")
    return folder


def test_restore_without_credentials_says_how_to_add_kaggle_secrets(tmp_path):
    """A Kaggle notebook whose secrets hold the key but no user name: no credentials, and the key unprinted."""
    home = tmp_path / "home"
    home.mkdir()
    fake = _fake_secrets_module(tmp_path / "kaggle_site", {"KAGGLE_KEY": SECRET})
    proc = subprocess.run([sys.executable, "-m", "kagglekit_nb", "restore", KERNEL, "--out", str(tmp_path / "d")],
                          env=_bare_env(home, PYTHONPATH=f"{ROOT}{os.pathsep}{fake}"), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "kagglekit restore: no Kaggle credentials found" in proc.stderr
    assert "Kaggle Secrets: Add-ons > Secrets > Add Secret" in proc.stderr and "KAGGLE_USERNAME" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not (tmp_path / "d").exists()                       # nothing created


def test_connect_signs_in_with_the_notebooks_kaggle_secrets(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fake = _fake_secrets_module(tmp_path / "kaggle_site", {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": SECRET})
    code = "from kagglekit_nb import kaggle_io; print('user:', kaggle_io.username(kaggle_io.connect()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          env=_bare_env(home, PYTHONPATH=f"{ROOT}{os.pathsep}{fake}"))
    assert proc.returncode == 0, proc.stderr
    assert "user: alice" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
