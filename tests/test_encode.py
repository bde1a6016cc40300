"""Cutting text into pieces, the tiktoken fast path, and the encode.py command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import regex
from cli_checks import assert_refused, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_tf import fast_encoder
from gpt2_tf.encoder import PAT, get_encoder
from gpt2_tf.fast_encoder import FastEncoder, Splitter, split_text, unsure_characters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Characters that exercise every branch of the pre-tokenizer: spaces of several kinds (and \x1c, which
# str.isspace() calls a space but the regex does not), letters, digits, symbols, contractions,
# `<|endoftext|>` parts, and characters outside the BMP.
ALPHABET = [" ", " ", "\n", "\t", "\r", "\u3000", "\xa0", "\x85", "\u2028", "\x1c", "a", "b", "s", "t", "é",
            "中", "1", "٣", "'", ".", "<", "|", ">", "!", "\U0001f600", "re", "ll", "<|endoftext|>",
            "  ", "\n\n"]
texts = st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join)


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


@pytest.fixture(scope="module")
def fast(enc):
    fast = FastEncoder.build(enc)
    if fast is None:
        pytest.skip("tiktoken is not installed")
    return fast


def pieces_of(pieces):
    return [m for piece in pieces for m in PAT.findall(piece)]


@settings(max_examples=300, deadline=None)
@given(text=texts, size=st.integers(1, 8))
def test_split_text_keeps_pretokenizer_pieces(enc, text, size):
    pieces = split_text(text, size)
    assert "".join(pieces) == text
    assert all(pieces)
    assert pieces_of(pieces) == PAT.findall(text)
    assert [token for piece in pieces for token in enc.encode(piece)] == enc.encode(text)


@settings(max_examples=200, deadline=None)
@given(texts, st.integers(1, 6), st.lists(st.integers(0, 9), min_size=1, max_size=20))
def test_splitter_stream_fed_in_bits(text, size, cuts):
    splitter = Splitter(size)
    pieces, at = [], 0
    for n in cuts * (len(text) // max(1, sum(cuts)) + 1):
        pieces += splitter.feed(text[at:at + n])
        at += n
    pieces += splitter.feed(text[at:]) + [splitter.finish()]
    assert "".join(pieces) == text
    assert pieces_of(pieces) == PAT.findall(text)


def test_splitter_cuts_text_without_spaces_where_the_pretokenizer_does():
    text = "a.b,c;d!" * 500 + "x's" * 200
    pieces = split_text(text, 16)
    assert len(pieces) > 10
    assert pieces_of(pieces) == PAT.findall(text)
    # A single enormous piece cannot be cut.
    assert split_text("a" * 1000, 16) == ["a" * 1000]


def test_splitter_memory_stays_bounded():
    splitter = Splitter(500)
    longest = 0
    for i in range(300):
        splitter.feed(f"line {i} of some text\n" * 50)
        longest = max(longest, len(splitter.text))
    assert longest < 2000


def test_pieces_encode_like_the_whole(enc):
    text = open(os.path.join(ROOT, "gpt2_tf", "encoder.py"), encoding="utf-8").read()
    pieces = split_text(text, 100)
    assert len(pieces) > 20
    assert [t for piece in pieces for t in enc.encode(piece)] == enc.encode(text)


def test_fast_encoder_matches_reference_on_varied_text(enc, fast):
    parts = [open(os.path.join(ROOT, "gpt2_tf", name), encoding="utf-8").read()
             for name in ("encoder.py", "hparams.py")]
    parts += ["Größe café naïve. Привет, мир! 你好，世界。こんにちは 안녕하세요 مرحبا ١٢٣ שלום",
              "DON'T don't I'll we've they're 1234567890 3.14159 e=mc² \u00a0nbsp\u3000ideographic",
              "\t\ttabs\r\nwindows\rmac  trailing   \n\n\n", "😀👍🏽 emoji ZWJ 👨\u200d👩\u200d👧",
              "a" * 3000, "=" * 5000 + "-_-" * 400, " " * 20000 + "x", "\n" * 10000]
    text = "\n".join(parts)
    assert fast.encode(text) == enc.encode(text)
    for part in parts:
        assert fast.encode(part) == enc.encode(part)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_fast_encoder_matches_reference_on_random_text(enc, fast, text):
    assert regex.findall(fast_encoder.TIKTOKEN_PAT, text) == PAT.findall(text)
    assert fast.encode(text) == enc.encode(text)


@pytest.mark.parametrize("text", [
    "start" + " " * 1_200_000 + "end",
    "start\n" + "\n \t" * 400_000,
    ("word " + " " * 150_000) * 3 + "tail " + "\n" * 1_100_000,
])
def test_fast_encoder_survives_huge_whitespace_runs(enc, fast, text):
    # tiktoken 0.14 panics (Rust StackOverflow) on such runs when given them directly.
    assert fast.encode(text) == enc.encode(text)


def test_fast_encoder_falls_back_around_small_space_runs(enc, fast, monkeypatch):
    monkeypatch.setattr(fast_encoder, "MAX_SPACE_RUN", 6)
    monkeypatch.setattr(fast_encoder, "SMALL_PIECE", 16)
    text = "Some text,   then a run:" + " " * 40 + "words\n\n\n\n\n\n\n\nmore words " * 30
    assert fast.encode(text) == enc.encode(text)


def test_fast_encoder_handles_characters_tiktoken_classifies_differently(enc, fast, monkeypatch):
    unsure = unsure_characters()
    assert set(range(0xD800, 0xE000)) <= set(unsure.tolist())
    chosen = [c for c in unsure.tolist() if not 0xD800 <= c < 0xE000][::97][:60]
    monkeypatch.setattr(fast_encoder, "SMALL_PIECE", 16)
    text = " ".join(f"a{chr(c)}b {chr(c)}1 x{chr(c)}{chr(c)}" for c in chosen) + " plain text" * 20
    assert fast.encode(text) == enc.encode(text)
    # A made-up disagreement forces the reference for every piece holding it.
    forced = FastEncoder(enc, fast.encoding, unsure=[ord("q")])
    text = "quite a lot of quiet text " * 50 + "and more"
    assert forced.encode(text) == enc.encode(text)


def test_fast_encoder_is_not_built_when_it_cannot_be_exact(enc, monkeypatch):
    merges = sorted(enc.bpe_ranks, key=enc.bpe_ranks.get)
    assert fast_encoder.mergeable_ranks(enc.encoder, merges, enc.byte_decoder) is not None
    swapped = merges[:]
    swapped[10], swapped[20] = swapped[20], swapped[10]  # merge order no longer follows the ids
    assert fast_encoder.mergeable_ranks(enc.encoder, swapped, enc.byte_decoder) is None
    monkeypatch.setattr(fast_encoder, "tiktoken", None)
    assert FastEncoder.build(enc) is None


# ---------------------------------------------------------------------------------------------------
# The command line.


def run_encode(vocab_dir, *args):
    command = [sys.executable, os.path.join(ROOT, "encode.py"), "--model_name", os.path.basename(vocab_dir),
               "--models_dir", os.path.dirname(vocab_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Encoding")]
    assert len(lines) == 1 and lines[0].startswith("encode.py: error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_encodes_a_directory(vocab_dir, tmp_path, enc):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.txt").write_text("Second file.")
    (corpus / "a.txt").write_text("First file <|endoftext|> with a separator.\n")
    (corpus / "sub" / "c.md").write_text("Third, in a folder.")
    result = run_encode(vocab_dir, str(corpus), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "Encoding into" in result.stdout and "3 files" in result.stdout
    with np.load(tmp_path / "out.npz", allow_pickle=False) as npz:  # numpy's .npz suffix is added
        assert npz.files == ["arr_0"]
        chunk = npz["arr_0"]
    eot = [enc.eot_token]
    assert chunk.dtype == np.uint16
    assert chunk.tolist() == (enc.encode("First file ") + eot + enc.encode(" with a separator.\n") + eot
                              + enc.encode("Second file.") + eot + enc.encode("Third, in a folder.") + eot)
    assert sorted(os.listdir(tmp_path)) == ["corpus", "out.npz"]


def test_cli_output_is_the_same_for_any_jobs_and_encoder(vocab_dir, tmp_path):
    source = open(os.path.join(ROOT, "gpt2_tf", "encoder.py"), encoding="utf-8").read()
    (tmp_path / "big.txt").write_text((source + "Ünïcödé 你好 ") * 350)  # > 2 pieces, so processes run
    outputs = []
    for args in (["--jobs", "1"], ["--jobs", "2"], ["--jobs", "2", "--no_fast"]):
        out = tmp_path / f"out{len(outputs)}.npz"
        result = run_encode(vocab_dir, "--quiet", *args, str(tmp_path / "big.txt"), str(out))
        assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_cli_errors_are_one_line(vocab_dir, tmp_path):
    assert_one_line_error(run_encode(vocab_dir, str(tmp_path / "*.txt"), str(tmp_path / "o.npz")),
                          "no files match this pattern")
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(run_encode(vocab_dir, str(tmp_path / "empty.txt"), str(tmp_path / "o.npz")),
                          "empty")
    (tmp_path / "bad.txt").write_bytes("héllo wörld ".encode() * 100 + b"\xff tail")
    result = run_encode(vocab_dir, str(tmp_path / "bad.txt"), str(tmp_path / "o.npz"))
    assert_one_line_error(result, "bad.txt", "byte 1400", "--encoding", "--errors replace")
    assert_one_line_error(run_encode(vocab_dir, str(tmp_path / "bad.txt"), str(tmp_path / "no" / "o.npz")),
                          "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["bad.txt", "empty.txt"]  # no output, no temporary file
    result = run_encode(vocab_dir, "--quiet", "--errors", "replace", str(tmp_path / "bad.txt"),
                        str(tmp_path / "o.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "o.npz") as npz:
        assert len(npz["arr_0"]) > 100


def test_cli_unreadable_file(vocab_dir, tmp_path):
    if os.geteuid() == 0:
        if not os.path.exists("/proc/self/mem"):
            pytest.skip("no file that root cannot read")
        path = "/proc/self/mem"  # opens, but reading at offset 0 fails even for root
    else:
        path = tmp_path / "secret.txt"
        path.write_text("text")
        path.chmod(0)
    assert_one_line_error(run_encode(vocab_dir, str(path), str(tmp_path / "o.npz")), "cannot read")
    assert not (tmp_path / "o.npz").exists()


# Bad usage: (arguments, with {tmp} for the test's folder and {vocab} for the tokenizer's models folder;
# words the message must hold). The folder holds a.txt, old.npz, corpus/b.txt, models/ (empty) and
# mine/notes.txt.
BAD_USAGE = [
    (["--combine", "-1", "{tmp}/a.txt", "{tmp}/o.npz"], "--combine: must be at least 0, got -1"),
    (["--combine", "nan", "{tmp}/a.txt", "{tmp}/o.npz"], "--combine: expected an integer, got 'nan'"),
    (["--jobs", "0", "{tmp}/a.txt", "{tmp}/o.npz"], "--jobs: must be at least 1, got 0"),
    (["--jobs", "inf", "{tmp}/a.txt", "{tmp}/o.npz"], "--jobs: expected an integer"),
    (["--encoding", "no-such-codec", "{tmp}/a.txt", "{tmp}/o.npz"], "encoding 'no-such-codec'"),
    (["--encoding", "base64", "{tmp}/a.txt", "{tmp}/o.npz"], "'base64' is not a text encoding"),
    (["--errors", "ignore", "{tmp}/a.txt", "{tmp}/o.npz"], "--errors: invalid choice"),
    (["{tmp}/a.txt"], "required: OUT.npz"),
    (["{tmp}/missing.txt", "{tmp}/o.npz"], "{tmp}/missing.txt: no such file or folder"),
    (["{tmp}/a.txt", "{tmp}/missing/", "{tmp}/o.npz"], "{tmp}/missing/: no such file or folder"),
    (["{tmp}/*.md", "{tmp}/o.npz"], "{tmp}/*.md: no files match this pattern"),
    (["{tmp}/models", "{tmp}/o.npz"], "{tmp}/models: no files in this folder"),
    (["{tmp}/a.txt", "{tmp}/corpus"], "the output {tmp}/corpus is a folder; the last argument is the .npz"),
    (["{tmp}/a.txt", "{tmp}/missing/o.npz"], "cannot write {tmp}/missing/o.npz: folder {tmp}/missing does"),
    (["{tmp}/old.npz", "{tmp}/a.txt", "{tmp}/old.npz"], "the output {tmp}/old.npz is also an input"),
    (["{tmp}", "{tmp}/old"], "the output {tmp}/old.npz is also an input"),  # found in the folder
    (["--models_dir", "{tmp}/models", "--model_name", "124M", "{tmp}/a.txt", "{tmp}/o.npz"],
     "no tokenizer: model 124M not found in {tmp}/models; download it first: python download_model.py 124M "
     "--models_dir {tmp}/models"),
    (["--models_dir", "models", "--model_name", "345M", "{tmp}/a.txt", "{tmp}/o.npz"],
     "model 345M not found in models; download it first: python download_model.py 345M"),
    (["--models_dir", "{tmp}/models", "--model_name", "117M", "{tmp}/a.txt", "{tmp}/o.npz"],
     "download it first: python download_model.py 117M --models_dir {tmp}/models"),
    (["--models_dir", "{tmp}", "--model_name", "mine", "{tmp}/a.txt", "{tmp}/o.npz"],
     "no tokenizer: {tmp}/mine is not a model folder: it has no encoder.json"),
    (["--models_dir", "{tmp}", "--model_name", "yours", "{tmp}/a.txt", "{tmp}/o.npz"],
     "no tokenizer: no model yours in {tmp} (it has corpus, mine, models; the released models are 124M"),
]


@pytest.mark.parametrize("args, message", BAD_USAGE)
def test_cli_refuses_bad_usage_before_any_work(vocab_dir, tmp_path, args, message):
    (tmp_path / "a.txt").write_text("Some text.")
    np.savez(tmp_path / "old.npz", np.arange(5, dtype=np.uint16))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "b.txt").write_text("More text.")
    (tmp_path / "models").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a model")
    before = snapshot(tmp_path)
    args = [arg.format(tmp=tmp_path) for arg in args]
    if "345M" in message and os.path.isdir(os.path.join(ROOT, "models", "355M")):
        pytest.skip("355M is downloaded in this checkout")
    result = run_encode(vocab_dir, *args)
    assert_refused(result, "encode.py", tmp_path, before, message.format(tmp=tmp_path))


def test_cli_encodes_several_inputs_skipping_what_is_not_text(vocab_dir, tmp_path, enc):
    project = tmp_path / "project"
    files = {"a.py": "print('a')\n", "sub/b.py": "def b():\n    return 2\n",
             ".git/index": b"DIRC\0\0\0\2binary index", ".git/HEAD": "ref: refs/heads/main\n",
             "__pycache__/a.cpython-312.pyc": b"\xcb\r\r\n\0\0\0\0code", "logo.png": b"\x89PNG\r\n\x1a\n\0\0",
             "blob.bin": b"12345", "notes.npz": "not a zip archive\n"}
    for name, data in files.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    (tmp_path / "docs").mkdir()
    for name in ("x.txt", "y.txt", "z.md"):
        (tmp_path / "docs" / name).write_text(f"Document {name}.")
    (tmp_path / "docs" / "blob.txt").write_bytes(b"looks like text\0but is not")
    (tmp_path / "first.txt").write_text("The first input.")
    result = run_encode(vocab_dir, "--verbose", "--combine", "0", str(tmp_path / "first.txt"), str(project),
                        str(tmp_path / "docs" / "*.txt"), str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {project / 'blob.bin'}: not the token file its name says",
                       f"skipped {project / 'logo.png'}: not text (it holds NUL bytes)",
                       f"skipped {project / 'notes.npz'}: not the token file its name says",
                       f"skipped {tmp_path / 'docs' / 'blob.txt'}: not text (it holds NUL bytes)"]
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("5 files (4 more skipped as not text), ")
    texts = ["The first input.", "print('a')\n", "def b():\n    return 2\n", "Document x.txt.",
             "Document y.txt."]
    with np.load(tmp_path / "out.npz") as npz:
        chunks = [npz[name].tolist() for name in npz.files]
    assert chunks == [enc.encode(text) for text in texts]  # --combine 0: a chunk per file
    # A binary file named explicitly is read as given; a .bin named explicitly is read as token ids.
    result = run_encode(vocab_dir, str(project / ".git" / "index"), str(tmp_path / "index.npz"))
    assert result.returncode == 0 and "1 file, " in result.stdout, result.stderr
    result = run_encode(vocab_dir, str(project / "blob.bin"), str(tmp_path / "blob.npz"))
    assert result.returncode == 2 and "5 bytes is not a whole number of uint16 token ids" in result.stderr
