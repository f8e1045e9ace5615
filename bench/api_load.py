"""Latency and throughput of `POST /api/v1/jobs` and `GET /api/v1/jobs/{id}` under N clients.

Starts the real service itself: a fresh PostgreSQL schema (or a SQLite file), a user from
`bmgkd admin create-user`, and a `uvicorn --factory api.main:create_app` process on a free
loopback port, with unique Celery queue names so no worker consumes the submitted jobs. It uploads
one tiny synthetic dataset, warms up, then runs two phases with `--clients` asyncio clients (one
keep-alive connection each), every client sending `--requests` requests one after another: phase 1
submits train jobs, phase 2 reads the jobs phase 1 created. By default each client sends its next
request as soon as the last one returns (closed loop: the worst case, latency = clients / req/s);
`--rate R` paces each client at R requests/s instead (open loop, latency counted from the
scheduled send time). Any non-2xx answer counts as an error and is printed.

Reports p50/p90/p99/max latency, requests/s, errors and the server's CPU time per request per
phase, checks submit p99 against the product goal (< 50 ms at 50 clients; a MISS is reported, not
an exit status), writes JSON + Markdown to bench/results/api_load_<db>.*, and always stops
uvicorn, drops the schema and deletes its Redis queue keys.

    python bench/api_load.py --db postgres            # 50 clients x 20 requests, back to back
    python bench/api_load.py --db sqlite
    python bench/api_load.py --db postgres --rate 2   # 50 clients at 2 submits/s each
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("BMGKD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BMGKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
GOAL_P99_MS = 50.0
GOAL_CLIENTS = 50
MAX_ERRORS_SHOWN = 10

sys.path.insert(0, str(REPO))  # tests/synth.py: the synthetic COCO writer the test-suite uses
from tests.synth import make_coco_dataset  # noqa: E402


def job_body(dataset_id: str, n: int) -> dict[str, Any]:
    return {
        "kind": "train",
        "dataset_id": dataset_id,
        "name": f"bench-{n}",
        "config": {
            "model": {"arch": "retinanet_resnet18_fpn"},
            "data": {"image_size": 64},
            "train": {"max_steps": 2, "device": "cpu"},
        },
    }


@dataclass
class Phase:
    """One timed phase: per-request latencies (s), wall time (s) and the failed requests."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    start: float = 0.0
    wall_s: float = 0.0
    server_cpu_s: float | None = None  # uvicorn's process group, user + system
    client_cpu_s: float = 0.0  # this load generator
    machine_busy: float | None = None  # fraction of all cores busy (/proc/stat), all processes

    def record(self, t0: float, response: httpx.Response | None, exc: Exception | None) -> None:
        self.latencies.append(time.perf_counter() - t0)
        at = f"[sent at t={t0 - self.start:.2f}s, {1000 * self.latencies[-1]:.0f} ms] "
        if exc is not None:
            self.errors.append(f"{at}{type(exc).__name__}: {exc!r}")
        elif response is not None and not 200 <= response.status_code < 300:
            self.errors.append(f"{at}HTTP {response.status_code}: {response.text[:200]}")

    def summary(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "requests": len(ms),
            "errors": len(self.errors),
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1] if ms else float("nan"),
            "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
            "requests_per_s": len(ms) / self.wall_s if self.wall_s else float("nan"),
            "wall_s": self.wall_s,
            "server_cpu_ms_per_request": (
                self.server_cpu_s * 1000 / len(ms) if ms and self.server_cpu_s is not None else None
            ),
            "client_cpu_ms_per_request": self.client_cpu_s * 1000 / len(ms) if ms else None,
            "machine_cpu_busy": self.machine_busy,
            "first_errors": self.errors[:MAX_ERRORS_SHOWN],
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def _submit(
    client: httpx.AsyncClient, body: dict[str, Any], phase: Phase | None, t0: float | None = None
) -> str | None:
    t0 = t0 or time.perf_counter()
    response, exc = None, None
    try:
        response = await client.post("/api/v1/jobs", json=body)
    except httpx.HTTPError as e:
        exc = e
    if phase is not None:
        phase.record(t0, response, exc)
    if response is not None and response.status_code == 201:
        return str(response.json()["id"])
    return None


async def _read(
    client: httpx.AsyncClient, job_id: str, phase: Phase | None, t0: float | None = None
) -> None:
    t0 = t0 or time.perf_counter()
    response, exc = None, None
    try:
        response = await client.get(f"/api/v1/jobs/{job_id}")
    except httpx.HTTPError as e:
        exc = e
    if phase is not None:
        phase.record(t0, response, exc)


async def run_load(
    url: str, key: str, dataset_id: str, args: argparse.Namespace, server_pgid: int
) -> tuple[Phase, Phase, int]:
    """Warm-up, then the submit phase, then the read phase; returns both phases and job count.

    ``--pool per-client`` (default): one ``httpx.AsyncClient`` per simulated client, each with a
    one-connection keep-alive pool. ``--pool shared``: one client whose pool holds ``--clients``
    connections; httpcore scans that pool on every request, which costs the load generator ~5x
    the CPU per request at 50 clients and so inflates latencies on a small machine.
    """
    n_pools = args.clients if args.pool == "per-client" else 1
    size = args.clients // n_pools
    # Idle connections expire client-side before uvicorn's 5 s keep-alive timeout closes them, so
    # a request never races the server closing its connection.
    limits = httpx.Limits(
        max_connections=size, max_keepalive_connections=size, keepalive_expiry=4.0
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=url, headers=headers, limits=limits, timeout=args.timeout
                )
            )
            for _ in range(n_pools)
        ]
        clients = [pools[i % n_pools] for i in range(args.clients)]
        counter = iter(range(10**9))
        # Warm-up: every client opens its connection and runs submit + read, untimed.
        warm_ids: list[str] = []

        async def warm_client(i: int) -> None:
            for _ in range(args.warmup):
                job_id = await _submit(clients[i], job_body(dataset_id, next(counter)), None)
                if job_id:
                    warm_ids.append(job_id)
                    await _read(clients[i], job_id, None)

        await asyncio.gather(*(warm_client(i) for i in range(args.clients)))

        submit = Phase("submit")
        per_client: list[list[str]] = [[] for _ in range(args.clients)]

        async def submit_client(i: int) -> None:
            for n in range(args.requests):
                t0 = await _pace(submit.start, i, n, args)
                job = job_body(dataset_id, next(counter))
                job_id = await _submit(clients[i], job, submit, t0)
                if job_id:
                    per_client[i].append(job_id)

        with _cpu_clock(submit, server_pgid):
            submit.start = time.perf_counter()
            await asyncio.gather(*(submit_client(i) for i in range(args.clients)))
            submit.wall_s = time.perf_counter() - submit.start

        created = [j for ids in per_client for j in ids] or warm_ids
        read = Phase("read")

        async def read_client(i: int) -> None:
            # Client i reads other clients' jobs (offset by one), so no read hits a row the same
            # connection just wrote; cycles when some submits failed.
            for n in range(args.requests):
                t0 = await _pace(read.start, i, n, args)
                job_id = created[(i + 1 + n * args.clients) % len(created)]
                await _read(clients[i], job_id, read, t0)

        if created:
            with _cpu_clock(read, server_pgid):
                read.start = time.perf_counter()
                await asyncio.gather(*(read_client(i) for i in range(args.clients)))
                read.wall_s = time.perf_counter() - read.start
    return submit, read, len(created) + len(warm_ids)


def group_cpu_s(pgid: int) -> float | None:
    """User + system CPU seconds of the live processes in process group ``pgid`` (Linux /proc)."""
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat; None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


@contextmanager
def _cpu_clock(phase: Phase, server_pgid: int) -> Iterator[None]:
    server0, client0, machine0 = group_cpu_s(server_pgid), time.process_time(), machine_ticks()
    yield
    server1, machine1 = group_cpu_s(server_pgid), machine_ticks()
    phase.client_cpu_s = time.process_time() - client0
    if server0 is not None and server1 is not None:
        phase.server_cpu_s = server1 - server0
    if machine0 is not None and machine1 is not None and machine1[1] > machine0[1]:
        phase.machine_busy = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])


async def _pace(start: float, i: int, n: int, args: argparse.Namespace) -> float | None:
    """With ``--rate``: sleep until client i's n-th scheduled send time and return it (latency is
    counted from the schedule, so a late send counts: no coordinated omission). Closed loop: None.
    """
    if args.rate <= 0:
        return None
    interval = 1.0 / float(args.rate)
    due: float = start + interval * (
        i / args.clients + n
    )  # clients spread evenly over one interval
    await asyncio.sleep(max(0.0, due - time.perf_counter()))
    return due


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


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode} before /readyz")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/readyz not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM uvicorn's process group (workers included), SIGKILL after 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def machine_info(db_url: str, broker: str) -> dict[str, Any]:
    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **{
            pkg: ver(pkg)
            for pkg in ("fastapi", "uvicorn", "sqlalchemy", "httpx", "psycopg", "celery", "kombu")
        },
        "uvloop": ver("uvloop"),
        "httptools": ver("httptools"),
    }
    try:
        info["redis_server"] = redis.Redis.from_url(broker).info("server").get("redis_version")
    except redis.RedisError:
        info["redis_server"] = None
    if db_url.startswith("postgresql"):
        engine = create_engine(db_url)
        with engine.connect() as conn:
            info["postgres_server"] = conn.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
    return info


def cleanup_redis(broker: str, tag: str) -> int:
    """Delete the bench's queue lists and kombu's binding sets (every key naming ``tag``)."""
    if not broker.startswith(("redis://", "rediss://")):
        return 0
    client = redis.Redis.from_url(broker)
    try:
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--pg-url", default=PG_URL, help="server for --db postgres (fresh schema)")
    p.add_argument("--broker", default=REDIS_URL, help="BMGKD_BROKER_URL (unique queue names)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--clients", type=int, default=GOAL_CLIENTS, help="concurrent clients")
    p.add_argument("--requests", type=int, default=20, help="timed requests per client and phase")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed submit+read pairs per client first"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s per client, paced (open loop); 0 = back to back (closed loop, default)",
    )
    p.add_argument(
        "--pool",
        choices=("per-client", "shared"),
        default="per-client",
        help="one httpx client (1 keep-alive connection) per client, or one shared pool",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvicorn access log (on in production; written to a temp file)",
    )
    p.add_argument(
        "--app",
        default="api.main:create_app",
        help="uvicorn app factory (another one on PYTHONPATH to A/B a server-side change)",
    )
    p.add_argument("--tag", default=None, help="results file name (default: api_load_<db>)")
    args = p.parse_args()
    for name in ("workers", "clients", "requests"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    # SIGTERM (e.g. `timeout`, a CI job cancel) unwinds through run()'s cleanup like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    _write(result, args.tag or f"api_load_{args.db}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex[:10]}"
    schema = tag.replace("-", "_")
    tmp = Path(tempfile.mkdtemp(prefix="bmgkd-api-load-"))
    data_dir = tmp / "data"
    admin_engine = None
    proc: subprocess.Popen[bytes] | None = None
    log_path = tmp / "uvicorn.log"
    try:
        if args.db == "postgres":
            engine = create_engine(args.pg_url)
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            admin_engine = engine  # from here on, the schema is dropped at the end
            sep = "&" if "?" in args.pg_url else "?"
            db_url = f"{args.pg_url}{sep}options=-csearch_path%3D{schema}"
        else:
            db_url = f"sqlite:///{data_dir / 'bmgkd.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BMGKD_")}
        env.update(
            {
                "BMGKD_DATABASE_URL": db_url,
                "BMGKD_BROKER_URL": args.broker,
                "BMGKD_DATA_DIR": str(data_dir),
                "BMGKD_GPU_QUEUE": f"{tag}-gpu",
                "BMGKD_CPU_QUEUE": f"{tag}-cpu",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Also applies the migrations, so the uvicorn workers' start-up upgrade is a no-op.
        created_user = subprocess.run(
            [str(BIN / "bmgkd"), "admin", "create-user", "bench"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if created_user.returncode != 0:
            raise RuntimeError(f"bmgkd admin create-user failed:\n{created_user.stderr[-2000:]}")
        key = created_user.stdout.strip()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            args.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--log-level",
            "warning" if not args.access_log else "info",
        ]
        if not args.access_log:
            cmd.append("--no-access-log")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_ready(url, proc)
        ds_root = make_coco_dataset(tmp / "synth", n_train=4, n_val=2, size=(64, 64))
        r = httpx.post(
            f"{url}/api/v1/datasets",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": ("synth.zip", zip_dataset(ds_root), "application/zip")},
            timeout=120,
        )
        if r.status_code != 201:
            raise RuntimeError(f"dataset upload failed: HTTP {r.status_code}: {r.text[:500]}")
        dataset_id = str(r.json()["id"])
        print(
            f"uvicorn ({args.workers} worker(s)) on {url}, db {args.db}, {args.clients} clients "
            f"x {args.requests} requests per phase (+{args.warmup} warm-up pairs each)",
            flush=True,
        )
        submit, read, n_jobs = asyncio.run(run_load(url, key, dataset_id, args, proc.pid))
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn died during the run (exit {proc.returncode})")
        for phase in (submit, read):
            for err in phase.errors[:MAX_ERRORS_SHOWN]:
                print(f"  {phase.name} error: {err}")
            if len(phase.errors) > MAX_ERRORS_SHOWN:
                print(f"  {phase.name}: {len(phase.errors) - MAX_ERRORS_SHOWN} more errors")
        return {
            "command": shlex.join(["python", *sys.argv]),
            "db": args.db,
            "app": args.app,
            "uvicorn_workers": args.workers,
            "clients": args.clients,
            "requests_per_client": args.requests,
            "warmup_pairs_per_client": args.warmup,
            "rate_per_client": args.rate or None,
            "client_pool": args.pool,
            "access_log": args.access_log,
            "jobs_created": n_jobs,
            "phases": {"submit": submit.summary(), "read": read.summary()},
            "goal": {
                "submit_p99_ms_below": GOAL_P99_MS,
                "at_clients": GOAL_CLIENTS,
                "verdict": _verdict(submit, args.clients),
            },
            "machine": machine_info(db_url, args.broker),
        }
    except BaseException:
        if log_path.is_file():
            print(f"---- uvicorn log (tail)\n{log_path.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        _cleanup(proc, admin_engine, schema, args.broker, tag)
        shutil.rmtree(tmp, ignore_errors=True)


def _cleanup(
    proc: subprocess.Popen[bytes] | None,
    admin_engine: Engine | None,
    schema: str,
    broker: str,
    tag: str,
) -> None:
    """Stop uvicorn, drop the schema, delete the Redis keys: each step runs even if one fails."""
    done = []
    try:
        if proc is not None:
            stop(proc)
            done.append("uvicorn stopped")
        if admin_engine is not None:
            with admin_engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin_engine.dispose()
            done.append(f"schema {schema} dropped")
    except Exception as exc:
        print(f"cleanup: WARNING: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        done.append(f"{cleanup_redis(broker, tag)} redis key(s) of {tag} deleted")
    except redis.RedisError as exc:
        print(f"cleanup: WARNING: redis keys *{tag}* left: {exc}", file=sys.stderr)
    print(f"cleanup: {', '.join(done) or 'nothing to do'}", flush=True)


def _verdict(submit: Phase, clients: int) -> str:
    if clients < GOAL_CLIENTS:
        return "n/a"  # the goal is stated at 50 clients
    met = submit.summary()["p99_ms"] < GOAL_P99_MS and not submit.errors
    return "PASS" if met else "MISS"


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def _ms(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}"


def _row(name: str, s: dict[str, Any]) -> str:
    cpu = s["server_cpu_ms_per_request"]
    return (
        f"| {name} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | "
        f"{s['max_ms']:.1f} | {s['requests_per_s']:.0f} | {s['errors']}/{s['requests']} | "
        f"{_ms(cpu)} |"
    )


def _write(result: dict[str, Any], tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    p99 = result["phases"]["submit"]["p99_ms"]
    verdict = result["goal"]["verdict"]
    goal = (
        f"goal: submit p99 < {GOAL_P99_MS:.0f} ms at {GOAL_CLIENTS} clients: **{verdict}** "
        f"({p99:.1f} ms at {result['clients']} clients)"
    )
    header = [
        "| endpoint | p50 ms | p90 ms | p99 ms | max ms | req/s | errors | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        _row("`POST /api/v1/jobs`", result["phases"]["submit"]),
        _row("`GET /api/v1/jobs/{id}`", result["phases"]["read"]),
    ]
    sub = result["phases"]["submit"]
    cpu = (
        f"During the submit phase the machine's CPUs were {_pct(sub['machine_cpu_busy'])} busy; "
        f"per request the load generator used {_ms(sub['client_cpu_ms_per_request'])} ms of CPU."
    )
    services = "PostgreSQL and Redis" if result["db"] == "postgres" else "Redis"
    rate = result["rate_per_client"]
    pacing = f"paced at {rate:g} req/s per client" if rate else "back to back"
    db = result["db"] + (f" {m['postgres_server']}" if m.get("postgres_server") else "")
    md = [
        f"{result['clients']} concurrent clients x {result['requests_per_client']} sequential "
        f"requests each ({pacing}), keep-alive, loopback; {db}, Redis "
        f"{m.get('redis_server')} broker, {result['uvicorn_workers']} uvicorn worker(s), "
        f"access log {'on' if result['access_log'] else 'off'}.",
        "",
        *header,
        *rows,
        "",
        goal,
        "",
        f"Load generator (one asyncio process, httpx, {result['client_pool']} connection pool) "
        f"and server (with {services}) share one {m['cpu_count']}-core machine: the server "
        f"gets less than the whole machine (expect lower latency and higher req/s with the client "
        f"elsewhere). {cpu} Python {m['python']}, "
        f"fastapi {m['fastapi']}, uvicorn {m['uvicorn']}, sqlalchemy {m['sqlalchemy']}; "
        f"{m['date']}.",
        "",
        "```",
        result["command"],
        "```",
    ]
    (RESULTS / f"{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join([*header, *rows]))
    print(cpu)
    print(goal.replace("**", ""))
    print(f"wrote {RESULTS / tag}.json and .md")


if __name__ == "__main__":
    main()
