"""Real services: PostgreSQL (127.0.0.1:5432, db ``test``), Redis (127.0.0.1:6379), a uvicorn API,
Celery worker processes and the sweeper, as separate processes.

Each test session works in its own PostgreSQL schema and its own Redis queue names, so parallel
runs on one machine do not see each other. Override the servers with ``BMGKD_TEST_PG_URL`` and
``BMGKD_TEST_REDIS_URL``. The services are required: when they are unreachable the tests fail
(they do not skip).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("BMGKD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BMGKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARED_RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zip_dataset(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
    return buf.getvalue()


@dataclass
class Stack:
    """The running service: env for child processes, the API URL, a key, and the processes."""

    env: dict[str, str]
    url: str
    data_dir: Path
    logs: Path
    headers: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        q = f"{self.env['BMGKD_GPU_QUEUE']},{self.env['BMGKD_CPU_QUEUE']}"
        proc = self.spawn(
            "worker",
            [
                str(BIN / "celery"),
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                q,
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--hostname",
                f"it-{uuid.uuid4().hex[:6]}@%h",
            ],
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children (its whole process group)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while True:
                job: dict[str, Any] = c.get(f"/api/v1/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"job {job_id} still {job['status']} after {timeout_s}s: {job}"
                    )
                time.sleep(0.25)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {timeout_s}s")


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    schema = f"it_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def stack(pg_schema_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    data_dir = tmp_path_factory.mktemp("service-data")
    env = {
        **os.environ,
        "BMGKD_DATABASE_URL": pg_schema_url,
        "BMGKD_BROKER_URL": REDIS_URL,
        "BMGKD_DATA_DIR": str(data_dir),
        "BMGKD_GPU_QUEUE": f"it-{tag}-gpu",
        "BMGKD_CPU_QUEUE": f"it-{tag}-cpu",
        "BMGKD_HEARTBEAT_INTERVAL_S": "0.5",
        "BMGKD_HEARTBEAT_STALE_S": "4",
        "BMGKD_SWEEP_INTERVAL_S": "1",
        "BMGKD_PROGRESS_INTERVAL_S": "0.5",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    stack = Stack(
        env=env,
        url=f"http://127.0.0.1:{port}",
        data_dir=data_dir,
        logs=tmp_path_factory.mktemp("service-logs"),
    )
    try:
        key = subprocess.run(
            [str(BIN / "bmgkd"), "admin", "create-user", "alice"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        stack.headers = {"Authorization": f"Bearer {key}"}
        stack.spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        stack.spawn("sweeper", [sys.executable, "-m", "worker.sweeper"])
        stack.start_worker()
        wait_http(f"{stack.url}/readyz")
        yield stack
    finally:
        stack.stop()
        for log in sorted(stack.logs.glob("*.log")):  # shown by pytest on failure
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def raccoon_root() -> Path:
    """The real raccoon set when ``../shared`` is there, else the committed 40-image sample."""
    return SHARED_RACCOON if SHARED_RACCOON.is_dir() else REPO / "samples" / "raccoon-mini"


def tiny_train_config(**train: Any) -> dict[str, Any]:
    return {
        "model": {"arch": "retinanet_resnet18_fpn"},
        "data": {"image_size": 96, "num_workers": 0, "hflip_prob": 0.0},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "warmup_steps": 0, "scheduler": "constant"},
        "train": {
            "max_steps": 4,
            "batch_size": 2,
            "device": "cpu",
            "amp": False,
            "eval_every_epochs": 0,
            **train,
        },
    }


def follow_events(client: httpx.Client, job_id: str, timeout_s: float) -> list[tuple[str, Any]]:
    """Read the job's SSE stream to its ``end`` event; returns (event, data) pairs."""
    events: list[tuple[str, Any]] = []
    event = "message"
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout_s) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: ") :])))
                if event == "end":
                    return events
    return events
