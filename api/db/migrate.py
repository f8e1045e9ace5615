"""Apply Alembic migrations programmatically (start-up, ``bmgkd admin migrate``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["alembic_config", "migrated_session_factory", "upgrade"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind ``engine`` to ``revision`` (idempotent)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def migrated_session_factory(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """An engine on ``url``, brought to the latest migration, and its session factory."""
    from api.db.base import make_engine, make_session_factory

    engine = make_engine(url)
    upgrade(engine)
    return engine, make_session_factory(engine)
