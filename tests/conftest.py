import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from synthetic import make_synthetic  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))

# Tiny models run faster on one thread, and tests may share the cores with other work.
import torch  # noqa: E402

torch.set_num_threads(1)
