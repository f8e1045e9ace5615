"""Import boundaries that import-linter cannot see (package __init__ side effects)."""

from __future__ import annotations

import subprocess
import sys


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
