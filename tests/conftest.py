import os
import subprocess
import sys

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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """(work folder, run folder): the demo's model, trained on real text (the Python standard library,
    with its own 2,048-token vocabulary) by `make demo`'s recipe, once for the slow tests that need a
    trained model."""
    work = tmp_path_factory.mktemp("demo")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "gpt2_tf.cli.demo", "--work_dir", str(work)], cwd=root, check=True,
                   capture_output=True)
    return work, str(work / "checkpoint" / "demo")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """(model, hparams, weights): the tiny model loaded, and its weights as written."""
    from gpt2_tf.checkpoint import load_model

    models_dir, name, weights = tiny_model
    model, hparams = load_model(os.path.join(models_dir, name))
    return model, hparams, weights


def small_file_system(folder, size, read_only=False):
    """Mount a tmpfs of `size` (e.g. "24m") at `folder`, read-only if asked; False where mounting is not
    allowed (not root, or a container without the right)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                            capture_output=True)
    return result.returncode == 0


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder in which nothing can be written: a read-only file system for root (for whom
    permissions do not count), else a folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        os.chmod(folder, 0o500)
        yield folder
        os.chmod(folder, 0o700)
        return
    if not small_file_system(folder, "1m", read_only=True):
        pytest.skip("cannot make a read-only folder here (root, and mounting is not allowed)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """mount(size): a folder on a file system of that size (e.g. "24m"), to fill up; unmounted after
    the test. Skips where mounting is not allowed (it needs root)."""
    mounted = []

    def mount(size):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if not small_file_system(folder, size):
            pytest.skip("cannot mount a small file system here (it needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
