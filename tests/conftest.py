import os

import pytest
import torch

# The CI machine has 2 cores; a thread per core keeps runs predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = 0.125  # width multiplier for tiny rfpool models (8 stem channels)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
