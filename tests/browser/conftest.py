"""Browser tests of the dashboard (docs/dashboard.md): the real platform and headless Chromium.

``bmgkd serve`` (uvicorn, a Celery worker, the sweeper, its own Redis, SQLite) runs in a temporary
data directory for the whole session; Playwright drives Debian's ``chromium`` (found on ``PATH``;
``scripts/setup.sh`` installs it with apt-get where it can; no ``playwright install``). Without
chromium these tests FAIL, naming it; ``BMGKD_SKIP_BROWSER=1`` skips them.

Every page a test opens records console errors, uncaught page errors and 5xx responses; any of
them fails the test at teardown unless the test declared it expected (``console.allow``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import BIN, REPO, Stack, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Screenshots go to runs/screenshots (ignored) so a test run leaves the tree clean; refresh the
# README's copies with BMGKD_SCREENSHOT_DIR=docs/screenshots.
SCREENSHOTS = Path(os.environ.get("BMGKD_SCREENSHOT_DIR", REPO / "runs" / "screenshots"))
if not SCREENSHOTS.is_absolute():
    SCREENSHOTS = REPO / SCREENSHOTS
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium; a clear failure (not a skip) when it is missing."""
    if os.environ.get("BMGKD_SKIP_BROWSER") == "1":
        pytest.skip("BMGKD_SKIP_BROWSER=1: browser tests skipped")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not installed (no `chromium` on PATH): the browser tests drive Debian's "
            "chromium. Install it with `apt-get install -y chromium` (scripts/setup.sh does this "
            "when run as root or with sudo), or set BMGKD_SKIP_BROWSER=1 to skip these tests.",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "the `playwright` Python package is missing: run scripts/setup.sh (dev group)",
            pytrace=False,
        )
    return exe


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``bmgkd serve`` in a temporary data dir, with a clean environment (no BMGKD_* vars).

    The returned :class:`Stack` has ``headers`` with the ``admin`` key printed by ``serve``;
    ``platform.headers["Authorization"][7:]`` is the key itself.
    """
    tmp = tmp_path_factory.mktemp("browser-platform")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMGKD_")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    data_dir = tmp / "var"
    out = tmp / "serve.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "bmgkd"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(
        env=env, url=f"http://127.0.0.1:{port}", data_dir=data_dir, logs=tmp, procs=[proc]
    )
    try:
        deadline = time.monotonic() + 120
        key = None
        while key is None:
            assert proc.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            m = re.search(r"API key:\s+(\S+)", out.read_text(errors="replace"))
            key = m.group(1) if m else None
            time.sleep(0.3)
        stack.headers = {"Authorization": f"Bearer {key}"}
        yield stack
    finally:
        stack.stop()
        print(f"==== bmgkd serve\n{out.read_text(errors='replace')[-6000:]}")


def api_key(stack: Stack) -> str:
    return stack.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class ConsoleWatch:
    """Console errors, uncaught page errors and 5xx responses seen by one page.

    ``allow(pattern, count)`` declares up to ``count`` expected messages matching ``pattern``
    (e.g. the 401 of a deliberately wrong key); everything else fails the test at teardown.
    """

    errors: list[str] = field(default_factory=list)
    allowed: list[list[Any]] = field(default_factory=list)  # [regex, remaining count]
    tolerated: list[str] = field(default_factory=list)

    def allow(self, pattern: str, count: int = 1) -> None:
        self.allowed.append([re.compile(pattern), count])

    def record(self, message: str) -> None:
        for entry in self.allowed:
            if entry[1] > 0 and entry[0].search(message):
                entry[1] -= 1
                self.tolerated.append(message)
                return
        self.errors.append(message)


@pytest.fixture
def console() -> ConsoleWatch:
    return ConsoleWatch()


@pytest.fixture
def page(browser: Browser, platform: Stack, console: ConsoleWatch) -> Iterator[Page]:
    """A fresh browser context (1280x800) on the platform; no console errors allowed."""
    context = browser.new_context(
        viewport=VIEWPORT, base_url=platform.url, accept_downloads=True, locale="en-GB"
    )
    p = context.new_page()
    p.set_default_timeout(20_000)

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            console.record(
                f"console.error: {msg.text} ({loc.get('url', '')}:{loc.get('lineNumber', '')})"
            )

    def on_response(resp: Any) -> None:
        if resp.status >= 500:
            console.record(f"HTTP {resp.status} from {resp.request.method} {resp.url}")

    p.on("console", on_console)
    p.on("pageerror", lambda exc: console.record(f"pageerror: {exc}"))
    p.on("response", on_response)
    yield p
    p.wait_for_timeout(300)  # let late console messages arrive
    context.close()
    if console.tolerated:
        print("expected browser errors:", *console.tolerated, sep="\n  ")
    assert not console.errors, "browser errors on the page:\n  " + "\n  ".join(console.errors)


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot to ``$BMGKD_SCREENSHOT_DIR/<name>.png`` (runs/screenshots)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, key: str) -> None:
    """Sign in through ``/login`` and wait for the jobs page."""
    page.goto("/login")
    page.fill("#api-key", key)
    page.click("#sign-in")
    page.wait_for_url(re.compile(r"/(\?.*)?$"))
    page.wait_for_selector("table#jobs-table")
