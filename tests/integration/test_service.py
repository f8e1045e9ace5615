"""End to end against real PostgreSQL, Redis, uvicorn and Celery worker processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from tests.integration.conftest import (
    Stack,
    follow_events,
    raccoon_root,
    tiny_train_config,
    zip_dataset,
)

pytestmark = pytest.mark.integration


def load_with_torchvision(path: Path) -> nn.Module:
    """Plain torchvision, no bmgkd import: the README's recipe for retinanet_resnet18_fpn."""
    ckpt = torch.load(path, weights_only=True)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    model = RetinaNet(
        backbone,
        num_classes=ckpt["num_classes"],
        min_size=ckpt["image_size"],
        max_size=ckpt["image_size"],
    )
    model.load_state_dict(ckpt["state_dict"])  # strict
    return model.eval()


@pytest.fixture(scope="module")
def dataset_id(stack: Stack) -> str:
    with stack.client() as c:
        r = c.post("/api/v1/datasets", files={"file": ("raccoon.zip", zip_dataset(raccoon_root()))})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["class_names"] == ["raccoon"] and body["num_images"] > 0
    return str(body["id"])


def submit(stack: Stack, dataset_id: str, num_workers: int = 0, **train: Any) -> str:
    config = tiny_train_config(**train)
    config["data"]["num_workers"] = num_workers
    with stack.client() as c:
        r = c.post(
            "/api/v1/jobs", json={"kind": "train", "dataset_id": dataset_id, "config": config}
        )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def run_flow(stack: Stack, dataset_id: str, tmp_path: Path) -> None:
    """Submit a tiny job, follow it to ``succeeded`` over SSE, download and load ``model.pt``."""
    job_id = submit(stack, dataset_id, num_workers=2)  # loader processes inside a Celery child
    with stack.client() as c:
        events = follow_events(c, job_id, timeout_s=300)
        kinds = [e for e, _ in events]
        assert kinds[-1] == "end" and events[-1][1]["status"] == "succeeded", events[-3:]
        statuses = [d["status"] for e, d in events if e == "status"]
        assert statuses[-1] == "succeeded" and "running" in statuses
        series = {name for e, d in events if e == "metrics" for name in d["series"]}
        assert {"loss", "val.AP50"} <= series
        arts = {a["name"] for a in c.get(f"/api/v1/jobs/{job_id}/artifacts").json()}
        assert {"model.pt", "metrics.json", "config.json"} <= arts
        r = c.get(f"/api/v1/jobs/{job_id}/artifacts/model.pt")
        assert r.status_code == 200
        path = tmp_path / "model.pt"
        path.write_bytes(r.content)
    model = load_with_torchvision(path)
    with torch.no_grad():
        (out,) = model([torch.rand(3, 80, 96)])
    assert set(out) == {"boxes", "scores", "labels"}


def test_train_job_runs_end_to_end_on_postgres_redis_and_a_worker(
    stack: Stack, dataset_id: str, tmp_path: Path
) -> None:
    run_flow(stack, dataset_id, tmp_path)


def test_worker_sigkill_midjob_resumes_from_checkpoint_on_restart(
    stack: Stack, dataset_id: str
) -> None:
    job_id = submit(stack, dataset_id, max_steps=40, checkpoint_every_steps=4)
    resume = stack.data_dir / "runs" / job_id / "resume.pt"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = stack.wait_status(job_id, {"running", "succeeded", "failed"}, 180)
        assert job["status"] == "running", job
        if job["step"] >= 6 and resume.is_file():
            break
        time.sleep(0.2)
    step_at_kill = job["step"]
    stack.kill_worker(stack.workers[-1])
    time.sleep(1)
    assert stack.wait_status(job_id, {"running"}, 5)["attempt"] == 1
    stack.start_worker()
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 300)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    assert job["step"] == 40
    with stack.client() as c:
        logs = [line["message"] for line in c.get(f"/api/v1/jobs/{job_id}/logs").json()["items"]]
        loss = c.get(f"/api/v1/jobs/{job_id}/metrics", params={"name": "loss"}).json()
    assert any("attempt 2" in m and "resum" in m for m in logs), logs
    steps = loss["series"]["loss"]["steps"]
    assert min(steps) < step_at_kill < max(steps) == 40  # points from both attempts are kept
    log_steps = [
        __import__("json").loads(line)["step"]
        for line in (stack.data_dir / "runs" / job_id / "log.jsonl").read_text().splitlines()
        if '"type": "step"' in line or '"type":"step"' in line
    ]
    assert sorted(set(log_steps)) == list(range(1, 41))


def test_cancel_running_job_stops_within_10s_and_keeps_resume_checkpoint(
    stack: Stack, dataset_id: str
) -> None:
    job_id = submit(stack, dataset_id, max_steps=100_000)
    deadline = time.monotonic() + 180
    while True:
        job = stack.wait_status(job_id, {"running"}, 180)
        if job["step"] >= 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with stack.client() as c:
        r = c.post(f"/api/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202, r.text
        tic = time.monotonic()
        job = stack.wait_status(job_id, {"cancelled", "failed", "succeeded"}, 10)
        elapsed = time.monotonic() - tic
    assert job["status"] == "cancelled" and job["failure_code"] == "CANCELLED", job
    assert elapsed < 10
    assert (stack.data_dir / "runs" / job_id / "resume.pt").is_file()
