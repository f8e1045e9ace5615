"""FastAPI dependencies: settings, DB session, queue, the current user, and load-or-404 helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.db.models import Dataset, Job, Teacher, User
from api.db.repo import UserRepo
from api.queue import TaskQueue
from api.settings import Settings

__all__ = [
    "CurrentUser",
    "QueueDep",
    "SessionDep",
    "SettingsDep",
    "get_owned",
    "unprocessable",
]


async def get_app_settings(request: Request) -> Settings:
    """The settings given to ``create_app`` (else ``get_settings()``); no per-request work."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


QueueDep = Annotated[TaskQueue, Depends(get_queue)]

_bearer = HTTPBearer(auto_error=False, description="an API key from `bmgkd admin create-user`")


def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = UserRepo(session).user_for_key(credentials.credentials)
    if user is None:
        raise HTTPException(
            401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


T = TypeVar("T", Dataset, Teacher, Job)


def get_owned(session: Session, model: type[T], obj_id: str, user: User) -> T:
    """The user's object, or 404 (also for other users' objects: no existence leak)."""
    obj = session.get(model, obj_id)
    if obj is None or obj.user_id != user.id:
        raise HTTPException(404, f"no {model.__tablename__[:-1]} with id {obj_id!r}")
    return obj


def unprocessable(field: str, message: str, **extra: Any) -> HTTPException:
    """A 422 whose detail names the field (or file) at fault."""
    return HTTPException(422, {"field": field, "message": f"{field}: {message}", **extra})
