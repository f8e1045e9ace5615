"""The README's first command's platform (`bmgkd serve`): SQLite, a Redis it starts itself, one
worker and the sweeper, with no BMGKD_DATABASE_URL / BMGKD_BROKER_URL set."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, REPO, Stack, free_port, raccoon_root, zip_dataset
from tests.integration.test_service import run_flow

pytestmark = pytest.mark.integration


def test_embedded_default_serve_runs_a_job_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMGKD_")}
    env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    out = tmp_path / "serve.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "bmgkd"), "serve", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(
        env=env,
        url=f"http://127.0.0.1:{port}",
        data_dir=tmp_path / "var",
        logs=tmp_path,
        procs=[proc],
    )
    try:
        deadline = time.monotonic() + 120
        key = None
        while key is None:
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            m = re.search(r"API key:\s+(\S+)", out.read_text())
            key = m.group(1) if m else None
            time.sleep(0.3)
        text = out.read_text()
        assert f"dashboard: http://127.0.0.1:{port}/" in text
        assert (
            "sqlite" in (stack.data_dir / "bmgkd.db").suffix
            or (stack.data_dir / "bmgkd.db").is_file()
        )
        stack.headers = {"Authorization": f"Bearer {key}"}
        with stack.client() as c:
            r = c.post(
                "/api/v1/datasets", files={"file": ("raccoon.zip", zip_dataset(raccoon_root()))}
            )
            assert r.status_code == 201, r.text
            dataset_id = r.json()["id"]
        run_flow(stack, dataset_id, tmp_path)
    finally:
        stack.stop()
        print(out.read_text()[-4000:])
    assert proc.returncode == 0
