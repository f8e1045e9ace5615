"""The Celery wiring: every option the house style requires, set in ``create_celery``."""

from __future__ import annotations

from api.settings import Settings
from worker.celery_app import create_celery


def test_create_celery_sets_reliability_options() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_max_seconds=3600)  # type: ignore[call-arg]
    app = create_celery(settings)
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.result_backend is None
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] > 3600
    assert {q.name for q in conf.task_queues} == {"gpu", "cpu"}


def test_create_celery_registers_explicit_task_names() -> None:
    app = create_celery(Settings(broker_url="memory://"))  # type: ignore[call-arg]
    app.loader.import_default_modules()
    import worker.tasks  # noqa: F401

    assert {"train.run", "distill.run", "eval.run"} <= set(app.tasks)
