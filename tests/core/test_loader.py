"""Loader: reproducible, resumable and worker-count independent batches."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from bmgkd_core.data import (
    DetectionDataset,
    EpochSampler,
    SeededDataset,
    build_loader,
    build_transforms,
    collate_fn,
    load_dataset,
)
from bmgkd_core.data.loader import derive_seed
from bmgkd_core.errors import ConfigError, DataError

Flat = list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def train_set(tiny_coco: Path) -> DetectionDataset:
    transforms = build_transforms(train=True, image_size=64, multi_scale=(48, 80), hflip_prob=0.5)
    return load_dataset(tiny_coco, "train", transforms=transforms)


def _epoch(loader: DataLoader[Any]) -> list[Flat]:
    """Every batch as ``[(image_id, image, boxes, labels), ...]``."""
    batches = []
    for images, targets in loader:
        batches.append(
            [
                (t["image_id"], image, t["boxes"], t["labels"])
                for image, t in zip(images, targets, strict=True)
            ]
        )
    return batches


def _same(a: list[Flat], b: list[Flat]) -> bool:
    if [len(x) for x in a] != [len(x) for x in b]:
        return False
    pairs = [(p, q) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True)]
    return all(
        p[0] == q[0] and all(torch.equal(u, v) for u, v in zip(p[1:], q[1:], strict=True))
        for p, q in pairs
    )


def _loader(dataset: DetectionDataset, **kwargs: Any) -> tuple[DataLoader[Any], EpochSampler]:
    options: dict[str, Any] = {"batch_size": 2, "train": True, "num_workers": 0, "seed": 7}
    return build_loader(dataset, **(options | kwargs))


def test_build_loader_same_seed_gives_identical_batches(train_set: DetectionDataset) -> None:
    first, first_sampler = _loader(train_set)
    second, second_sampler = _loader(train_set)
    for epoch in (0, 1):
        first_sampler.set_epoch(epoch)
        second_sampler.set_epoch(epoch)
        assert _same(_epoch(first), _epoch(second))
    other, _ = _loader(train_set, seed=8)
    first_sampler.set_epoch(0)
    assert not _same(_epoch(first), _epoch(other))


def test_build_loader_augmentations_differ_between_epochs(train_set: DetectionDataset) -> None:
    loader, sampler = _loader(train_set)
    sizes = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        sizes |= {tuple(item[1].shape) for batch in _epoch(loader) for item in batch}
    assert len(sizes) > 1  # multi-scale draws differ across epochs


def test_build_loader_set_start_gives_exactly_the_tail(train_set: DetectionDataset) -> None:
    loader, sampler = _loader(train_set)
    sampler.set_epoch(3)
    full = _epoch(loader)
    resumed, resumed_sampler = _loader(train_set)  # a fresh process would build a new loader
    resumed_sampler.set_epoch(3)
    resumed_sampler.set_start(1 * 2)  # one batch of two done
    assert len(resumed) == 2
    assert _same(_epoch(resumed), full[1:])
    resumed_sampler.set_epoch(4)  # the skip applies to one iteration only
    sampler.set_epoch(4)
    assert _same(_epoch(resumed), _epoch(loader))


def test_build_loader_zero_and_two_workers_agree(train_set: DetectionDataset) -> None:
    serial, serial_sampler = _loader(train_set, num_workers=0)
    parallel, parallel_sampler = _loader(train_set, num_workers=2)
    for epoch in (0, 1):  # the second epoch reuses the persistent workers
        serial_sampler.set_epoch(epoch)
        parallel_sampler.set_epoch(epoch)
        assert _same(_epoch(serial), _epoch(parallel))


def test_build_loader_train_drops_last_and_eval_keeps_order(tiny_coco: Path) -> None:
    train, _ = build_loader(
        load_dataset(tiny_coco, "train"), batch_size=4, train=True, num_workers=0, seed=0
    )
    assert [len(b) for b in _epoch(train)] == [4]
    val_set = load_dataset(tiny_coco, "val")
    val, _ = build_loader(val_set, batch_size=3, train=False, num_workers=0, seed=0)
    batches = _epoch(val)
    assert [len(b) for b in batches] == [3, 1]
    assert [item[0] for b in batches for item in b] == [r.image_id for r in val_set.records]


def test_build_loader_sets_worker_and_pinning_options(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "train")
    loader, sampler = build_loader(
        dataset, batch_size=2, train=True, num_workers=2, seed=0, device_is_cuda=True
    )
    assert loader.persistent_workers
    assert loader.pin_memory
    assert loader.drop_last
    assert loader.sampler is sampler
    assert loader.collate_fn is collate_fn
    serial, _ = build_loader(dataset, batch_size=2, train=False, num_workers=0, seed=0)
    assert not serial.persistent_workers
    assert not serial.pin_memory
    assert not serial.drop_last


def test_build_loader_too_few_images_for_a_batch_raises(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "val")
    with pytest.raises(DataError, match="batch_size=8"):
        build_loader(dataset, batch_size=8, train=True, num_workers=0, seed=0)
    with pytest.raises(ConfigError, match="batch_size"):
        build_loader(dataset, batch_size=0, train=False, num_workers=0, seed=0)


def test_epoch_sampler_order_depends_only_on_seed_and_epoch() -> None:
    walked = EpochSampler(10, shuffle=True, seed=3)
    for epoch in range(3):
        walked.set_epoch(epoch)
        keys = list(walked)
    fresh = EpochSampler(10, shuffle=True, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == keys
    assert sorted(k - 20 for k in keys) == list(range(10))  # keys are epoch * n + index
    fresh.set_epoch(1)
    assert list(fresh) != keys


def test_epoch_sampler_set_start_skips_once() -> None:
    sampler = EpochSampler(10, shuffle=True, seed=0)
    full = list(sampler)
    sampler.set_start(4)
    assert len(sampler) == 6
    assert list(sampler) == full[4:]
    assert len(sampler) == 10
    assert list(sampler) == full
    with pytest.raises(ConfigError, match="got 11"):
        sampler.set_start(11)


def test_epoch_sampler_without_shuffle_is_identity() -> None:
    sampler = EpochSampler(5, shuffle=False, seed=9)
    sampler.set_epoch(2)
    assert list(sampler) == [10, 11, 12, 13, 14]


def test_seeded_dataset_restores_caller_rng_state(train_set: DetectionDataset) -> None:
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    wrapped = SeededDataset(train_set, seed=0)
    first = wrapped[len(train_set) + 1]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    again = wrapped[len(train_set) + 1]
    assert torch.equal(first[0], again[0])


def test_collate_fn_returns_image_and_target_lists() -> None:
    batch = [(torch.zeros(3, 4, 4), {"image_id": 1}), (torch.ones(3, 5, 5), {"image_id": 2})]
    images, targets = collate_fn(batch)
    assert [tuple(i.shape) for i in images] == [(3, 4, 4), (3, 5, 5)]
    assert [t["image_id"] for t in targets] == [1, 2]


def test_derive_seed_is_stable_and_accepts_negative_values() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert 0 <= derive_seed(-5, 0) < 2**64
