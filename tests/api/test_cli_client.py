"""The REST client commands (``bmgkd submit|upload-*|jobs|watch|download``) against the real app.

The app runs in-process behind FastAPI's ``TestClient`` (injected through ``run_client``); the
reconnect and unreachable-server paths use ``httpx.MockTransport``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.cli_client import (
    ApiError,
    _WatchView,
    build_job_body,
    format_duration,
    iter_sse,
    register,
    run_client,
)
from api.db.models import Artifact, Job, JobStatus
from api.queue import FakeQueue
from api.settings import Settings

SERVER = "http://testserver"
ARCH = "retinanet_resnet18_fpn"

Cli = Callable[..., int]


@pytest.fixture
def cli(client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli("jobs", "--json")``: run a client command as alice over the TestClient."""
    monkeypatch.delenv("BMGKD_SERVER", raising=False)
    monkeypatch.setenv("BMGKD_API_KEY", alice["Authorization"].removeprefix("Bearer "))

    def run(*argv: str) -> int:
        return run_client([argv[0], "--server", SERVER, *argv[1:]], client=client)

    return run


def _submit_train(client: TestClient, alice: dict[str, str], dataset_id: str) -> str:
    r = client.post(
        "/api/v1/jobs",
        headers=alice,
        json={
            "kind": "train",
            "dataset_id": dataset_id,
            "config": {"model": {"arch": ARCH}, "train": {"device": "cpu", "max_steps": 2}},
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _set_job(client: TestClient, job_id: str, **values: Any) -> None:
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        job = session.get(Job, job_id)
        assert job is not None
        for k, v in values.items():
            setattr(job, k, v)
        session.commit()


def _add_artifact(
    client: TestClient,
    settings: Settings,
    job_id: str,
    payload: bytes,
    *,
    sha256: str | None = None,
) -> None:
    rel = f"runs/{job_id}/model.pt"
    (settings.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / rel).write_bytes(payload)
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        session.add(
            Artifact(
                job_id=job_id,
                name="model.pt",
                path=rel,
                size_bytes=len(payload),
                sha256=sha256 or hashlib.sha256(payload).hexdigest(),
            )
        )
        session.commit()


# --- registration and input ---------------------------------------------------------------------


def test_entry_point_registers_the_commands() -> None:
    (ep,) = [e for e in entry_points(group="bmgkd.commands") if e.name == "client"]
    assert ep.value == "api.cli_client:register"
    assert ep.load() is register


def test_missing_api_key_exits_2(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BMGKD_API_KEY", raising=False)
    assert run_client(["jobs", "--server", SERVER], client=client) == 2
    err = capsys.readouterr().err
    assert "bmgkd jobs: error: no API key" in err
    assert "BMGKD_API_KEY" in err


def test_bad_api_key_is_a_4xx(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BMGKD_API_KEY", raising=False)
    code = run_client(["jobs", "--server", SERVER, "--api-key", "nope"], client=client)
    assert code == 2
    assert "bmgkd jobs: error: 401 invalid or revoked API key" in capsys.readouterr().err


def test_unreachable_server_names_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    monkeypatch.setenv("BMGKD_SERVER", "http://10.0.0.9:8123/")
    code = run_client(["watch", "abc", "--api-key", "k"], client=http)
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the bmgkd server at http://10.0.0.9:8123" in err


def test_build_job_body_merges_flags_into_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"model": {"arch": "x"}, "train": {"epochs": 3, "amp": False}}))
    parser_args = _parse(
        ["submit", "--kind", "distill", "--dataset", "d", "--teacher", "t", "--config", str(cfg),
         "--arch", ARCH, "--epochs", "5", "--batch-size", "4", "--preset", "fdd"]
    )  # fmt: skip
    body = build_job_body(parser_args)
    assert body == {
        "kind": "distill",
        "dataset_id": "d",
        "teacher_id": "t",
        "source_job_id": None,
        "name": None,
        "config": {
            "model": {"arch": ARCH},
            "train": {"epochs": 5, "amp": False, "batch_size": 4},
            "distill": {"preset": "fdd"},
        },
    }
    eval_args = _parse(
        ["submit", "--kind", "eval", "--dataset", "d", "--source-job", "j", "--image-size", "320"]
    )
    assert build_job_body(eval_args)["config"] == {"image_size": 320}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bmgkd")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_submit_rejects_flags_and_files_it_cannot_use(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("submit", "--kind", "eval", "--dataset", "d", "--arch", ARCH) == 2
    assert "--arch does not apply to eval jobs" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("submit", "--kind", "train", "--dataset", "d", "--config", str(bad)) == 2
    assert f"--config {bad}: not valid json" in capsys.readouterr().err


def test_api_error_lists_issues_capped(capsys: pytest.CaptureFixture[str]) -> None:
    issues = [
        {
            "severity": "error",
            "code": "BAD_BOX",
            "file": "a.json",
            "record": f"ann {i}",
            "message": "x",
        }
        for i in range(25)
    ]
    response = httpx.Response(
        422, json={"detail": {"field": "file", "message": "file: 25 errors", "issues": issues}}
    )
    err = ApiError.from_response(response)
    assert err.message == "file: 25 errors"
    assert err.lines[0] == "ERROR a.json:ann 0: x [BAD_BOX]"
    assert len(err.lines) == 25

    def answer(request: httpx.Request) -> httpx.Response:
        return response

    http = httpx.Client(transport=httpx.MockTransport(answer))
    assert run_client(["jobs", "--api-key", "k"], client=http) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "bmgkd jobs: error: 422 file: 25 errors"
    assert len(lines) == 1 + 20 + 1
    assert lines[-1] == "  ... and 5 more"


# --- submit / jobs ------------------------------------------------------------------------------


def test_submit_prints_the_id_and_enqueues_on_cpu(
    cli: Cli, dataset_id: str, queue: FakeQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        "submit", "--kind", "train", "--dataset", dataset_id, "--arch", ARCH,
        "--device", "cpu", "--max-steps", "2", "--image-size", "128", "--name", "smoke",
    )  # fmt: skip
    assert code == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 32
    assert queue.sent == [("train.run", job_id, "cpu")]

    assert cli("jobs") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "ID", "KIND", "STATUS", "PROGRESS", "STEP", "ATTEMPT", "CREATED",
    ]  # fmt: skip
    row = out.splitlines()[1].split()
    assert row[:6] == [job_id, "train", "queued", "0%", "0/?", "0"]

    assert cli("jobs", "--json", "--status", "queued") == 0
    page = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in page["items"]] == [job_id]
    assert page["items"][0]["config"]["data"]["image_size"] == 128
    assert cli("jobs", "--status", "failed") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # header only


def test_submit_unknown_arch_names_the_field(
    cli: Cli, dataset_id: str, queue: FakeQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("submit", "--kind", "train", "--dataset", dataset_id, "--arch", "resnet9000") == 2
    err = capsys.readouterr().err
    assert err.startswith("bmgkd submit: error: 422 config.model.arch: unknown architecture")
    assert queue.sent == []


def test_submit_unknown_dataset_is_a_4xx(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("submit", "--kind", "train", "--dataset", "nope", "--arch", ARCH) == 2
    assert "422 dataset_id: no dataset 'nope'" in capsys.readouterr().err


# --- uploads ------------------------------------------------------------------------------------


def test_upload_dataset_from_a_directory(
    cli: Cli, tiny_coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("upload-dataset", str(tiny_coco), "--name", "tiny") == 0
    captured = capsys.readouterr()
    ds_id = captured.out.strip()
    assert len(ds_id) == 32
    assert f"dataset {ds_id} 'tiny' (coco): 10 images" in captured.err
    assert "3 classes" in captured.err
    # the same content again: the existing dataset
    assert cli("upload-dataset", str(tiny_coco)) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ds_id
    assert "(already uploaded)" in captured.err


def test_upload_dataset_errors(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("upload-dataset", str(tmp_path / "missing.zip")) == 2
    assert "no such file or directory" in capsys.readouterr().err
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    assert cli("upload-dataset", str(junk)) == 2
    assert "bmgkd upload-dataset: error: 422 file:" in capsys.readouterr().err


def test_upload_teacher_unknown_arch(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "t.pt"
    weights.write_bytes(b"\0" * 16)
    assert cli("upload-teacher", str(weights), "--arch", "nope", "--classes", "a,b") == 2
    assert "422 arch: unknown architecture 'nope'" in capsys.readouterr().err


# --- watch --------------------------------------------------------------------------------------


def test_watch_succeeded_job_exits_0(
    cli: Cli, client: TestClient, alice: dict[str, str], dataset_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    job_id = _submit_train(client, alice, dataset_id)
    _set_job(
        client, job_id, status=JobStatus.succeeded, progress=1.0, step=2, total_steps=2,
        finished_at=datetime.now(UTC), result={"bbox": {"AP": 1.5}},
    )  # fmt: skip
    assert cli("watch", job_id) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"job {job_id} succeeded"
    assert "100.0%" in captured.err
    assert "step 2/2" in captured.err


def test_watch_failed_job_exits_1_with_the_code(
    cli: Cli, client: TestClient, alice: dict[str, str], dataset_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    job_id = _submit_train(client, alice, dataset_id)
    _set_job(
        client, job_id, status=JobStatus.failed, failure_code="NAN_LOSS",
        failure_message="loss is nan at step 7", finished_at=datetime.now(UTC),
    )  # fmt: skip
    assert cli("watch", job_id) == 1
    err = capsys.readouterr().err
    assert f"job {job_id} failed: NAN_LOSS: loss is nan at step 7" in err


def test_watch_unknown_job_is_a_4xx(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("watch", "f" * 32) == 2
    assert f"404 no job with id '{'f' * 32}'" in capsys.readouterr().err


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def test_watch_reconnects_with_last_event_id(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str | None] = []
    running = {"status": "running", "progress": 0.5, "step": 5, "total_steps": 10, "eta_s": 65}
    bodies = [
        "retry: 0\n\n"
        + _sse("status", {"id": "j", **running}, 3)
        + _sse("progress", running, 3)
        + _sse("metrics", {"job_id": "j", "series": {"loss": {"steps": [5], "values": [0.25]}}}, 7),
        # the stream breaks without `end`; the client comes back with Last-Event-ID: 7
        "retry: 0\n\n"
        + _sse("status", {"id": "j", "status": "cancelled", "failure_code": "CANCELLED"}, 7)
        + _sse("end", {"status": "cancelled"}, 7),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/jobs/j/events"
        assert request.headers["Authorization"] == "Bearer k"
        seen.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(
            200, text=bodies[len(seen) - 1], headers={"Content-Type": "text/event-stream"}
        )

    http = httpx.Client(transport=httpx.MockTransport(answer))
    assert run_client(["watch", "j", "--api-key", "k", "--server", SERVER], client=http) == 1
    assert seen == [None, "7"]
    err = capsys.readouterr().err
    assert "50.0%  running  step 5/10  ETA 1m05s" in err
    assert "reconnecting" in err
    assert "job j cancelled: CANCELLED" in err


def test_watch_gives_up_after_a_few_reconnects(capsys: pytest.CaptureFixture[str]) -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, text="retry: 0\n\n: keep-alive\n\n")

    http = httpx.Client(transport=httpx.MockTransport(answer))
    assert run_client(["watch", "j", "--api-key", "k"], client=http) == 1
    assert calls == 6  # the first connection and 5 reconnects
    assert "lost the event stream of job j" in capsys.readouterr().err


def test_sse_parser_and_progress_line() -> None:
    lines = [
        "retry: 2000",
        "",
        ": comment",
        "id: 4",
        "event: x",
        "data: a",
        "data: b",
        "",
        "data: c",
        "",
    ]
    events = list(iter_sse(lines))
    assert [(e.event, e.data, e.id) for e in events] == [("x", "a\nb", "4"), ("message", "c", "4")]
    view = _WatchView("j", tty=True, status="running", progress=0.25, step=1, total_steps=4)
    view.eta_s, view.loss = 3700.0, 1.23456
    assert view.line() == "[#####---------------]   25.0%  running  step 1/4  ETA 1h01m  loss 1.235"
    assert format_duration(42) == "42s"
    assert format_duration(185) == "3m05s"


# --- download -----------------------------------------------------------------------------------


def test_download_verifies_the_checksum(
    cli: Cli, client: TestClient, alice: dict[str, str], dataset_id: str, settings: Settings,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    job_id = _submit_train(client, alice, dataset_id)
    payload = b"weights" * 1000
    _add_artifact(client, settings, job_id, payload)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    assert cli("download", job_id) == 0
    target = out_dir / f"{job_id}-model.pt"
    assert capsys.readouterr().out.strip() == target.name
    assert target.read_bytes() == payload
    assert sorted(p.name for p in out_dir.iterdir()) == [target.name]  # no temp files left

    assert cli("download", job_id, "--out", str(tmp_path / "m.pt")) == 0
    assert (tmp_path / "m.pt").read_bytes() == payload


def test_download_rejects_a_tampered_checksum(
    cli: Cli, client: TestClient, alice: dict[str, str], dataset_id: str, settings: Settings,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    job_id = _submit_train(client, alice, dataset_id)
    _add_artifact(client, settings, job_id, b"weights", sha256="0" * 64)
    out = tmp_path / "dl"
    out.mkdir()
    assert cli("download", job_id, "--out", str(out)) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_download_missing_artifact_exits_2(
    cli: Cli, client: TestClient, alice: dict[str, str], dataset_id: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    job_id = _submit_train(client, alice, dataset_id)
    out = tmp_path / "dl"
    out.mkdir()
    assert cli("download", job_id, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"bmgkd download: error: 404 job {job_id} has no artifact 'model.pt'" in err
    assert list(out.iterdir()) == []
