"""One intra-op torch thread for a whole test module, restored afterwards.

The CI machine has 2 cores shared by several jobs: intra-op threading of many small ops under
contention is 10-40x slower than one thread. A test module opts in by importing the fixture (pytest
registers fixtures found in a test module's namespace, imported ones included):

    from torch_threads import one_thread  # noqa: F401  (autouse: this module runs single-threaded)
"""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
