"""``bmgkd admin ...`` and ``bmgkd serve``: plugin commands of the ``bmgkd`` CLI (entry-point
group ``bmgkd.commands``), so the engine's CLI never imports service code."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser("admin", help="service administration (users, keys, migrations)")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    cu = asub.add_parser("create-user", help="create a user and print its first API key once")
    cu.add_argument("name")
    cu.set_defaults(handler=_create_user)
    ck = asub.add_parser("create-key", help="print a new API key for an existing user")
    ck.add_argument("name")
    ck.set_defaults(handler=_create_key)
    mg = asub.add_parser("migrate", help="apply database migrations (idempotent)")
    mg.set_defaults(handler=_migrate)

    serve = sub.add_parser(
        "serve",
        help="run the platform locally: API + one worker + sweeper (+ an embedded Redis and "
        "SQLite unless BMGKD_BROKER_URL / BMGKD_DATABASE_URL are set)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", help="BMGKD_DATA_DIR (default ./var)")
    serve.set_defaults(handler=_serve)


def _session() -> Session:
    from api.db.migrate import migrated_session_factory
    from api.settings import get_settings

    settings = get_settings()
    settings.ensure_dirs()
    return migrated_session_factory(settings.database_url)[1]()


def _create_user(args: argparse.Namespace) -> int:
    from api.db.repo import UserRepo

    with _session() as session:
        try:
            _, key = UserRepo(session).create_user(args.name)
            session.commit()
        except IntegrityError:
            print(f"bmgkd admin: error: user {args.name!r} already exists", file=sys.stderr)
            return 2
    print(key)
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from api.db.repo import UserRepo

    with _session() as session:
        repo = UserRepo(session)
        user = repo.by_name(args.name)
        if user is None:
            print(f"bmgkd admin: error: no user {args.name!r}", file=sys.stderr)
            return 2
        key = repo.create_key(user)
        session.commit()
    print(key)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    with _session():
        pass
    print("database is at the latest migration")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from api.embedded import serve

    return serve(host=args.host, port=args.port, data_dir=args.data_dir)
