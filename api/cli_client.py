"""``bmgkd submit|upload-dataset|upload-teacher|jobs|watch|download``: the REST client commands.

A plugin of the ``bmgkd`` CLI (entry-point group ``bmgkd.commands``, see ``bmgkd_core.cli``):
:func:`register` adds the sub-commands; every handler returns an exit code. All HTTP goes
through :class:`api.client.ApiClient`, a thin wrapper over an ``httpx.Client`` that tests
replace with FastAPI's ``TestClient`` (:func:`run_client` takes one). Imports stay light: no
torch, nothing from the engine.

Every command takes ``--server`` (default ``$BMGKD_SERVER`` or ``http://127.0.0.1:8000``) and
``--api-key`` (default ``$BMGKD_API_KEY``). Ids go to stdout, one per line, so that
``JOB=$(bmgkd submit ...)`` works; progress and summaries go to stderr.

Exit codes: 0 success; 1 the job failed or was cancelled, the server answered 5xx, the download
did not match its checksum, or the connection broke for good; 2 bad input, an HTTP 4xx or an
unreachable server; 130 interrupted (Ctrl-C; a watched job keeps running on the server).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from api.client import (
    API_PREFIX,
    DEFAULT_SERVER,
    UPLOAD_TIMEOUT,
    ApiClient,
    ApiError,
    SseEvent,
    SseState,
    UsageError,
    iter_sse,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_SERVER",
    "ApiClient",
    "ApiError",
    "SseEvent",
    "UsageError",
    "build_job_body",
    "format_duration",
    "format_jobs_table",
    "iter_sse",
    "register",
    "run_client",
    "zip_directory",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

JOB_KINDS = ("train", "distill", "eval")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_DETAIL_LINES = 20
MAX_RECONNECTS = 5

_CHUNK = 1 << 20

Handler = Callable[[argparse.Namespace], int]
Command = Callable[[argparse.Namespace, "ApiClient"], int]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to ``bmgkd``'s sub-parsers (entry point ``bmgkd.commands``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="URL",
        help=f"the bmgkd API (default: $BMGKD_SERVER or {DEFAULT_SERVER})",
    )
    common.add_argument("--api-key", metavar="KEY", help="API key (default: $BMGKD_API_KEY)")

    p = sub.add_parser("submit", parents=[common], help="submit a train, distill or eval job")
    p.add_argument("--kind", required=True, choices=JOB_KINDS)
    p.add_argument("--dataset", required=True, metavar="ID", help="a dataset id (upload-dataset)")
    p.add_argument("--teacher", metavar="ID", help="a teacher id (upload-teacher); distill jobs")
    p.add_argument("--source-job", metavar="ID", help="the job whose model an eval job evaluates")
    p.add_argument("--name", help="a label for the job")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the job config as JSON (or YAML): a DistillConfig without data.root / "
        "distill.teacher, or for eval jobs {split, image_size, device, batch_size}; the flags "
        "below override it",
    )
    p.add_argument("--arch", help="config.model.arch, the student architecture")
    p.add_argument("--image-size", type=int, metavar="N", help="config.data.image_size")
    p.add_argument("--epochs", type=int, metavar="N", help="config.train.epochs")
    p.add_argument("--max-steps", type=int, metavar="N", help="config.train.max_steps")
    p.add_argument("--batch-size", type=int, metavar="N", help="config.train.batch_size")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="config.train.device (picks the queue)"
    )
    p.add_argument("--preset", metavar="P", help="config.distill.preset (distill jobs)")
    p.add_argument("--watch", action="store_true", help="then follow the job like `bmgkd watch`")
    p.set_defaults(handler=_handler(_submit))

    p = sub.add_parser(
        "upload-dataset", parents=[common], help="upload a COCO/VOC dataset (.zip, .tar.gz or dir)"
    )
    p.add_argument("path", type=Path, metavar="PATH", help="a .zip / .tar.gz, or a directory")
    p.add_argument("--name", help="the dataset's name (default: the file or directory name)")
    p.add_argument("--format", choices=("auto", "coco", "voc"), default="auto")
    p.set_defaults(handler=_handler(_upload_dataset))

    p = sub.add_parser("upload-teacher", parents=[common], help="upload a teacher checkpoint")
    p.add_argument("file", type=Path, metavar="FILE", help="a bmgkd model.pt or a state dict")
    p.add_argument("--arch", help="required for a plain torchvision state dict")
    p.add_argument(
        "--classes", metavar="NAMES", help='JSON list or comma-separated ("cat,dog"); state dicts'
    )
    p.add_argument("--name", help="the teacher's name (default: the file name)")
    p.set_defaults(handler=_handler(_upload_teacher))

    p = sub.add_parser("jobs", parents=[common], help="list your jobs, newest first")
    p.add_argument("--status", choices=JOB_STATUSES)
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print the API's JSON page")
    p.set_defaults(handler=_handler(_jobs))

    p = sub.add_parser("watch", parents=[common], help="follow a job's progress until it ends")
    p.add_argument("job", metavar="JOB", help="a job id")
    p.set_defaults(handler=_handler(_watch))

    p = sub.add_parser("download", parents=[common], help="download a job's artifact")
    p.add_argument("job", metavar="JOB", help="a job id")
    p.add_argument("--artifact", default="model.pt", metavar="NAME")
    p.add_argument(
        "--out", type=Path, metavar="PATH", help="file or directory (default: ./<job>-<artifact>)"
    )
    p.set_defaults(handler=_handler(_download))


def run_client(argv: Sequence[str], *, client: httpx.Client | None = None) -> int:
    """Parse and run one client command (``["jobs", "--json"]``) over ``client`` if given.

    Only this module's commands exist here (the full CLI is ``bmgkd_core.cli.main``); tests use
    it with FastAPI's ``TestClient``. Bad arguments raise ``SystemExit(2)`` as argparse does.
    """
    parser = argparse.ArgumentParser(prog="bmgkd")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(list(argv))
    args._http_client = client
    code: int = args.handler(args)
    return code


def _handler(fn: Command) -> Handler:
    """Wrap a command: build the :class:`ApiClient`, map errors to messages and exit codes."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        prefix = f"bmgkd {args.command}"
        server = args.server or os.environ.get("BMGKD_SERVER") or DEFAULT_SERVER
        try:
            with ApiClient.from_args(args) as api:
                server = api.base_url
                return fn(args, api)
        except UsageError as exc:
            _err(f"{prefix}: error: {exc}")
            return EXIT_USAGE
        except ApiError as exc:
            _err(f"{prefix}: error: {exc.status} {exc.message}")
            for line in exc.lines[:MAX_DETAIL_LINES]:
                _err(f"  {line}")
            if len(exc.lines) > MAX_DETAIL_LINES:
                _err(f"  ... and {len(exc.lines) - MAX_DETAIL_LINES} more")
            return EXIT_USAGE if exc.status < 500 else EXIT_FAILED
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            _err(
                f"{prefix}: error: cannot reach the bmgkd server at {server} ({exc}); "
                "is it running? (--server URL or BMGKD_SERVER)"
            )
            return EXIT_USAGE
        except httpx.TransportError as exc:
            _err(f"{prefix}: error: connection to {server} failed: {type(exc).__name__}: {exc}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            _err(f"\n{prefix}: interrupted")
            return EXIT_INTERRUPTED

    return run


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- submit -------------------------------------------------------------------------------------

# flag -> where it goes in a train/distill config (a DistillConfig) and in an eval config (EvalSpec)
_TRAIN_FLAGS: dict[str, tuple[str, ...]] = {
    "arch": ("model", "arch"),
    "image_size": ("data", "image_size"),
    "epochs": ("train", "epochs"),
    "max_steps": ("train", "max_steps"),
    "batch_size": ("train", "batch_size"),
    "device": ("train", "device"),
    "preset": ("distill", "preset"),
}
_EVAL_FLAGS: dict[str, tuple[str, ...]] = {
    "image_size": ("image_size",),
    "batch_size": ("batch_size",),
    "device": ("device",),
}


def build_job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /jobs`` body: ``--config``'s dict with the flags merged in.

    Raises:
        UsageError: an unreadable config file, or a flag that does not apply to the kind.
    """
    config = _read_config(args.config) if args.config is not None else {}
    flags = _EVAL_FLAGS if args.kind == "eval" else _TRAIN_FLAGS
    for dest in _TRAIN_FLAGS:
        value = getattr(args, dest)
        if value is None:
            continue
        if dest not in flags:
            raise UsageError(f"--{dest.replace('_', '-')} does not apply to {args.kind} jobs")
        _set_in(config, flags[dest], value)
    return {
        "kind": args.kind,
        "dataset_id": args.dataset,
        "teacher_id": args.teacher,
        "source_job_id": args.source_job,
        "name": args.name,
        "config": config,
    }


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                yaml = importlib.import_module("yaml")
            except ImportError as exc:
                raise UsageError(f"--config {path}: YAML needs PyYAML; use JSON") from exc
            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except UsageError:
        raise
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(f"--config {path}: not valid {path.suffix[1:] or 'JSON'}: {exc}") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"--config {path}: expected an object at the top level")
    return doc


def _set_in(config: dict[str, Any], where: tuple[str, ...], value: Any) -> None:
    node = config
    for i, key in enumerate(where[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = ".".join(("config", *where[: i + 1]))
            raise UsageError(f"--config: {dotted} must be an object")
        node = child
    node[where[-1]] = value


def _submit(args: argparse.Namespace, api: ApiClient) -> int:
    job = api.post("/jobs", json=build_job_body(args))
    print(job["id"], flush=True)
    _err(f"submitted {job['kind']} job {job['id']} (queue {job.get('queue')}, {job['status']})")
    if args.watch:
        return _follow(api, str(job["id"]))
    return EXIT_OK


# --- uploads ------------------------------------------------------------------------------------


def zip_directory(root: Path, out: IO[bytes]) -> int:
    """Write ``root``'s files into a zip under ``<root.name>/``; returns the number of files."""
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
                count += 1
    return count


def _upload_dataset(args: argparse.Namespace, api: ApiClient) -> int:
    path: Path = args.path
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    data = {"format": args.format}
    if args.name:
        data["name"] = args.name
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            root = path.resolve()
            fh: IO[bytes] = stack.enter_context(tempfile.TemporaryFile(suffix=".zip"))
            if zip_directory(root, fh) == 0:
                raise UsageError(f"{path}: the directory has no files")
            fh.seek(0)
            filename = f"{root.name}.zip"
        else:
            fh = stack.enter_context(path.open("rb"))
            filename = path.name
        response = api.request(
            "POST",
            "/datasets",
            files={"file": (filename, fh, "application/octet-stream")},
            data=data,
            timeout=UPLOAD_TIMEOUT,
        )
    ds = response.json()
    print(ds["id"], flush=True)
    stats = ds.get("stats") or {}
    warnings = stats.get("num_warnings", 0)
    _err(
        f"dataset {ds['id']} {ds['name']!r} ({ds['format']}): {ds['num_images']} images, "
        f"{ds['num_boxes']} boxes, {len(ds['class_names'])} classes"
        + (f", {warnings} warning(s)" if warnings else "")
        + (" (already uploaded)" if response.status_code == 200 else "")
    )
    return EXIT_OK


def _upload_teacher(args: argparse.Namespace, api: ApiClient) -> int:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    data = {k: v for k, v in (("arch", args.arch), ("class_names", args.classes)) if v}
    if args.name:
        data["name"] = args.name
    with path.open("rb") as fh:
        teacher = api.post(
            "/teachers",
            files={"file": (path.name, fh, "application/octet-stream")},
            data=data,
            timeout=UPLOAD_TIMEOUT,
        )
    print(teacher["id"], flush=True)
    names = teacher["class_names"]
    _err(
        f"teacher {teacher['id']} {teacher['name']!r}: {teacher['arch']}, {len(names)} classes "
        f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
    )
    return EXIT_OK


# --- jobs ---------------------------------------------------------------------------------------


def _jobs(args: argparse.Namespace, api: ApiClient) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    page = api.get("/jobs", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    print(format_jobs_table(page["items"]))
    if page["total"] > len(page["items"]):
        _err(f"showing {len(page['items'])} of {page['total']} jobs (--limit N)")
    return EXIT_OK


def format_jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    """Aligned columns: id, kind, status, progress, step/total, attempt, created (UTC)."""
    header = ("ID", "KIND", "STATUS", "PROGRESS", "STEP", "ATTEMPT", "CREATED")
    rows = [header]
    for job in jobs:
        total = job.get("total_steps")
        rows.append(
            (
                str(job["id"]),
                str(job["kind"]),
                str(job["status"]),
                f"{100 * float(job.get('progress') or 0):.0f}%",
                f"{job.get('step', 0)}/{total if total else '?'}",
                str(job.get("attempt", 0)),
                str(job.get("created_at") or "")[:19].replace("T", " "),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# --- watch --------------------------------------------------------------------------------------


@dataclass
class _WatchView:
    """What the progress line shows; renders as a bar on a TTY and as throttled lines otherwise."""

    job_id: str
    tty: bool
    status: str = "?"
    progress: float = 0.0
    step: int = 0
    total_steps: int | None = None
    eta_s: float | None = None
    loss: float | None = None
    plain_every_s: float = 10.0
    _last_plain: float = field(default=-1e9, repr=False)
    _drawn: bool = field(default=False, repr=False)

    def line(self, width: int = 100) -> str:
        pct = 100.0 * max(0.0, min(self.progress, 1.0))
        bar_w = 20
        filled = round(bar_w * pct / 100)
        parts = [
            f"[{'#' * filled}{'-' * (bar_w - filled)}]" if self.tty else "",
            f"{pct:5.1f}%",
            self.status,
            f"step {self.step}/{self.total_steps if self.total_steps else '?'}",
        ]
        if self.eta_s is not None and self.status == "running":
            parts.append(f"ETA {format_duration(self.eta_s)}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        text = "  ".join(p for p in parts if p)
        return text[: max(width - 1, 20)]

    def show(self, *, force: bool = False) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            sys.stderr.write(f"\r{self.line(width)}\x1b[K")
            sys.stderr.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if force or now - self._last_plain >= self.plain_every_s:
            _err(f"{self.job_id}: {self.line(200)}")
            self._last_plain = now

    def note(self, message: str) -> None:
        """A message on its own line (the bar is redrawn by the next update)."""
        self.finish()
        _err(message)

    def finish(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _watch(args: argparse.Namespace, api: ApiClient) -> int:
    return _follow(api, args.job)


def _follow(
    api: ApiClient,
    job_id: str,
    *,
    max_reconnects: int = MAX_RECONNECTS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follow ``/jobs/{id}/events`` to the ``end`` event, reconnecting with ``Last-Event-ID``."""
    view = _WatchView(job_id, tty=sys.stderr.isatty())
    sse = SseState()
    job: dict[str, Any] = {}
    end: dict[str, Any] | None = None
    failures = 0
    while end is None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if sse.last_id is not None:
            headers["Last-Event-ID"] = sse.last_id
        seen_before = sse.last_id
        try:
            with api.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
                for ev in iter_sse(response.iter_lines(), sse):
                    end = _apply_event(ev, view, job)
                    if end is not None:
                        break
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if failures == 0 and not job:
                raise  # never connected: report the server as unreachable
            reason = "the server is unreachable"
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "the server closed the stream"
        if end is not None:
            break
        failures = 0 if sse.last_id != seen_before else failures + 1
        if failures > max_reconnects:
            view.finish()
            _err(f"bmgkd watch: error: lost the event stream of job {job_id} ({reason})")
            return EXIT_FAILED
        delay = min(
            (sse.retry_ms if sse.retry_ms is not None else 2000) / 1000 * max(failures, 1), 30
        )
        view.note(f"{job_id}: {reason}; reconnecting in {delay:.0f}s")
        sleep(delay)
    view.finish()
    return _report_end(api, job_id, job, end)


def _apply_event(ev: SseEvent, view: _WatchView, job: dict[str, Any]) -> dict[str, Any] | None:
    """Update the view (and the last ``status`` job document); returns ``end``'s data."""
    try:
        data: Any = json.loads(ev.data)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if ev.event == "end":
        return data
    if ev.event == "status":
        changed = data.get("status") != job.get("status")
        job.clear()
        job.update(data)
        _update_view(view, data)
        if changed:
            view.show(force=True)
    elif ev.event == "progress":
        _update_view(view, data)
        view.show()
    elif ev.event == "metrics":
        loss = (data.get("series") or {}).get("loss") or {}
        values = loss.get("values") or []
        if values:
            view.loss = float(values[-1])
            view.show()
    return None


def _update_view(view: _WatchView, data: dict[str, Any]) -> None:
    view.status = str(data.get("status") or view.status)
    view.progress = float(data.get("progress") or 0.0)
    view.step = int(data.get("step") or 0)
    view.total_steps = data.get("total_steps")
    view.eta_s = data.get("eta_s")


def _report_end(api: ApiClient, job_id: str, job: dict[str, Any], end: dict[str, Any]) -> int:
    status = end.get("status")
    if status is None:
        _err(f"bmgkd watch: job {job_id} was {end.get('reason') or 'removed'}")
        return EXIT_FAILED
    if job.get("status") != status or (status == "failed" and not job.get("failure_code")):
        job = api.get(f"/jobs/{job_id}")
    if status == "succeeded":
        print(f"job {job_id} succeeded", flush=True)
        result = job.get("result") or {}
        if result:
            _err(f"result: {json.dumps(result, separators=(', ', ': '), default=str)[:500]}")
        return EXIT_OK
    code = job.get("failure_code") or status.upper()
    message = job.get("failure_message") or ""
    _err(f"bmgkd watch: job {job_id} {status}: {code}" + (f": {message}" if message else ""))
    return EXIT_FAILED


# --- download -----------------------------------------------------------------------------------


def _download(args: argparse.Namespace, api: ApiClient) -> int:
    default_name = f"{args.job}-{args.artifact}"
    out: Path = args.out if args.out is not None else Path(default_name)
    if out.is_dir():
        out = out / default_name
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the directory {out.parent} does not exist")
    with api.stream("GET", f"/jobs/{args.job}/artifacts/{args.artifact}") as response:
        expected = response.headers.get("X-Content-SHA256")
        digest, size = _write_atomic(out, response.iter_bytes(_CHUNK), expected)
    if digest is None:
        _err(
            f"bmgkd download: error: checksum mismatch for {args.artifact} of job {args.job}: "
            f"the server says {expected}, the bytes received hash to a different value; "
            "nothing was written"
        )
        return EXIT_FAILED
    if expected is None:
        _err("bmgkd download: warning: the server sent no X-Content-SHA256; not verified")
    print(out, flush=True)
    _err(f"{size} bytes, sha256 {digest}" + (" (verified)" if expected else ""))
    return EXIT_OK


def _write_atomic(
    out: Path, chunks: Iterable[bytes], expected_sha256: str | None
) -> tuple[str | None, int]:
    """Write to a temp file beside ``out`` and ``os.replace`` it when the SHA-256 matches
    ``expected_sha256`` (or there is none); returns ``(hexdigest or None on mismatch, size)``."""
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                h.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0o022)  # mkstemp makes 0600; give the file the usual permissions
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.strip().lower():
            tmp.unlink(missing_ok=True)
            return None, size
        os.replace(tmp, out)
        return digest, size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
