"""Where the tests find GPT-2's real vocabulary, encoder.json and vocab.bpe, and how they fetch it once.

The folders looked in, in order: $GPT2_VOCAB_DIR; ../shared/gpt2-vocab beside the repository; the
downloaded model folders models/*/ of the repository; the per-user cache
($XDG_CACHE_HOME, else ~/.cache)/gpt2-tf/gpt2-vocab. A folder counts only if both files have the released
contents (their sha256 is pinned below), so a vocabulary made by train_bpe.py is never taken. If none
has them, both files are fetched from OpenAI's server into the cache by the project's checked
downloader, unless $GPT2_TF_OFFLINE is set (to anything but 0): then nothing is fetched and the tests
fail, saying where they looked. CI sets it. This module does not import TensorFlow.
"""

import glob
import hashlib
import os

from gpt2_tf.download import DEFAULT_BASE_URL, download_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OFFLINE_VARIABLE = "GPT2_TF_OFFLINE"

# The sha256 of OpenAI's files (the same for the four released sizes; tiktoken pins the same values).
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
SERVER_FOLDER = "124M"  # fetched as <base_url>/124M/<file>


class VocabNotFound(Exception):
    """No folder holds the vocabulary, and fetching it is switched off."""


def cache_dir():
    """The per-user cache folder the vocabulary is fetched into."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpt2-tf", "gpt2-vocab")


def search_folders(root=ROOT):
    """The folders looked in before the cache, in order."""
    folders = [os.environ["GPT2_VOCAB_DIR"]] if os.environ.get("GPT2_VOCAB_DIR") else []
    folders.append(os.path.normpath(os.path.join(root, "..", "shared", "gpt2-vocab")))
    folders += [path for path in sorted(glob.glob(os.path.join(root, "models", "*"))) if os.path.isdir(path)]
    return folders


def fetching_allowed():
    """False when $GPT2_TF_OFFLINE is set to anything but 0."""
    return os.environ.get(OFFLINE_VARIABLE, "") in ("", "0")


def has_file(folder, name):
    """Whether `folder/name` exists with the released contents of that file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == SHA256[name]


def holds_vocab(folder):
    """Whether `folder` has both files with their released contents."""
    return all(has_file(folder, name) for name in SHA256)


def folder_url(base_url):
    """Where the server keeps the files: `base_url`/124M/."""
    return f"{base_url.rstrip('/')}/{SERVER_FOLDER}/"


def fetch_vocab(folder, base_url=DEFAULT_BASE_URL):
    """Download the files `folder` lacks from `base_url`/124M/, checking their sha256; returns `folder`."""
    for name, sha256 in SHA256.items():
        if not has_file(folder, name):
            download_file(folder_url(base_url) + name, os.path.join(folder, name), sha256)
    return folder


def find_vocab(folders=None, cache=None, base_url=DEFAULT_BASE_URL, allow_fetch=None):
    """The first folder holding the vocabulary; else `cache`, once the files are fetched into it.

    folders: default search_folders(); cache: default cache_dir(); allow_fetch: default fetching_allowed().
    Raises VocabNotFound when fetching is not allowed, gpt2_tf.download.DownloadError when it fails.
    """
    folders = search_folders() if folders is None else list(folders)
    cache = cache_dir() if cache is None else cache
    for folder in [*folders, cache]:
        if holds_vocab(folder):
            return folder
    if not (fetching_allowed() if allow_fetch is None else allow_fetch):
        looked = "".join(f"\n  {folder}" for folder in [*folders, cache])
        raise VocabNotFound(
            f"GPT-2's encoder.json and vocab.bpe (with the released sha256) are in none of these folders:"
            f"{looked}\nand {OFFLINE_VARIABLE} is set, so they are not fetched from {folder_url(base_url)}. "
            f"Set GPT2_VOCAB_DIR to a folder that holds them, or unset {OFFLINE_VARIABLE}."
        )
    return fetch_vocab(cache, base_url)
