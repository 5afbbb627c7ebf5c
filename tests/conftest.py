import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI must be reproducible: by default hypothesis derives its examples from each test's name.
# Explore with fresh random examples: HYPOTHESIS_PROFILE=explore python -m pytest
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_checkpoint() -> Path:
    return ROOT / "models" / "digits_cnn_w4a4.ckpt"


@pytest.fixture(scope="session")
def digits_pot_checkpoint() -> Path:
    return ROOT / "models" / "digits_cnn_w4a4_pot.ckpt"


@pytest.fixture(scope="session")
def digits_lsq_checkpoint() -> Path:
    return ROOT / "models" / "digits_cnn_w4a4_lsq.ckpt"
