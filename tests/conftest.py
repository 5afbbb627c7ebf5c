import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_checkpoint() -> Path:
    return ROOT / "models" / "digits_cnn_w4a4.ckpt"


@pytest.fixture(scope="session")
def digits_lsq_checkpoint() -> Path:
    return ROOT / "models" / "digits_cnn_w4a4_lsq.ckpt"
