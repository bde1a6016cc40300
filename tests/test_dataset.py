"""load_dataset, .npz files and the Sampler, checked against small re-implementations of the original."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_tf import dataset
from gpt2_tf.dataset import DatasetError, Sampler, list_files, load_dataset
from gpt2_tf.encoder import get_encoder
from gpt2_tf.token_files import read_tokens, save_tokens

SEPARATOR = "<|endoftext|>"


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


# ---------------------------------------------------------------------------------------------------
# The original algorithms (nshepperd's load_dataset, the Sampler), written as the oracles.


def original_load_dataset(enc, paths, combine, encoding="utf-8"):
    token_chunks = []
    raw_text = ""
    for path in paths:
        if path.endswith(".npz"):
            with np.load(path) as npz:
                for item in npz.files:
                    token_chunks.append(npz[item])
        else:
            with open(path, encoding=encoding) as fp:
                raw_text += fp.read()
            if len(raw_text) >= combine:
                token_chunks.append(np.stack(enc.encode(raw_text)))
                raw_text = ""
            else:
                raw_text += SEPARATOR
    if raw_text:
        token_chunks.append(np.stack(enc.encode(raw_text)))
    return token_chunks


def separated_load_dataset(enc, paths, combine, encoding="utf-8"):
    """The same grouping, with each file encoded alone and separated by the <|endoftext|> token."""
    token_chunks, tokens, raw_length = [], [], 0
    for path in paths:
        if path.endswith(".npz"):
            with np.load(path) as npz:
                token_chunks.extend(npz[item] for item in npz.files)
            continue
        with open(path, encoding=encoding) as fp:
            text = fp.read()
        tokens += enc.encode_with_eot(text)
        raw_length += len(text)
        if raw_length >= combine:
            token_chunks.append(tokens)
            tokens, raw_length = [], 0
        else:
            tokens.append(enc.eot_token)
            raw_length += len(SEPARATOR)
    if raw_length:
        token_chunks.append(tokens)
    return token_chunks


def original_binary_search(f, lo, hi):
    if f(lo) or not f(hi):
        return None
    while hi > lo + 1:
        mid = (lo + hi) // 2
        if f(mid):
            hi = mid
        else:
            lo = mid
    return hi


class OriginalSampler:
    def __init__(self, chunks, seed=None):
        self.chunks = chunks
        self.total_size = sum(chunk.shape[0] for chunk in chunks)
        self.boundaries = [0]
        for i in range(len(chunks)):
            self.boundaries.append(self.boundaries[-1] + chunks[i].shape[0])
        self.rs = np.random.RandomState(seed=seed)

    def sample(self, length):
        assert length < self.total_size // len(self.chunks)
        while True:
            index = self.rs.randint(0, self.total_size - length - 1)
            i = original_binary_search(lambda j: self.boundaries[j] > index,  # noqa: B023 (called at once)
                                       0, len(self.boundaries) - 1) - 1
            if self.boundaries[i + 1] > index + length:
                within_chunk = index - self.boundaries[i]
                return self.chunks[i][within_chunk:within_chunk + length]


# ---------------------------------------------------------------------------------------------------
# load_dataset against the oracles.

PIECES = ["Hello", " world", ".", " ", "  ", "\n", "\r\n", "\r", "\t", "é", "中文", "😀", "'s", "'T", "42",
          SEPARATOR, "<|", "endoftext", "|>", "\u3000", "don't", "!!", "x"]
documents = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


def write_files(directory, texts):
    paths = []
    for i, text in enumerate(texts):
        path = os.path.join(directory, f"doc{i:02d}.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        paths.append(path)
    return paths


def as_lists(chunks):
    return [np.asarray(chunk).tolist() for chunk in chunks]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(documents, min_size=1, max_size=5), combine=st.integers(1, 120),
       piece_size=st.integers(1, 12), block_size=st.integers(1, 9), literal=st.booleans())
def test_load_dataset_matches_the_original(enc, monkeypatch, texts, combine, piece_size, block_size, literal):
    monkeypatch.setattr(dataset, "BLOCK_SIZE", block_size)  # decode across block boundaries
    with tempfile.TemporaryDirectory() as directory:
        paths = write_files(directory, texts)
        oracle = original_load_dataset if literal else separated_load_dataset
        expected = as_lists(oracle(enc, paths, combine))
        if not "".join(texts):
            with pytest.raises(DatasetError, match="empty"):
                load_dataset(enc, paths, combine, literal_endoftext=literal, fast=False, progress=False)
            return
        got = load_dataset(enc, paths, combine, literal_endoftext=literal, fast=False, progress=False,
                           piece_size=piece_size)
        assert as_lists(got) == expected
        assert all(chunk.dtype == np.uint16 for chunk in got)


def test_load_dataset_fast_path_threads_and_processes_give_the_same_chunks(enc, tmp_path):
    source = open(dataset.__file__, encoding="utf-8").read()
    texts = [source, "Short one.", "Ünïcödé <|endoftext|> text 你好。" * 30, source[:5000] + "\r\n" * 7]
    paths = write_files(tmp_path, texts)
    expected = as_lists(separated_load_dataset(enc, paths, 8000))
    for fast, jobs in [(False, 1), (True, 1), (True, 2), (False, 2)]:
        chunks = load_dataset(enc, paths, 8000, fast=fast, jobs=jobs, progress=False, piece_size=300)
        assert as_lists(chunks) == expected, (fast, jobs)


def test_npz_inputs_are_appended_as_they_are(enc, tmp_path):
    # The original wrote int64 arrays; they are read as they are, in stored order, without combining.
    np.savez(tmp_path / "b_old.npz", np.array([1, 2, 3], dtype=np.int64), np.array([4, 5], dtype=np.int64))
    (tmp_path / "a.txt").write_text("small")
    (tmp_path / "c.txt").write_text("and more text")
    paths = list_files(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a.txt", "b_old.npz", "c.txt"]
    for literal, oracle in [(True, original_load_dataset), (False, separated_load_dataset)]:
        got = load_dataset(enc, str(tmp_path), 10, literal_endoftext=literal, progress=False)
        assert as_lists(got) == as_lists(oracle(enc, paths, 10))
        assert got[0].dtype == np.int64 and got[0].tolist() == [1, 2, 3]


def test_save_npz_writes_what_numpy_and_the_original_loader_read(tmp_path):
    chunks = [np.array([50256, 0, 1], dtype=np.int64), np.arange(1000, dtype=np.int32)]
    path = save_tokens(tmp_path / "data", chunks)
    assert path.endswith("data.npz") and os.listdir(tmp_path) == ["data.npz"]
    with np.load(path) as npz:
        assert npz.files == ["arr_0", "arr_1"]
        assert npz["arr_0"].dtype == np.uint16 and npz["arr_0"].tolist() == [50256, 0, 1]
        assert npz["arr_1"].tolist() == list(range(1000))
    first = open(path, "rb").read()
    save_tokens(tmp_path / "again.npz", chunks)
    assert open(tmp_path / "again.npz", "rb").read() == first  # no timestamps: same tokens, same bytes


def test_save_npz_leaves_nothing_behind_on_error(tmp_path):
    with pytest.raises(ValueError):
        save_tokens(tmp_path / "data.npz", [np.arange(10), np.array(["not", "tokens"])])
    assert os.listdir(tmp_path) == []
    with pytest.raises(DatasetError, match="does not exist"):
        save_tokens(tmp_path / "missing" / "data.npz", [np.arange(10)])


def test_list_files_order_is_sorted_and_recursive(tmp_path):
    for name in ["b/z.txt", "b/a.txt", "a.txt", "c/d/e.txt", "c.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    relative = [os.path.relpath(p, tmp_path) for p in list_files(str(tmp_path))]
    assert relative == ["a.txt", "b/a.txt", "b/z.txt", "c.txt", "c/d/e.txt"]  # sorted by path
    relative = [os.path.relpath(p, tmp_path) for p in list_files(str(tmp_path / "**" / "*.txt"))]
    assert relative == ["a.txt", "b/a.txt", "b/z.txt", "c.txt", "c/d/e.txt"]
    assert list_files(str(tmp_path / "b")) == [str(tmp_path / "b" / "a.txt"), str(tmp_path / "b" / "z.txt")]


class Payload:
    """An object whose unpickling creates a file: loading must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_npz_with_python_objects_is_refused(enc, tmp_path):
    marker = str(tmp_path / "unpickled")
    np.savez(tmp_path / "evil.npz", np.array([Payload(marker), 1], dtype=object))
    with pytest.raises(DatasetError, match="pickled Python objects"):
        read_tokens(tmp_path / "evil.npz")
    with pytest.raises(DatasetError, match="pickled Python objects"):
        load_dataset(enc, str(tmp_path / "evil.npz"), progress=False)
    assert not os.path.exists(marker)


def test_npz_that_is_not_tokens_is_refused(enc, tmp_path):
    np.savez(tmp_path / "floats.npz", np.zeros(3))
    with pytest.raises(DatasetError, match="not a 1-D array of token ids"):
        read_tokens(tmp_path / "floats.npz")
    np.savez(tmp_path / "big.npz", np.array([1, 70000]))
    with pytest.raises(DatasetError, match="outside 0..50256"):
        load_dataset(enc, str(tmp_path / "big.npz"), progress=False)
    (tmp_path / "junk.npz").write_text("not a zip file")
    with pytest.raises(DatasetError, match="junk.npz"):
        read_tokens(tmp_path / "junk.npz")


def test_input_errors_name_the_problem(enc, tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="no files match this pattern"):
        list_files(str(tmp_path / "*.txt"))
    with pytest.raises(DatasetError, match="no files in this folder"):
        list_files(str(tmp_path))
    with pytest.raises(DatasetError, match="no such file"):
        list_files(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ünïcödé ".encode() * 10 + b"\xc3(")
    monkeypatch.setattr(dataset, "BLOCK_SIZE", 7)  # the offset is counted across blocks
    with pytest.raises(DatasetError, match=r"bad.txt: not valid utf-8 at byte 120 .*--errors replace"):
        load_dataset(enc, str(bad), progress=False)
    chunks = load_dataset(enc, str(bad), errors="replace", progress=False)
    assert enc.decode(chunks[0]).endswith("ünïcödé \ufffd(<|endoftext|>")
    latin = load_dataset(enc, str(bad), encoding="latin-1", progress=False)
    assert enc.decode(latin[0]).startswith("Ã¼nÃ¯cÃ¶dÃ©")
    with pytest.raises(DatasetError, match="unknown encoding"):
        load_dataset(enc, str(bad), encoding="no-such-codec", progress=False)


def test_list_files_errors_leave_naming_the_path_to_the_caller(enc, tmp_path):
    # gpt2_tf/cli/train_loop.py's load_chunks puts "dataset <path>: " in front of load_dataset's message.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "blob").write_bytes(b"\x7fELF\0\0")
    expected = {"missing.txt": "no such file or folder",
                "*.md": "no files match this pattern",
                "empty": "no files in this folder (hidden files and __pycache__ folders are not read)",
                "binary": "no text files in this folder (skipped 1 file holding NUL bytes or misnamed as "
                          "token files)",
                "empty.txt": "no text: the input is empty"}
    for name, message in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(DatasetError) as error:
            load_dataset(enc, path, progress=False)
        assert f"dataset {path}: {error.value}" == f"dataset {path}: {message}"
    # Several inputs: each message names its input, once.
    with pytest.raises(DatasetError) as error:
        load_dataset(enc, [str(tmp_path / "empty.txt"), str(tmp_path / "missing.txt")], progress=False)
    assert str(error.value) == f"{tmp_path / 'missing.txt'}: no such file or folder"


def make_source_tree(root):
    """A folder as a checked-out project looks: real files, and a .git, a __pycache__ and a binary file."""
    files = {"a.py": "print('a')\n", "sub/b.py": "def b():\n    return 2\n", "notes.txt": "Some notes.",
             ".git/index": b"DIRC\0\0\0\2binary index", ".git/HEAD": "ref: refs/heads/main\n",
             ".hidden.txt": "hidden text", "__pycache__/a.cpython-312.pyc": b"\xcb\r\r\n\0\0\0\0code",
             "sub/__pycache__/b.cpython-312.pyc": b"\xcb\r\r\n\0\0\0\0more",
             "logo.png": b"\x89PNG\r\n\x1a\n\0\0"}
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())


def test_walking_a_folder_skips_hidden_pycache_and_binary_files(enc, tmp_path):
    make_source_tree(tmp_path / "src")
    src = tmp_path / "src"
    skipped = []
    files = list_files(str(src), skipped=skipped)
    assert files == [str(src / "a.py"), str(src / "notes.txt"), str(src / "sub" / "b.py")]
    assert skipped == [str(src / "logo.png")]  # hidden files and __pycache__ are left out, not counted
    skipped = []
    assert list_files(str(src / "**"), skipped=skipped) == files  # a pattern too; each file once
    assert skipped == [str(src / "logo.png"), str(src / "__pycache__" / "a.cpython-312.pyc"),
                       str(src / "sub" / "__pycache__" / "b.cpython-312.pyc")]
    # Files named explicitly are read as given.
    assert list_files(str(src / ".git" / "index")) == [str(src / ".git" / "index")]
    assert dataset.list_inputs([str(src / "logo.png"), str(src), str(src / "a.py")]) == [
        str(src / "logo.png")] + files
    # What train.py gets: load_dataset of the folder encodes the real files only.
    assert as_lists(load_dataset(enc, str(src), progress=False)) == as_lists(
        load_dataset(enc, files, progress=False))
    # Text with NUL bytes in UTF-16 is text; a file invalid in the encoding is still an error.
    (src / "wide.txt").write_text("wide text", encoding="utf-16")
    assert str(src / "wide.txt") in list_files(str(src), encoding="utf-16")
    assert str(src / "wide.txt") not in list_files(str(src))
    (src / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin.txt: not valid utf-8 at byte 3"):
        load_dataset(enc, str(src), progress=False)


def test_files_that_are_not_npz_files_say_so(enc, tmp_path):
    np.save(tmp_path / "array.npy", np.arange(5))
    os.rename(tmp_path / "array.npy", tmp_path / "renamed.npz")
    with pytest.raises(DatasetError, match=r"renamed.npz: not an .npz file: it is a single .npy array"):
        read_tokens(tmp_path / "renamed.npz")
    (tmp_path / "text.npz").write_text("just some text\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(enc, str(tmp_path / "text.npz"), progress=False)
    message = "not an .npz file: it is not a zip archive, as .npz files are"
    assert str(error.value) == f"{tmp_path / 'text.npz'}: {message}"
    np.savez(tmp_path / "empty.npz")  # an empty zip archive is an .npz file without arrays
    assert read_tokens(tmp_path / "empty.npz") == []


def test_loading_npz_files_shows_no_encoding_bar(enc, tmp_path, capsys):
    np.savez(tmp_path / "a.npz", np.arange(100, dtype=np.uint16))
    np.savez(tmp_path / "b.npz", np.arange(50, dtype=np.uint16))
    chunks = load_dataset(enc, str(tmp_path), progress=True)
    assert [len(chunk) for chunk in chunks] == [100, 50]
    assert capsys.readouterr().err == ""
    (tmp_path / "c.txt").write_text("text to encode")
    load_dataset(enc, str(tmp_path), progress=True)
    assert "Encoding" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# The Sampler.


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8), length=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_sampler_draws_the_original_windows(sizes, length, seed):
    chunks, start = [], 0
    for size in sizes:
        chunks.append(np.arange(start, start + size))
        start += size
    ours = Sampler(chunks, seed=seed)
    try:
        ours.sample(length)
    except ValueError as e:
        assert str(e).startswith(f"dataset too small for {length}-token windows: it has {sum(sizes)} tokens")
        return  # the original asserts, loops forever or fails inside numpy here
    ours = Sampler(chunks, seed=seed)
    theirs = OriginalSampler(chunks, seed=seed)
    for _ in range(20):
        assert ours.sample(length).tolist() == theirs.sample(length).tolist()
    assert ours.rs.randint(1 << 30) == theirs.rs.randint(1 << 30)


def test_sampler_errors_and_state():
    with pytest.raises(ValueError, match="dataset too small for 10-token windows: it has 0 tokens"):
        Sampler([]).sample(10)
    with pytest.raises(ValueError, match="too small for 10-token windows: it has 15 tokens in 3 chunks"):
        Sampler([np.arange(5)] * 3).sample(10)
    with pytest.raises(ValueError, match="too small"):
        Sampler([np.arange(11)]).sample(10)  # the original fails inside numpy's randint here
    sampler = Sampler([np.arange(1000), np.arange(500)], seed=3)
    sampler.sample(64)
    state = sampler.rs.get_state()
    first = [sampler.sample(64).tolist() for _ in range(5)]
    sampler.rs.set_state(state)
    assert [sampler.sample(64).tolist() for _ in range(5)] == first
    window = sampler.sample(64)
    assert window.base is not None  # a view, as in the original
