import os

import pytest
from tf1_model import TINY_HPARAMS, VOCAB_DIR, write_original_model


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; run with -m slow")


@pytest.fixture(scope="session")
def vocab_dir():
    if not os.path.exists(os.path.join(VOCAB_DIR, "vocab.bpe")):
        pytest.fail(f"GPT-2 vocabulary not found in {VOCAB_DIR}; set GPT2_VOCAB_DIR")
    return VOCAB_DIR


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, vocab_dir):
    """(models_dir, model_name, weights): a small random model in the released layout."""
    models_dir = tmp_path_factory.mktemp("models")
    weights = write_original_model(str(models_dir / "tiny"), TINY_HPARAMS, seed=0)
    return str(models_dir), "tiny", weights
