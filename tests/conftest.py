import pytest
from gpt2_vocab import VocabNotFound, find_vocab
from tf1_model import TINY_HPARAMS, write_original_model

from gpt2_tf.download import DownloadError


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; run with -m slow")


@pytest.fixture(scope="session")
def vocab_dir():
    """A folder with GPT-2's real encoder.json and vocab.bpe (tests/gpt2_vocab.py: where it is looked for)."""
    try:
        return find_vocab()
    except (VocabNotFound, DownloadError) as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)  # outside the except clause: the message alone, without a chain


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, vocab_dir):
    """(models_dir, model_name, weights): a small random model in the released layout."""
    models_dir = tmp_path_factory.mktemp("models")
    weights = write_original_model(str(models_dir / "tiny"), TINY_HPARAMS, seed=0, vocab_dir=vocab_dir)
    return str(models_dir), "tiny", weights
