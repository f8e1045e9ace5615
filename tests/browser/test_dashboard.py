"""The dashboard in a real browser against ``bmgkd serve`` (contract: docs/dashboard.md).

Screenshots land in ``runs/screenshots/`` (``BMGKD_SCREENSHOT_DIR=docs/screenshots`` refreshes
the README's copies).
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from tests.browser.conftest import ConsoleWatch, api_key, shot, sign_in
from tests.integration.conftest import Stack, raccoon_root, tiny_train_config, zip_dataset
from tests.integration.test_service import load_with_torchvision
from tests.synth import make_coco_dataset

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.integration]

JOB_TIMEOUT_S = 240
TERMINAL = ("succeeded", "failed", "cancelled")


def broken_archive(tmp_path: Path) -> Path:
    """A COCO zip whose ``annotations/train.json`` has a box far outside its image."""
    root = make_coco_dataset(tmp_path / "broken", n_train=4, n_val=2, num_classes=2)
    train = root / "annotations" / "train.json"
    doc = json.loads(train.read_text())
    doc["annotations"][0]["bbox"] = [5000, 5000, 20, 20]
    train.write_text(json.dumps(doc))
    path = tmp_path / "broken.zip"
    path.write_bytes(zip_dataset(root))
    return path


def _focused_ids_while_tabbing(page: Page, presses: int = 12) -> list[str]:
    ids = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        ids.append(page.evaluate("() => document.activeElement ? document.activeElement.id : ''"))
    return ids


def test_login_is_keyboard_usable(page: Page, platform: Stack) -> None:
    page.goto("/")
    page.wait_for_url(re.compile(r"/login"))  # unauthenticated visits go to the sign-in page
    page.wait_for_selector("input#api-key")
    assert page.get_by_label("API key").count() == 1, "#api-key has no 'API key' label"
    assert page.locator("main").count() == 1, "no <main> landmark"
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    ids = _focused_ids_while_tabbing(page)
    assert "api-key" in ids, f"Tab never reached #api-key; focus went {ids}"
    assert "sign-in" in ids[ids.index("api-key") :], f"Tab: #api-key then #sign-in expected: {ids}"
    # focus is visible: the focused button looks different from the unfocused one
    style = (
        "e => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth,"
        " s.outlineColor, s.boxShadow, s.borderColor, s.backgroundColor].join('|') }"
    )
    button = page.locator("#sign-in")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    unfocused = button.evaluate(style)
    page.focus("#api-key")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "sign-in"
    assert button.evaluate(style) != unfocused, "no visible focus indicator on #sign-in"
    # sign in with the keyboard only
    page.focus("#api-key")
    page.keyboard.type(api_key(platform))
    page.keyboard.press("Enter")
    page.wait_for_selector("table#jobs-table")


def _progress_sample(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """() => {
          const p = document.querySelector('progress#job-progress');
          const s = document.querySelector('#job-status');
          const c = document.querySelector('#chart-losses');
          const word = s && s.textContent.match(/succeeded|failed|cancelled|running|queued/i);
          return {value: p ? p.value : null,
                  status: s ? s.dataset.status || (word ? word[0].toLowerCase() : '') : '',
                  words: s ? s.textContent.trim() : '',
                  points: c && c.dataset.points ? Number(c.dataset.points) : 0};
        }"""
    )
    return result


def _column(page: Page, table: str, row: str, header: str) -> str:
    """Text of ``row``'s cell under the column headed ``header`` in ``table``."""
    heads = [
        t.strip() for t in page.locator(f"{table} tr").first.locator("th, td").all_inner_texts()
    ]
    assert header in heads, f"{table}: no column {header!r} in {heads}"
    cells = page.locator(f"{table} {row}").locator("th, td").all_inner_texts()
    assert len(cells) == len(heads), f"{table} {row}: cells {cells} vs headers {heads}"
    return cells[heads.index(header)].strip()


def test_dashboard_end_to_end(
    page: Page, platform: Stack, console: ConsoleWatch, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # -- sign in: a wrong key first, then the right one
    page.goto("/login")
    page.wait_for_selector("input#api-key")
    shot(page, "login")
    console.allow(r"status of 401", 2)  # the rejected key's request
    page.fill("#api-key", "bmgkd_this-key-does-not-exist")
    page.click("#sign-in")
    expect(page.locator("#sign-in-error")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_contain_text("That API key was not accepted")
    assert "/login" in page.url
    page.fill("#api-key", api_key(platform))
    page.click("#sign-in")
    page.wait_for_selector("table#jobs-table")

    # -- new job: a broken archive, then the raccoon set
    page.click("a#new-job")
    page.wait_for_url(re.compile(r"/jobs/new$"))
    console.allow(r"status of 422", 1)  # the rejected upload
    page.set_input_files("#dataset-file", str(broken_archive(tmp_path)))
    page.click("#upload-dataset")
    issues = page.locator("#dataset-report li.issue")
    expect(issues.first).to_be_visible(timeout=60_000)
    texts = issues.all_inner_texts()
    assert any("annotations/train.json" in t for t in texts), texts
    shot(page, "job_new")

    archive = tmp_path / "raccoon.zip"
    archive.write_bytes(zip_dataset(raccoon_root()))
    page.set_input_files("#dataset-file", str(archive))
    page.click("#upload-dataset")
    option = page.locator("#dataset-select option", has_text="raccoon")
    expect(option).to_have_count(1, timeout=120_000)
    dataset_id = option.get_attribute("value")
    assert dataset_id, "the dataset option has no value"
    page.select_option("#dataset-select", dataset_id)
    expect(page.locator("#dataset-report li.issue")).to_have_count(0)

    # -- a tiny train job (no teacher)
    page.select_option("#teacher-select", "")
    page.select_option("#student-arch", "retinanet_resnet18_fpn")
    page.fill("#image-size", "96")
    page.fill("#max-steps", "30")
    page.fill("#batch-size", "2")
    page.select_option("#device", "cpu")
    page.select_option("#optimizer", "adamw")
    page.fill("#lr", "0.001")
    page.fill("#job-name", "browser-e2e")

    page.click("#submit-job")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"), timeout=30_000)
    job_id = page.url.rstrip("/").rsplit("/", 1)[1]

    # -- the job page follows it live
    samples = []
    started = time.monotonic()
    deadline = started + JOB_TIMEOUT_S
    while True:
        sample = _progress_sample(page)
        samples.append(sample)
        if sample["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, f"job not finished in {JOB_TIMEOUT_S}s: {sample}"
        page.wait_for_timeout(200)
    final = samples[-1]
    print(f"job {job_id}: {final['status']} in {time.monotonic() - started:.0f} s")
    if final["status"] != "succeeded":
        with platform.client() as c:
            job = c.get(f"/api/v1/jobs/{job_id}").json()
        raise AssertionError(
            f"job {job_id} ended {final['words']!r} (#failure-reason: "
            f"{page.locator('#failure-reason').inner_text()!r}); "
            f"{job['failure_code']}: {(job['failure_message'] or '')[-600:]}"
        )
    values = [s["value"] for s in samples if s["value"] is not None]
    print("progress values seen:", sorted(set(values)))
    assert values, "progress#job-progress never found"
    assert max(values) > values[0], f"progress never increased: {sorted(set(values))}"
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-losses')?.dataset.points || 0) > 0"
    )
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-ap')?.dataset.points || 0) > 0"
    )
    expect(page.locator("#job-title")).to_contain_text("browser-e2e")

    # comparison: the student row has an AP
    expect(page.locator("table#comparison tr[data-row=student]")).to_be_visible(timeout=30_000)
    page.wait_for_function(
        """() => { const t = document.querySelector('table#comparison');
                   const r = t && t.querySelector('tr[data-row=student]');
                   return r && /\\d/.test(r.textContent); }"""
    )
    ap = _column(page, "table#comparison", "tr[data-row=student]", "AP")
    assert re.search(r"\d", ap), f"student AP cell: {ap!r}"

    # predictions viewer
    page.locator("#predictions").scroll_into_view_if_needed()
    expect(page.locator("#predictions .pred-image").first).to_be_visible(timeout=30_000)
    assert page.locator("#predictions .pred-image").count() >= 1
    expect(page.locator("#pred-legend")).to_be_visible()
    shot(page, "job_detail")

    # the model download loads with plain torchvision
    with page.expect_download(timeout=60_000) as info:
        page.click("#download-model")
    download = info.value
    assert download.failure() is None, download.failure()
    path = tmp_path / "downloaded-model.pt"
    download.save_as(path)
    model = load_with_torchvision(path)
    with torch.no_grad():
        (out,) = model([torch.rand(3, 80, 96)])
    assert set(out) == {"boxes", "scores", "labels"}

    # -- the jobs page lists it
    page.goto("/")
    row = page.locator(f'table#jobs-table tr[data-job-id="{job_id}"]')
    expect(row.locator("span.status")).to_have_attribute("data-status", "succeeded")
    expect(row.locator("a.job-link")).to_have_attribute("href", re.compile(f"/jobs/{job_id}$"))
    expect(row).to_contain_text("retinanet_resnet18_fpn")
    expect(row).to_contain_text("raccoon")
    page.select_option("#status-filter", "failed")
    expect(row).to_have_count(0)
    page.select_option("#status-filter", "succeeded")
    expect(row).to_have_count(1)
    page.select_option("#status-filter", "all")
    expect(row).to_have_count(1)
    shot(page, "jobs")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    shot(page, "jobs_narrow")
    assert overflow <= 1, f"the jobs page scrolls sideways by {overflow}px at 390px wide"
    page.set_viewport_size({"width": 1280, "height": 800})

    # -- the dataset page
    page.goto(f"/datasets/{dataset_id}")
    bar = page.locator('#class-histogram .bar[data-class="raccoon"]')
    expect(bar).to_have_count(1)
    assert int(bar.get_attribute("data-count") or 0) > 0
    expect(page.locator("#dataset-name")).to_contain_text("raccoon")
    expect(page.locator("#dataset-counts")).to_contain_text(re.compile(r"\d"))
    shot(page, "dataset")


# --- page-load timing with 200 jobs -------------------------------------------------------------


def _dataset_id(platform: Stack) -> str:
    """The raccoon set of ``admin`` (uploaded by the end-to-end test, else uploaded here)."""
    with platform.client() as c:
        for ds in c.get("/api/v1/datasets").json():
            if ds["class_names"] == ["raccoon"]:
                return str(ds["id"])
        r = c.post("/api/v1/datasets", files={"file": ("raccoon.zip", zip_dataset(raccoon_root()))})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def _insert_jobs(platform: Stack, dataset_id: str, n: int, template: dict[str, Any] | None) -> None:
    """Insert ``n`` finished jobs of ``admin`` straight into the SQLite database."""
    from api.db.base import make_engine, make_session_factory, utcnow
    from api.db.models import Dataset, Job, JobKind, JobStatus
    from api.db.repo import UserRepo
    from api.jobspec import build_job_config
    from api.schemas import JobCreate

    engine = make_engine(f"sqlite:///{platform.data_dir / 'bmgkd.db'}")
    try:
        with make_session_factory(engine)() as session:
            user = UserRepo(session).by_name("admin")
            assert user is not None
            if template is not None:
                config, result = template["config"], template["result"]
            else:
                dataset = session.get(Dataset, dataset_id)
                assert dataset is not None
                req = JobCreate(
                    kind=JobKind.train, dataset_id=dataset_id, config=tiny_train_config()
                )
                config = build_job_config(req, dataset, None, None)
                ap = {"AP": 0.123, "AP50": 0.3, "AP75": 0.1}
                result = {
                    "metrics": {"bbox": ap},
                    "summary": {f"val.{k}": v for k, v in ap.items()},
                }
            now = utcnow()
            statuses = [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled]
            for i in range(n):
                status = statuses[i % 3]
                at = now - timedelta(days=1, minutes=i)
                session.add(
                    Job(
                        user_id=user.id,
                        kind=JobKind.train,
                        status=status,
                        name=f"bulk-{i:03d}",
                        dataset_id=dataset_id,
                        config=config,
                        queue="cpu",
                        progress=1.0 if status == JobStatus.succeeded else 0.4,
                        epoch=1,
                        step=30 if status == JobStatus.succeeded else 12,
                        total_steps=30,
                        attempt=1,
                        failure_code={"failed": "DATA_ERROR", "cancelled": "CANCELLED"}.get(status),
                        failure_message=None if status == JobStatus.succeeded else "synthetic row",
                        result=result if status == JobStatus.succeeded else None,
                        created_at=at,
                        updated_at=at,
                        started_at=at,
                        finished_at=at + timedelta(seconds=30),
                    )
                )
            session.commit()
    finally:
        engine.dispose()


def _timed(page: Page, url: str, ready: str, *, selector: bool = True) -> float:
    tic = time.perf_counter()
    page.goto(url, wait_until="load")
    if selector:
        page.wait_for_selector(ready, state="attached", timeout=10_000)
    else:
        page.wait_for_function(ready, timeout=10_000)
    return time.perf_counter() - tic


def test_pages_load_within_a_second_with_200_jobs(
    page: Page, platform: Stack, console: ConsoleWatch
) -> None:
    dataset_id = _dataset_id(platform)
    with platform.client() as c:
        done = c.get("/api/v1/jobs", params={"status": "succeeded", "limit": 1}).json()["items"]
    real = done[0] if done else None
    _insert_jobs(platform, dataset_id, 200, real)
    with platform.client() as c:
        jobs = c.get("/api/v1/jobs", params={"limit": 1}).json()
        assert jobs["total"] >= 200
        if real is None:
            real = c.get("/api/v1/jobs", params={"status": "succeeded", "limit": 1}).json()
            real = real["items"][0]
            console.allow(r"status of 404", 10)  # a synthetic job has no artifacts
    assert real is not None
    sign_in(page, api_key(platform))

    pages = {
        "jobs": ("/", "table#jobs-table tr[data-job-id]", True),
        "job_new": ("/jobs/new", f'#dataset-select option[value="{dataset_id}"]', True),
        "job_detail": (
            f"/jobs/{real['id']}",
            "() => { const s = document.querySelector('#job-status'); return !!s &&"
            " (s.dataset.status === 'succeeded' || /succeeded/i.test(s.textContent)) }",
            False,
        ),
        "dataset": (f"/datasets/{dataset_id}", '#class-histogram .bar[data-class="raccoon"]', True),
    }
    times: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(3):
        for name, (url, ready, is_selector) in pages.items():
            times[name].append(_timed(page, url, ready, selector=is_selector))
    page.goto("/")
    page.wait_for_selector("table#jobs-table tr[data-job-id]")
    rows = page.locator("table#jobs-table tr[data-job-id]").count()
    print(f"jobs table rows rendered: {rows} (of {jobs['total']} jobs)")
    assert rows == min(100, jobs["total"])
    while page.locator("#jobs-more").is_visible():  # "Show more" pages through every job
        page.click("#jobs-more")
        page.wait_for_function(
            f"document.querySelectorAll('table#jobs-table tr[data-job-id]').length > {rows}"
        )
        rows = page.locator("table#jobs-table tr[data-job-id]").count()
    assert rows == jobs["total"]
    for name, ts in times.items():
        print(f"page load {name:10s}: " + ", ".join(f"{t * 1000:.0f} ms" for t in ts))
    slow = {name: max(ts) for name, ts in times.items() if max(ts) >= 1.0}
    assert not slow, f"pages slower than 1 s (navigation to load + content): {slow}"
    assert rows > 0
