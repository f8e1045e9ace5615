"""The dashboard's HTML shells (``api/routes/pages.py``) and static files (docs/dashboard.md)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bmgkd_core.config import ARCHITECTURES, PRESETS

WEB = Path(__file__).resolve().parents[2] / "web"
STATIC = WEB / "static"
UPLOT_JS = "/static/vendor/uPlot-1.6.32.iife.min.js"
UPLOT_CSS = "/static/vendor/uPlot-1.6.32.min.css"

# The ids docs/dashboard.md promises the browser tests, per page.
CONTRACT: dict[str, tuple[str, list[str]]] = {
    "login": ("/login", ["api-key", "sign-in", "sign-in-error"]),
    "jobs": ("/", ["status-filter", "jobs-table", "new-job", "sign-out"]),
    "job_new": (
        "/jobs/new",
        [
            "dataset-file",
            "upload-dataset",
            "dataset-report",
            "dataset-select",
            "teacher-file",
            "teacher-arch",
            "teacher-classes",
            "upload-teacher",
            "teacher-report",
            "teacher-select",
            "student-arch",
            "preset",
            "image-size",
            "epochs",
            "max-steps",
            "batch-size",
            "lr",
            "optimizer",
            "device",
            "job-name",
            "preflight",
            "preflight-report",
            "submit-job",
            "submit-error",
        ],
    ),
    "job_detail": (
        "/jobs/0123456789abcdef",
        [
            "job-title",
            "job-status",
            "failure-reason",
            "job-progress",
            "job-progress-text",
            "chart-losses",
            "chart-lr",
            "chart-ap",
            "cancel-job",
            "resume-job",
            "comparison",
            "ap-retained",
            "per-class-ap",
            "start-baseline",
            "predictions",
            "score-threshold",
            "pred-sort",
            "pred-legend",
            "pred-more",
            "download-model",
            "download-metrics",
            "download-config",
        ],
    ),
    "dataset": (
        "/datasets/0123456789abcdef",
        ["dataset-name", "dataset-counts", "class-histogram"],
    ),
}


class _Page(HTMLParser):
    """Collects ids (with their tags and attributes), label targets and asset references."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.elements: dict[str, tuple[str, dict[str, str | None]]] = {}
        self.label_for: set[str] = set()
        self.assets: list[str] = []
        self.tags: list[str] = []
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(str(a["id"]))
            self.elements[str(a["id"])] = (tag, a)
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))
        for key in ("src", "href"):
            value = a.get(key)
            if value and value.startswith("/static/"):
                self.assets.append(value)
        if tag == "select":
            self._select = a.get("id")
            self.options[str(self._select)] = []
        if tag == "option" and self._select is not None:
            self.options[self._select].append(str(a.get("value")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _get(client: TestClient, url: str) -> _Page:
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return _parse(r.text)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_page_has_contract_ids(client: TestClient, name: str) -> None:
    url, ids = CONTRACT[name]
    page = _get(client, url)  # no Authorization: the shells are public, data needs the key
    missing = [i for i in ids if i not in page.ids]
    assert not missing, f"{url} lacks {missing}"
    assert "main" in page.tags
    duplicates = {i for i in page.ids if page.ids.count(i) > 1}
    assert not duplicates, f"{url} repeats ids {duplicates}"
    assert "/static/css/app.css" in page.assets
    assert "/static/js/api.js" in page.assets
    assert f"/static/js/{'login' if name == 'login' else name}.js" in page.assets


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_form_controls_are_labelled(client: TestClient, name: str) -> None:
    page = _get(client, CONTRACT[name][0])
    controls = [
        i
        for i, (tag, attrs) in page.elements.items()
        if tag in {"input", "select", "textarea"} and attrs.get("type") != "hidden"
    ]
    assert controls or name in {"jobs", "dataset"}
    unlabelled = [i for i in controls if i not in page.label_for]
    assert not unlabelled, f"{name}: no <label for> on {unlabelled}"


def test_login_page_labels_the_key_and_has_no_nav(client: TestClient) -> None:
    r = client.get("/login")
    assert re.search(r'<label for="api-key">\s*API key\s*</label>', r.text)
    page = _parse(r.text)
    assert page.elements["api-key"][1]["type"] == "password"
    assert "sign-out" not in page.ids
    assert 'data-auth="none"' in r.text


def test_jobs_page_filter_and_new_job_link(client: TestClient) -> None:
    page = _get(client, "/")
    assert page.options["status-filter"] == [
        "all",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert page.elements["new-job"] == ("a", page.elements["new-job"][1])
    assert page.elements["new-job"][1]["href"] == "/jobs/new"
    assert page.elements["sign-out"][0] == "a"
    assert page.elements["jobs-table"][0] == "table"


def test_new_job_form_shows_engine_choices_and_defaults(client: TestClient) -> None:
    page = _get(client, "/jobs/new")
    assert page.options["student-arch"] == list(ARCHITECTURES)
    assert page.options["teacher-arch"] == ["", *ARCHITECTURES]
    assert page.options["preset"] == list(PRESETS)
    assert page.options["teacher-select"][0] == ""
    assert page.options["optimizer"] == ["sgd", "adamw"]
    assert page.options["device"] == ["auto", "cpu", "cuda"]
    assert "disabled" in page.elements["preset"][1]  # until a teacher is picked
    values = {i: page.elements[i][1].get("value") for i in ("image-size", "epochs", "batch-size")}
    assert values == {"image-size": "512", "epochs": "12", "batch-size": "2"}
    assert page.elements["lr"][1]["value"] == "0.01"
    assert page.elements["max-steps"][1]["value"] == ""
    assert page.elements["dataset-file"][1]["type"] == "file"
    assert page.elements["teacher-file"][1]["type"] == "file"


def test_job_detail_loads_uplot_and_passes_the_id(client: TestClient) -> None:
    r = client.get("/jobs/abc123")
    page = _parse(r.text)
    assert UPLOT_JS in page.assets and UPLOT_CSS in page.assets
    assert 'data-job-id="abc123"' in r.text
    tag, attrs = page.elements["score-threshold"]
    assert (tag, attrs["type"], attrs["min"], attrs["max"]) == ("input", "range", "0", "1")
    assert page.options["pred-sort"] == ["misses", "name"]
    assert page.elements["job-progress"][0] == "progress"
    assert page.elements["comparison"][0] == "table"


def test_path_parameters_are_escaped(client: TestClient) -> None:
    r = client.get('/jobs/x"><img src=x onerror=alert(1)>')
    assert r.status_code == 200
    assert "<img src=x" not in r.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in r.text


def test_pages_are_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/login", "/jobs/new", "/jobs/{job_id}", "/datasets/{dataset_id}"} & set(paths)


def test_vendored_uplot_is_served(client: TestClient) -> None:
    js = client.get(UPLOT_JS)
    assert js.status_code == 200
    assert js.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    css = client.get(UPLOT_CSS)
    assert css.status_code == 200 and ".uplot" in css.text
    assert (STATIC / "vendor" / "uPlot-1.6.32.LICENSE").is_file()


def test_templates_reference_only_existing_static_files(client: TestClient) -> None:
    referenced: set[str] = set()
    for template in (WEB / "templates").rglob("*.html"):
        referenced |= set(re.findall(r"""["'](/static/[^"'?#]+)""", template.read_text()))
    for name in CONTRACT:
        referenced |= set(_get(client, CONTRACT[name][0]).assets)
    assert referenced
    for ref in sorted(referenced):
        assert (STATIC / ref.removeprefix("/static/")).is_file(), f"{ref} does not exist"
        assert client.get(ref).status_code == 200, ref


def test_js_modules_import_existing_files() -> None:
    for script in (STATIC / "js").glob("*.js"):
        for target in re.findall(r"""from\s+["'](\./[^"']+)["']""", script.read_text()):
            assert (script.parent / target).resolve().is_file(), f"{script.name} imports {target}"


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_page_scripts_look_up_only_ids_the_page_has(client: TestClient, name: str) -> None:
    """Every literal ``getElementById("x")`` / ``$("x")`` of a page's script exists on the page."""
    page = _get(client, CONTRACT[name][0])
    script = (STATIC / "js" / f"{name}.js").read_text()
    looked_up = set(re.findall(r"""(?:getElementById|\$)\(\s*["']([\w-]+)["']\s*\)""", script))
    missing = sorted(looked_up - set(page.ids))
    assert not missing, f"{name}.js looks up {missing}, absent from the page"
