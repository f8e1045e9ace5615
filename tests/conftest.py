"""Shared fixtures: tiny synthetic datasets (no downloads) and the optional real datasets."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) without pythonpath
    sys.path.insert(0, str(REPO_ROOT))

from tests.synth import make_coco_dataset, write_voc_copy  # noqa: E402

SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny COCO-layout dataset (6 train / 4 val images, 3 classes); READ-ONLY, shared.

    Use ``tiny_coco_copy`` to get a copy you may modify.
    """
    return make_coco_dataset(tmp_path_factory.mktemp("tiny_coco"))


@pytest.fixture(scope="session")
def tiny_voc(tiny_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_coco`` converted to the Pascal VOC layout (no classes.txt); READ-ONLY, shared."""
    return write_voc_copy(tiny_coco, tmp_path_factory.mktemp("tiny_voc"))


@pytest.fixture
def tiny_coco_copy(tiny_coco: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of ``tiny_coco``."""
    return Path(shutil.copytree(tiny_coco, tmp_path / "coco"))


@pytest.fixture
def tiny_voc_copy(tiny_voc: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of ``tiny_voc``."""
    return Path(shutil.copytree(tiny_voc, tmp_path / "voc"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``<repo>/../shared/datasets`` (raccoon, coco128); skips the test when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not available at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def sample_dataset() -> Path:
    """The committed sample set ``samples/raccoon-mini`` (COCO layout)."""
    return REPO_ROOT / "samples" / "raccoon-mini"
