import os

import pytest
import torch

# Tests are small; keep them from oversubscribing the 2-core CI machine when run with -n 2.
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // 2)))


@pytest.fixture(autouse=True)
def _quiet_matplotlib(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
