"""Checking an uploaded teacher in a child process: the API process never imports torch.

Runs ``python -m bmgkd_core.cli inspect-teacher --json`` (``weights_only=True`` load, strict key
and shape check against the built architecture) with a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TeacherCheckError", "check_teacher_file"]

_PREFIX = "bmgkd inspect-teacher: error: "


class TeacherCheckError(ValueError):
    """The file is not a loadable teacher; the message names the problem (and keys)."""


@dataclass(frozen=True)
class TeacherCheck:
    arch: str
    class_names: list[str]
    report: dict[str, Any]


def check_teacher_file(
    path: Path, *, arch: str | None, class_names: list[str] | None, timeout_s: float
) -> TeacherCheck:
    cmd = [sys.executable, "-m", "bmgkd_core.cli", "inspect-teacher", "--checkpoint", str(path)]
    cmd += ["--json"]
    if arch:
        cmd += ["--arch", arch]
    if class_names:
        cmd += ["--classes", json.dumps(class_names)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TeacherCheckError(
            f"checking the checkpoint took longer than {timeout_s:g} s"
        ) from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln[len(_PREFIX) :] for ln in lines if ln.startswith(_PREFIX)]
        if errors or proc.returncode == 2:
            idx = next((i for i, ln in enumerate(lines) if ln.startswith(_PREFIX)), 0)
            text = "\n".join([*(errors[:1] or lines[:1]), *lines[idx + 1 : idx + 30]])
            raise TeacherCheckError(text.strip() or "the checkpoint could not be loaded")
        raise RuntimeError(f"teacher check crashed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    return TeacherCheck(
        arch=str(report["arch"]), class_names=list(report["class_names"] or []), report=report
    )
