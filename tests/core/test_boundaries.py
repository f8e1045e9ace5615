"""Import boundaries that import-linter cannot see (package __init__ side effects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.synth import make_coco_dataset


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_config_import_does_not_load_torch() -> None:
    out = _run("import sys, bmgkd_core, bmgkd_core.config; print('torch' in sys.modules)")
    assert out == "False"


def test_engine_import_does_not_load_service_packages() -> None:
    code = (
        "import sys, bmgkd_core.cli, bmgkd_core.train.loop; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'celery', 'starlette', 'redis') "
        "if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_lazy_exports_resolve() -> None:
    assert _run("import bmgkd_core; print(bmgkd_core.fit.__name__)") == "fit"


def test_validator_runs_without_torch(tmp_path: Path) -> None:
    root = make_coco_dataset(tmp_path / "coco", n_train=2, n_val=1)
    code = (
        "import json, sys\n"
        "from bmgkd_core.data.validate import validate_dataset\n"
        f"report = validate_dataset({str(root)!r})\n"
        "loaded = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "print(json.dumps({'report': report.to_dict(), 'loaded': loaded}))"
    )
    out = json.loads(_run(code))
    report = out["report"]
    assert report["ok"], report["issues"]
    assert report["format"] == "coco"
    assert report["splits"]["train"]["images"] == 2
    assert report["splits"]["val"]["images"] == 1
    assert out["loaded"] == []


def test_data_package_import_does_not_load_torch() -> None:
    code = (
        "import sys, bmgkd_core.data; "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_api_app_import_and_build_does_not_load_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import api.main, api.cli_admin, api.cli_client\n"
        "from api.settings import Settings\n"
        f"app = api.main.create_app(Settings(data_dir={str(tmp_path)!r}, broker_url='memory://'))\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'worker') if m in sys.modules))"
    )
    assert _run(code) == "[]"
