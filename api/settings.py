"""Service settings: one typed ``Settings`` read from ``BMGKD_*`` environment variables.

Never instantiated at import time: use :func:`get_settings` (cached), and override it in tests
through ``app.dependency_overrides[get_settings]`` or by passing ``Settings`` to ``create_app``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything the API, the worker and the sweeper need to know about their surroundings.

    ``database_url`` defaults to SQLite under ``data_dir``; ``broker_url`` to a local Redis.
    ``data_dir`` holds ``datasets/``, ``teachers/``, ``runs/<job_id>/`` and ``tmp/``; the API and
    the workers must see the same ``data_dir`` (a shared volume in docker-compose).
    """

    model_config = SettingsConfigDict(
        env_prefix="BMGKD_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = "redis://127.0.0.1:6379/0"
    web_dir: Path = _REPO_ROOT / "web"
    # Queues: jobs on device "cuda"/"auto" go to the GPU queue, "cpu" jobs to the CPU queue.
    gpu_queue: str = "gpu"
    cpu_queue: str = "cpu"
    # Uploads
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_unpacked_bytes: int = Field(default=4 * 1024**3, ge=1024)
    max_archive_files: int = Field(default=50_000, ge=1)
    max_teacher_bytes: int = Field(default=2 * 1024**3, ge=1024)
    teacher_check_timeout_s: float = Field(default=300.0, gt=0)
    # Jobs
    job_max_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_stale_s: float = Field(default=60.0, gt=0)
    progress_interval_s: float = Field(default=2.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    queued_resend_s: float = Field(default=600.0, gt=0)
    # API
    events_poll_s: float = Field(default=1.0, gt=0)
    page_size_max: int = Field(default=200, ge=1)
    metrics_token: str | None = None
    # In-flight API requests that may touch the DB (the rest wait, without a thread or a DB
    # connection). Keep it below the DB pool (10 + 20 overflow) and the thread pool (40).
    max_concurrent_requests: int = Field(default=24, ge=1, le=1000)

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if not value.startswith(
            ("redis://", "rediss://", "redis+socket://", "amqp://", "memory://")
        ):
            raise ValueError(f"BMGKD_BROKER_URL: unsupported scheme in {value!r}")
        return value

    @model_validator(mode="after")
    def _fill_database(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'bmgkd.db'}"
        if not self.database_url.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"BMGKD_DATABASE_URL: only sqlite and postgresql are supported, "
                f"got {self.database_url.split(':', 1)[0]!r}"
            )
        if self.heartbeat_stale_s <= self.heartbeat_interval_s:
            raise ValueError(
                "BMGKD_HEARTBEAT_STALE_S must exceed BMGKD_HEARTBEAT_INTERVAL_S "
                f"({self.heartbeat_stale_s} <= {self.heartbeat_interval_s})"
            )
        return self

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def teachers_dir(self) -> Path:
        return self.data_dir / "teachers"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        for d in (self.datasets_dir, self.teachers_dir, self.runs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
