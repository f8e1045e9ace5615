"""A small client of the bmgkd REST API (``ApiClient``) and a Server-Sent Events parser.

Used by the ``bmgkd`` client commands (:mod:`api.cli_client`); torch-free, httpx only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "API_PREFIX",
    "DEFAULT_SERVER",
    "UPLOAD_TIMEOUT",
    "ApiClient",
    "ApiError",
    "SseEvent",
    "SseState",
    "UsageError",
    "iter_sse",
]

API_PREFIX = "/api/v1"
DEFAULT_SERVER = "http://127.0.0.1:8000"

# Uploads are validated before the server answers, so reads may take minutes; the event stream
# sends a keep-alive every 15 s, so 60 s of silence means the connection is gone.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
UPLOAD_TIMEOUT = httpx.Timeout(900.0, connect=10.0)


class UsageError(Exception):
    """Bad command-line input found before (or without) talking to the server: exit 2."""


class ApiError(Exception):
    """An HTTP error answer: the status, the detail's message and its listed issues/errors."""

    def __init__(self, status: int, message: str, lines: Sequence[str] = ()) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.lines = list(lines)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Parse FastAPI's ``{"detail": "..."}`` or ``{"detail": {"message", "issues"|"errors"}}``
        (the response must have been read)."""
        try:
            body: Any = response.json()
        except ValueError:
            text = response.text.strip()
            return cls(response.status_code, text[:300] or response.reason_phrase)
        detail = body.get("detail", body) if isinstance(body, dict) else body
        message, lines = _describe_detail(detail)
        return cls(response.status_code, message or response.reason_phrase, lines)


def _describe_detail(detail: Any) -> tuple[str, list[str]]:
    if isinstance(detail, str):
        return detail, []
    if isinstance(detail, list):  # FastAPI's default validation answer
        items = [_describe_item(d) for d in detail]
        return (items[0] if items else ""), items[1:]
    if not isinstance(detail, dict):
        return json.dumps(detail), []
    message = str(detail.get("message") or detail.get("msg") or "")
    if not message:
        message = json.dumps(detail, default=str)[:300]
    lines: list[str] = []
    for key in ("issues", "errors"):
        listed = detail.get(key)
        if isinstance(listed, list):
            lines += [t for t in (_describe_item(i) for i in listed) if t and t != message]
    return message, lines


def _describe_item(item: Any) -> str:
    """One issue (the dataset validator's ``{severity, file, record, message, code}``) or error
    (``{field, message}``, pydantic's ``{loc, msg}``) as a line."""
    if not isinstance(item, dict):
        return str(item)
    message = str(item.get("message") or item.get("msg") or json.dumps(item, default=str))
    if "loc" in item and "message" not in item:
        loc = ".".join(str(p) for p in item["loc"] if p != "body")
        return f"{loc}: {message}"
    if item.get("file"):
        where = f"{item['file']}:{item['record']}" if item.get("record") else str(item["file"])
        severity = str(item.get("severity") or "error").upper()
        code = f" [{item['code']}]" if item.get("code") else ""
        return f"{severity} {where}: {message}{code}"
    return message


class ApiClient:
    """The service's REST API over one ``httpx.Client``.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/api/v1`` is dropped).
            Requests go to absolute URLs under it, so an injected client's own ``base_url`` does
            not matter (``TestClient`` answers any host).
        api_key: Sent as ``Authorization: Bearer <key>`` on every request.
        client: An ``httpx.Client`` to use (tests pass FastAPI's ``TestClient``); it keeps its
            own timeouts and is not closed by :meth:`close`. ``None`` creates one.
    """

    def __init__(self, base_url: str, api_key: str, *, client: httpx.Client | None = None) -> None:
        base = base_url.strip().rstrip("/")
        self.base_url = base.removesuffix(API_PREFIX).rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._owned = client is None
        self.http = client if client is not None else httpx.Client(timeout=TIMEOUT)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient:
        """From ``--server``/``--api-key`` (or the environment); ``args._http_client`` (set by
        :func:`run_client`) is injected when present.

        Raises:
            UsageError: no API key.
        """
        server = args.server or os.environ.get("BMGKD_SERVER") or DEFAULT_SERVER
        key = args.api_key or os.environ.get("BMGKD_API_KEY")
        if not key:
            raise UsageError(
                "no API key: pass --api-key KEY or set BMGKD_API_KEY "
                "(an administrator creates one with `bmgkd admin create-user NAME`)"
            )
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server {server!r}: expected an http:// or https:// URL")
        client: httpx.Client | None = getattr(args, "_http_client", None)
        return cls(server, key, client=client)

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as ``/jobs``."""
        return f"{self.base_url}{API_PREFIX}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: httpx.Timeout | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; raises :class:`ApiError` for a 4xx/5xx answer."""
        headers = {**kwargs.pop("headers", {}), **self._auth}
        if self._owned:  # an injected client keeps its own timeouts
            kwargs["timeout"] = timeout if timeout is not None else TIMEOUT
        response = self.http.request(method, self.url(path), headers=headers, **kwargs)
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        """``GET`` and return the decoded JSON."""
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        """``POST`` and return the decoded JSON."""
        return self.request("POST", path, **kwargs).json()

    @contextlib.contextmanager
    def stream(
        self, method: str, path: str, *, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed response, open in the ``with`` block; raises :class:`ApiError` on 4xx/5xx."""
        with self.http.stream(
            method, self.url(path), headers={**(headers or {}), **self._auth}
        ) as response:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            yield response

    def close(self) -> None:
        """Close the ``httpx.Client`` if this object created it."""
        if self._owned:
            self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SseEvent:
    """One Server-Sent Event (``event`` defaults to ``message``; ``data`` is the raw text)."""

    event: str
    data: str
    id: str | None = None


@dataclass
class SseState:
    last_id: str | None = None
    retry_ms: int | None = None


def iter_sse(lines: Iterable[str], state: SseState | None = None) -> Iterator[SseEvent]:
    """Parse ``text/event-stream`` lines (WHATWG rules: ``id`` persists, comments are skipped,
    an event without data is not dispatched); ``state`` records the last id and ``retry``."""
    state = state if state is not None else SseState()
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data), state.last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            state.last_id = value
        elif name == "retry" and value.isdigit():
            state.retry_ms = int(value)
