"""Test fixtures. GPU tests take the `backend` fixture (the repository's conftest.py): once per
backend, skipped with the stated reason when no CUDA device is usable or that backend did not load."""

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # Seeded from the test's id so every failure reproduces, and different tests see different data.
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
