"""Token files bigger than memory: encode.py writing as a stream, .npz members and nanoGPT's .bin files
memory-mapped, and what the loaders say about damaged or changing files."""

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from cli_checks import frameworks_imported

from gpt2_tf import dataset, token_files
from gpt2_tf.dataset import DatasetError, Sampler, encode_dataset, load_dataset
from gpt2_tf.encoder import get_encoder
from gpt2_tf.token_files import read_tokens, save_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the quick brown fox jumps over the lazy dog. Ünïcödé, 12345 digits, emoji 🎉 and\n"
         "  spaces   at   random  ")


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


@pytest.fixture
def corpus(tmp_path):
    """A folder of five text files of different sizes."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rs = np.random.RandomState(0)
    for i in range(5):
        words = WORDS.split(" ")
        text = " ".join(words[j] for j in rs.randint(0, len(words), 300 * (i + 1)))
        (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    return str(folder)


def as_bin(chunks, eot=50256):
    """What a .bin output holds: the chunks one after another, each ending with <|endoftext|>."""
    return np.concatenate([c if c[-1] == eot else np.append(c, eot) for c in chunks])


def encode(vocab_dir, corpus, out, **kwargs):
    return encode_dataset(corpus, str(out), os.path.basename(vocab_dir), os.path.dirname(vocab_dir),
                          combine=2000, quiet=True, **kwargs)


def test_streamed_outputs_hold_the_tokens_of_load_dataset(vocab_dir, enc, corpus, tmp_path, monkeypatch):
    chunks = load_dataset(enc, corpus, combine=2000, progress=False)
    assert len(chunks) > 2
    # The in-memory writer of the same chunks gives the same bytes: nothing is lost or reordered.
    expected = open(save_tokens(tmp_path / "expected.npz", chunks), "rb").read()
    encode(vocab_dir, corpus, tmp_path / "compressed.npz")
    assert (tmp_path / "compressed.npz").read_bytes() == expected
    # A chunk bigger than the memory spool goes through a temporary file, in blocks: the same bytes.
    monkeypatch.setattr(token_files, "SPOOL_BYTES", 1000)
    monkeypatch.setattr(token_files, "BLOCK_TOKENS", 77)
    encode(vocab_dir, corpus, tmp_path / "spooled.npz")
    assert (tmp_path / "spooled.npz").read_bytes() == expected
    assert sorted(os.listdir(tmp_path)) == ["compressed.npz", "corpus", "expected.npz", "spooled.npz"]

    encode(vocab_dir, corpus, tmp_path / "stored.npz", compress=False)
    encode(vocab_dir, corpus, tmp_path / "flat.bin")
    for name in ("compressed.npz", "stored.npz"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            methods = {info.compress_type for info in archive.infolist()}
        assert methods == {zipfile.ZIP_DEFLATED if name == "compressed.npz" else zipfile.ZIP_STORED}
        with np.load(tmp_path / name) as npz:  # numpy's reader and the original loader
            assert npz.files == [f"arr_{i}" for i in range(len(chunks))]
            for i, chunk in enumerate(chunks):
                assert npz[f"arr_{i}"].dtype == np.uint16
                np.testing.assert_array_equal(npz[f"arr_{i}"], chunk)
    # nanoGPT reads its train.bin as np.memmap(path, dtype=np.uint16, mode="r").
    flat = np.memmap(tmp_path / "flat.bin", dtype=np.uint16, mode="r")
    assert sum(c[-1] != 50256 for c in chunks) > 0  # chunks that end with a file's end, not a separator
    np.testing.assert_array_equal(flat, as_bin(chunks))


def test_stored_members_and_bin_files_are_memory_mapped(vocab_dir, enc, corpus, tmp_path):
    encode(vocab_dir, corpus, tmp_path / "compressed.npz")
    encode(vocab_dir, corpus, tmp_path / "stored.npz", compress=False)
    encode(vocab_dir, corpus, tmp_path / "flat.bin")
    compressed = read_tokens(tmp_path / "compressed.npz", 50257)
    stored = read_tokens(tmp_path / "stored.npz", 50257)
    flat = read_tokens(tmp_path / "flat.bin", 50257)
    assert not any(isinstance(a, np.memmap) for a in compressed)
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in stored)
    assert len(flat) == 1 and isinstance(flat[0], np.memmap)
    for a, b in zip(compressed, stored):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(flat[0], as_bin(compressed))
    # np.savez's own uncompressed files, of any integer dtype, are mapped too.
    np.savez(tmp_path / "numpy.npz", np.arange(10, dtype=np.int64), np.zeros(0, np.int32))
    mapped, empty = read_tokens(tmp_path / "numpy.npz")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.int64 and mapped.tolist() == list(range(10))
    assert len(empty) == 0
    # load_dataset takes the same path: token files' arrays come through as they are, mapped.
    chunks = load_dataset(enc, [str(tmp_path / "stored.npz"), str(tmp_path / "flat.bin")], progress=False)
    assert all(isinstance(c, np.memmap) for c in chunks) and len(chunks) == len(stored) + 1


def test_large_inputs_are_written_uncompressed_by_default(vocab_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "UNCOMPRESSED_FROM", 1000)
    encode(vocab_dir, corpus, tmp_path / "big.npz")
    encode(vocab_dir, corpus, tmp_path / "small.npz", compress=True)
    assert all(isinstance(a, np.memmap) for a in read_tokens(tmp_path / "big.npz"))
    assert not any(isinstance(a, np.memmap) for a in read_tokens(tmp_path / "small.npz"))


def test_mapped_windows_equal_in_memory_windows_and_resume_the_same(tmp_path):
    rs = np.random.RandomState(1)
    chunks = [rs.randint(0, 50257, n).astype(np.uint16) for n in (500, 3000, 40, 1200)]
    save_tokens(tmp_path / "data.npz", chunks, compress=False)
    mapped = read_tokens(tmp_path / "data.npz", 50257)
    memory, disk = Sampler(chunks, seed=7), Sampler(mapped, seed=7, n_vocab=50257)
    for _ in range(100):
        np.testing.assert_array_equal(memory.sample(64), disk.sample(64))
    state = disk.rs.get_state()
    expected = [memory.sample(64) for _ in range(50)]
    resumed = Sampler(read_tokens(tmp_path / "data.npz", 50257), seed=0, n_vocab=50257)
    resumed.rs.set_state(state)
    for window in expected:
        np.testing.assert_array_equal(resumed.sample(64), window)


def test_bin_files(enc, tmp_path):
    tokens = np.random.RandomState(2).randint(0, 50257, 5000)
    # As nanoGPT's prepare.py writes them: a memmap of uint16 filled in place.
    out = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="w+", shape=(len(tokens),))
    out[:] = tokens
    out.flush()
    del out
    tokens.astype(np.uint32).tofile(tmp_path / "wide.bin")
    (chunk,) = load_dataset(enc, str(tmp_path / "train.bin"), progress=False)
    np.testing.assert_array_equal(chunk, tokens)
    (chunk,) = load_dataset(enc, str(tmp_path / "wide.bin"), progress=False, bin_dtype="uint32")
    np.testing.assert_array_equal(chunk, tokens)
    # The wrong --bin_dtype: a size that does not fit is refused at once, one that fits gives ids out of
    # range (two uint16 ids read as one uint32).
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DatasetError, match=r"odd.bin: 3 bytes is not a whole number of uint16 token ids "
                                           r"\(2 bytes each\); is it truncated, or are its ids not uint16\?"):
        load_dataset(enc, str(tmp_path / "odd.bin"), progress=False)
    with pytest.raises(DatasetError, match=r"train.bin: tokens holds token id \d+, outside 0..50256; are its "
                                           r"ids uint32, of this vocabulary\?"):
        load_dataset(enc, str(tmp_path / "train.bin"), progress=False, bin_dtype="uint32")


def test_ids_outside_the_vocabulary(enc, tmp_path, monkeypatch):
    monkeypatch.setattr(token_files, "EDGE_TOKENS", 4)
    tokens = np.arange(100, dtype=np.uint16)
    tokens[-1] = 60000  # at an end: found when loading
    save_tokens(tmp_path / "end.npz", [tokens], compress=False)
    with pytest.raises(DatasetError, match=r"end.npz: arr_0 holds token id 60000, outside 0..50256; was it "
                                           r"encoded with another vocabulary"):
        load_dataset(enc, str(tmp_path / "end.npz"), progress=False)
    tokens[-1] = 5
    tokens[50] = 60000  # in the middle of a mapped array: found by the first window holding it
    tokens.tofile(tmp_path / "middle.bin")
    (chunk,) = load_dataset(enc, str(tmp_path / "middle.bin"), progress=False)
    sampler = Sampler([chunk], seed=0, n_vocab=50257)
    with pytest.raises(DatasetError, match=r"middle.bin: chunk 0 at token \d+ holds token id 60000"):
        sampler.sample(90)  # every 90-token window of 100 tokens holds position 50


def test_damaged_npz_files_are_one_line_errors(enc, tmp_path):
    chunks = [np.arange(1000, dtype=np.uint16), np.arange(3000, dtype=np.uint16)]
    stored = open(save_tokens(tmp_path / "stored.npz", chunks, compress=False), "rb").read()
    compressed = open(save_tokens(tmp_path / "compressed.npz", chunks), "rb").read()
    for name, data in [("cut_stored.npz", stored[:len(stored) // 2]),
                       ("cut_compressed.npz", compressed[:len(compressed) // 2]),
                       ("cut_end.npz", stored[:-10])]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError) as error:
            load_dataset(enc, str(tmp_path / name), progress=False)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name}: not a valid .npz file") and "truncated" in message
        assert "\n" not in message
    # A member whose .npy header does not match its zip entry (a shape edited in place).
    assert stored.count(b"(1000,)") == 1
    (tmp_path / "edited.npz").write_bytes(stored.replace(b"(1000,)", b"(2000,)"))
    with pytest.raises(DatasetError, match=r"edited.npz: arr_0 holds 2128 bytes, which does not match its "
                                           r"\.npy header; write the file again"):
        read_tokens(tmp_path / "edited.npz")


def test_a_file_that_changes_while_mapped_is_an_error_not_a_crash(tmp_path):
    tokens = np.random.RandomState(3).randint(0, 50257, 4000).astype(np.uint16)
    for how in ("appended", "replaced", "removed", "truncated"):
        path = tmp_path / f"{how}.bin"
        tokens.tofile(path)
        sampler = Sampler(read_tokens(path), seed=0, n_vocab=50257)
        sampler.sample(100)
        if how == "appended":
            with open(path, "ab") as f:
                f.write(tokens[:10].tobytes())
        elif how == "replaced":
            tokens.tofile(str(path) + ".new")
            os.replace(str(path) + ".new", path)
        elif how == "removed":
            os.unlink(path)
        else:
            os.truncate(path, 100)
        expected = {"appended": "was changed while in use", "replaced": "was replaced by another file",
                    "removed": "was removed while in use", "truncated": "was changed while in use"}[how]
        pattern = f"{re.escape(str(path))} {expected}.*must not change while it is being read"
        with pytest.raises(DatasetError, match=pattern):
            sampler.sample(100)


def test_encode_cli_writes_bin_and_uncompressed_npz(vocab_dir, corpus, tmp_path):
    base = [sys.executable, os.path.join(ROOT, "encode.py"), "--model_name", os.path.basename(vocab_dir),
            "--models_dir", os.path.dirname(vocab_dir), "--combine", "2000"]
    for out, extra in [("a.bin", []), ("b", ["--no_compress"])]:
        result = subprocess.run(base + extra + [corpus, str(tmp_path / out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert "(uncompressed)" in result.stdout and os.path.exists(tmp_path / "b.npz")
    assert all(isinstance(a, np.memmap) for a in read_tokens(tmp_path / "b.npz"))
    np.testing.assert_array_equal(read_tokens(tmp_path / "a.bin")[0], as_bin(read_tokens(tmp_path / "b.npz")))
    result = subprocess.run(base + ["--compress", "--no_compress", corpus, str(tmp_path / "c.npz")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_reading_and_writing_token_files_does_not_import_tensorflow():
    assert frameworks_imported("gpt2_tf.dataset", "gpt2_tf.token_files") == "[]"
