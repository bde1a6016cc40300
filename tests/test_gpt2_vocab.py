"""Where the tests look for GPT-2's vocabulary, and its one-time fetch (from a server on 127.0.0.1)."""

import os

import pytest
from gpt2_vocab import SHA256, VocabNotFound, cache_dir, fetching_allowed, find_vocab, search_folders
from test_download import ModelServer

from gpt2_tf.download import DownloadError, download_file

NAMES = list(SHA256)


@pytest.fixture
def released(vocab_dir):
    """{file name: bytes} of the real encoder.json and vocab.bpe."""
    files = {}
    for name in NAMES:
        with open(os.path.join(vocab_dir, name), "rb") as f:
            files[name] = f.read()
    return files


@pytest.fixture
def serve():
    """serve({file name: bytes}): a server on 127.0.0.1 with the files where OpenAI keeps them (124M/)."""
    servers = []

    def start(files):
        servers.append(ModelServer({f"/124M/{name}": data for name, data in files.items()}))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def spoil(data):
    """`data` with its last byte changed."""
    return data[:-1] + (b"x" if data[-1:] != b"x" else b"y")


def write_files(folder, files):
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return str(folder)


def test_folders_are_searched_in_order(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    for folder in ("models/124M", "models/mine", "models/355M"):
        (root / folder).mkdir(parents=True)
    (root / "models" / "README.md").write_text("not a folder")
    monkeypatch.setenv("GPT2_VOCAB_DIR", "/somewhere/vocab")
    assert search_folders(str(root)) == [
        "/somewhere/vocab",
        str(tmp_path / "shared" / "gpt2-vocab"),
        str(root / "models" / "124M"), str(root / "models" / "355M"), str(root / "models" / "mine"),
    ]
    monkeypatch.delenv("GPT2_VOCAB_DIR")
    assert search_folders(str(root))[0] == str(tmp_path / "shared" / "gpt2-vocab")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "gpt2-tf" / "gpt2-vocab")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "gpt2-tf" / "gpt2-vocab")


def test_only_a_folder_with_both_released_files_counts(tmp_path, released, monkeypatch):
    monkeypatch.setenv("GPT2_TF_OFFLINE", "1")
    trained = write_files(tmp_path / "mine", {"encoder.json": b'{"a": 0}', "vocab.bpe": b"#version: 0.2\n"})
    half = write_files(tmp_path / "half", {"encoder.json": released["encoder.json"]})
    damaged = write_files(tmp_path / "damaged", dict(released, **{"vocab.bpe": spoil(released["vocab.bpe"])}))
    real = write_files(tmp_path / "real", released)
    cache = str(tmp_path / "cache")
    assert find_vocab([trained, half, damaged, real], cache) == real
    with pytest.raises(VocabNotFound):
        find_vocab([trained, half, damaged], cache)
    write_files(cache, released)
    assert find_vocab([trained, real], cache) == real
    assert find_vocab([trained, half], cache) == cache


def test_offline_switch_fails_and_says_where_it_looked(tmp_path, monkeypatch):
    empty, cache = str(tmp_path / "empty"), str(tmp_path / "cache")
    os.mkdir(empty)
    monkeypatch.delenv("GPT2_TF_OFFLINE", raising=False)
    assert fetching_allowed()
    monkeypatch.setenv("GPT2_TF_OFFLINE", "0")
    assert fetching_allowed()
    monkeypatch.setenv("GPT2_TF_OFFLINE", "1")
    assert not fetching_allowed()
    # The address would refuse the connection; with the switch on it is not even tried.
    with pytest.raises(VocabNotFound) as error:
        find_vocab([empty], cache, base_url="http://127.0.0.1:9")
    message = str(error.value)
    assert f"\n  {empty}\n  {cache}\n" in message
    assert "GPT2_TF_OFFLINE is set, so they are not fetched from http://127.0.0.1:9/124M/." in message
    assert "GPT2_VOCAB_DIR" in message
    assert not os.path.exists(cache)


def test_fetched_once_into_the_cache(tmp_path, released, serve, monkeypatch):
    server = serve(released)
    cache = str(tmp_path / "cache" / "gpt2-tf" / "gpt2-vocab")
    assert find_vocab([], cache, base_url=server.url + "/", allow_fetch=True) == cache
    assert [path for path, _ in server.requests] == ["/124M/encoder.json", "/124M/vocab.bpe"]
    assert sorted(os.listdir(cache)) == NAMES
    for name in NAMES:
        with open(os.path.join(cache, name), "rb") as f:
            assert f.read() == released[name]
    server.reset_counts()
    monkeypatch.setenv("GPT2_TF_OFFLINE", "1")  # the cache is found: nothing to fetch
    assert find_vocab([], cache, base_url=server.url) == cache
    assert server.requests == []


def test_a_wrong_file_is_refused_and_removed(tmp_path, released, serve):
    server = serve(dict(released, **{"vocab.bpe": spoil(released["vocab.bpe"])}))
    cache = str(tmp_path / "cache")
    with pytest.raises(DownloadError, match=r"124M/vocab.bpe: its sha256 is [0-9a-f]{64}, expected "
                       + SHA256["vocab.bpe"] + r" \(removed .*vocab.bpe\)"):
        find_vocab([], cache, base_url=server.url, allow_fetch=True)
    assert sorted(os.listdir(cache)) == ["encoder.json"]  # checked and kept; no vocab.bpe, no .part

    server.files["/124M/vocab.bpe"] = released["vocab.bpe"]
    server.reset_counts()
    assert find_vocab([], cache, base_url=server.url, allow_fetch=True) == cache
    assert [path for path, _ in server.requests] == ["/124M/vocab.bpe"]


def test_download_file_checks_the_sha256(tmp_path, released, serve):
    server = serve(released)
    path = str(tmp_path / "new" / "encoder.json")
    assert download_file(f"{server.url}/124M/encoder.json", path, SHA256["encoder.json"], quiet=True) == path
    with open(path, "rb") as f:
        assert f.read() == released["encoder.json"]
    with pytest.raises(DownloadError, match="expected " + SHA256["vocab.bpe"]):
        download_file(f"{server.url}/124M/encoder.json", str(tmp_path / "vocab.bpe"), SHA256["vocab.bpe"],
                      quiet=True)
    assert os.listdir(tmp_path) == ["new"]
