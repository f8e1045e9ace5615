"""Reproducible, resumable, worker-parallel data loading.

The sampler yields keys ``epoch * n + index``; its permutation depends only on ``(seed, epoch)``.
:class:`SeededDataset` decodes a key and runs the sample (decoding and random transforms) under a
forked torch generator seeded from ``(seed, epoch, index)``. Augmentations therefore do not depend
on the number of workers, on batch composition, or on whether the run was resumed mid-epoch with
:meth:`EpochSampler.set_start`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from bmgkd_core.errors import ConfigError, DataError

__all__ = ["EpochSampler", "SeededDataset", "build_loader", "collate_fn", "derive_seed"]

_MASK64 = (1 << 64) - 1
Sample = tuple[Tensor, dict[str, Any]]
Batch = tuple[list[Tensor], list[dict[str, Any]]]


def _splitmix64(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*values: int) -> int:
    """Hash integers (any sign) into a 64-bit seed; equal inputs give equal seeds everywhere."""
    state = 0
    for value in values:
        state = _splitmix64(state ^ (value & _MASK64))
    return state


class EpochSampler(Sampler[int]):
    """Sampler whose order depends only on ``(seed, epoch)``; yields ``epoch * n + index`` keys.

    Call :meth:`set_epoch` before each epoch. To resume mid-epoch, call :meth:`set_start` with
    the number of samples already consumed (``batches_done * batch_size``): the next iteration,
    and only the next one, skips them, so it yields exactly the tail of the un-skipped epoch.
    ``len()`` counts the samples the next iteration yields.

    Args:
        n: Dataset length.
        shuffle: Random permutation per epoch (training) or ``0..n-1`` (evaluation).
        seed: Run seed.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0) -> None:
        """Create the sampler at epoch 0; see the class docstring for the arguments."""
        if n < 0:
            raise ConfigError(f"EpochSampler: n must be >= 0, got {n}")
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields."""
        if epoch < 0:
            raise ConfigError(f"EpochSampler.set_epoch: epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of the next iteration (resume mid-epoch)."""
        if not 0 <= start <= self.n:
            raise ConfigError(
                f"EpochSampler.set_start: start must be in [0, {self.n}], got {start}"
            )
        self._start = start

    def order(self) -> list[int]:
        """Return the full index order of the current epoch (no skip applied)."""
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3))
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        """Yield the keys of the current epoch, after any pending :meth:`set_start` skip."""
        start, self._start = self._start, 0
        base = self.epoch * self.n
        return iter([base + index for index in self.order()[start:]])

    def __len__(self) -> int:
        """Return the number of keys the next iteration yields."""
        return self.n - self._start


class SeededDataset(Dataset[Sample]):
    """Wraps a dataset so that each sample runs under its own seed.

    ``wrapped[epoch * n + index]`` returns ``dataset[index]`` computed with torch's global
    generator (and Python's ``random``) seeded from ``(seed, epoch, index)``; the caller's
    generator states are restored afterwards.

    Args:
        dataset: Map-style dataset of ``(image, target)`` pairs.
        seed: Run seed.
    """

    def __init__(self, dataset: Dataset[Sample], *, seed: int) -> None:
        """Wrap ``dataset``; see the class docstring for the arguments."""
        self.dataset = dataset
        self.seed = seed
        self.n = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Return the length of the wrapped dataset."""
        return self.n

    def __getitem__(self, key: int) -> Sample:
        """Return the sample of key ``epoch * n + index`` under its own seed."""
        epoch, index = divmod(key, self.n)
        sample_seed = derive_seed(self.seed, epoch, index)
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)


def collate_fn(batch: Sequence[Sample]) -> Batch:
    """Collate ``(image, target)`` pairs into ``(list of images, list of targets)``."""
    return [image for image, _ in batch], [target for _, target in batch]


def build_loader(
    dataset: Dataset[Sample],
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    seed: int,
    device_is_cuda: bool = False,
) -> tuple[DataLoader[Sample], EpochSampler]:
    """Build the DataLoader of a split and the sampler that drives it.

    Training shuffles (per ``(seed, epoch)``) and drops the last incomplete batch; evaluation
    keeps file order and every sample. Batches are ``(list[Tensor], list[dict])``. Workers persist
    across epochs when ``num_workers > 0``; memory is pinned when ``device_is_cuda``.

    Args:
        dataset: Map-style dataset of ``(image, target)`` pairs.
        batch_size: Images per batch.
        train: Training (shuffle, drop last) or evaluation order.
        num_workers: Worker processes (0: load in the main process).
        seed: Run seed; with the epoch it fixes order and augmentations.
        device_is_cuda: Pin host memory for faster copies to the GPU.

    Returns:
        ``(loader, sampler)``; call ``sampler.set_epoch(epoch)`` before each epoch and
        ``sampler.set_start(batches_done * batch_size)`` when resuming mid-epoch.

    Raises:
        ConfigError: ``batch_size < 1`` or ``num_workers < 0``.
        DataError: a training split has fewer images than one batch.
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(
            f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}"
        )
    wrapped = SeededDataset(dataset, seed=seed)
    if train and len(wrapped) < batch_size:
        raise DataError(
            f"the training split has {len(wrapped)} images, fewer than batch_size={batch_size}; "
            "no full batch can be formed"
        )
    sampler = EpochSampler(len(wrapped), shuffle=train, seed=seed)
    loader = DataLoader(
        wrapped,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device_is_cuda,
        persistent_workers=num_workers > 0,
        # A private generator: creating an iterator must not consume the global torch RNG,
        # or a resumed run would draw different random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(derive_seed(seed, 0, 0x10AD)),
    )
    return loader, sampler
