"""Learning a BPE vocabulary: the merges, the files written, and the train_bpe.py command line."""

import argparse
import collections
import fractions
import heapq
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest
from cli_checks import assert_refused, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_tf import bpe, dataset
from gpt2_tf.encoder import ENDOFTEXT, PAT, bytes_to_unicode, get_encoder, load_encoder_files
from gpt2_tf.fast_encoder import FastEncoder
from gpt2_tf.hparams import load_hparams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Text in several scripts, so that the corpus has multi-byte characters of every length.
MULTILINGUAL = """\
大型语言模型通过预测下一个词来学习语言。中文文本没有空格，一句话就是一个预分词片段。
東京は日本の首都です。ひらがなとカタカナと漢字を使います。
한국어는 한글로 씁니다. 서울은 한국의 수도입니다.
Быстрая бурая лиса перепрыгивает через ленивую собаку.
Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.
الثعلب البني السريع يقفز فوق الكلب الكسول.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।
Ünïcödé façade naïve café — “quotes” … 😀🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ١٢٣ ½
"""


def corpus_texts():
    """A few hundred KB: some Python standard library sources, its Chinese samples and MULTILINGUAL."""
    texts = []
    for module in (argparse, fractions, heapq, json, textwrap):
        with open(module.__file__, encoding="utf-8") as f:
            texts.append(f.read())
    samples = os.path.join(sysconfig.get_paths()["stdlib"], "test", "cjkencodings")
    for name in ("gb2312", "big5", "euc_kr", "shift_jis"):
        path = os.path.join(samples, f"{name}-utf8.txt")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
    texts.append(MULTILINGUAL * 20)
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder of the corpus files, their texts)."""
    folder = tmp_path_factory.mktemp("corpus")
    texts = corpus_texts()
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_bytes(text.encode("utf-8"))
    return str(folder), texts


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """(models_dir, model name): a 2,000-token vocabulary written by train_bpe."""
    models = tmp_path_factory.mktemp("models")
    bpe.train_bpe(corpus[0], str(models / "mine"), 2000, progress=False)
    return str(models), "mine"


@pytest.fixture(scope="module")
def enc(trained):
    return get_encoder(trained[1], trained[0])


def reference_merges(word_counts, vocab_size, min_frequency=2):
    """The textbook algorithm: count every pair afresh, merge the most frequent everywhere, repeat.

    Ties go to the smallest (left id, right id); bytes have their ids in GPT-2's encoder.json.
    """
    symbols = sorted(bytes_to_unicode().values())
    ids = {symbol: i for i, symbol in enumerate(symbols)}
    byte_ids = {b: ids[symbol] for b, symbol in bytes_to_unicode().items()}
    words = collections.Counter()
    for piece, n in word_counts.items():
        words[tuple(byte_ids[b] for b in piece.encode("utf-8"))] += n
    merges = []
    while len(symbols) < vocab_size - 1:
        pairs = collections.Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_frequency:
            break
        a, b = best
        merges.append((symbols[a], symbols[b]))
        if symbols[a] + symbols[b] not in ids:
            ids[symbols[a] + symbols[b]] = len(symbols)
            symbols.append(symbols[a] + symbols[b])
        c = ids[symbols[a] + symbols[b]]
        merged = collections.Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == (a, b):
                    out.append(c)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def hugging_face_merges(texts, vocab_size, min_frequency=2, use_regex=True):
    """The merges of Hugging Face tokenizers' trainer, set up as GPT-2's byte-level BPE."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    tokenizer.pre_tokenizer = byte_level(add_prefix_space=False, use_regex=use_regex)
    # No special tokens, so that the bytes have ids 0..255 in GPT-2's order; ours has <|endoftext|> too.
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                             initial_alphabet=byte_level.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


# ---------------------------------------------------------------------------------------------------
# The merges.


def test_byte_symbols_have_gpt2s_ids(vocab_dir):
    encoder, _ = load_encoder_files(vocab_dir)
    assert list(encoder)[:256] == bpe.byte_symbols()
    assert [encoder[s] for s in bpe.byte_symbols()] == list(range(256))


def test_merges_equal_the_textbook_algorithm(corpus):
    counts = bpe.count_words(corpus[1][-4:])  # the multilingual part: the textbook algorithm is slow
    merges = bpe.learn_merges(counts, 257 + 300)
    assert len(merges) == 300
    assert merges == reference_merges(counts, 257 + 300)


words = st.dictionaries(st.text("abcé", min_size=1, max_size=10), st.integers(1, 6), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(words, st.integers(257, 320), st.integers(1, 3))
def test_merges_equal_the_textbook_algorithm_with_many_ties(word_counts, vocab_size, min_frequency):
    merges = bpe.learn_merges(word_counts, vocab_size, min_frequency)
    assert merges == reference_merges(word_counts, vocab_size, min_frequency)


def test_merges_equal_hugging_face(corpus):
    texts = corpus[1]
    merges = bpe.learn_merges(bpe.count_words(texts), 4000)
    assert len(merges) > 3000
    assert merges == hugging_face_merges(texts, 4000)


@settings(max_examples=40, deadline=None)
@given(words, st.integers(257, 320), st.integers(1, 3))
def test_merges_equal_hugging_face_with_many_ties(word_counts, vocab_size, min_frequency):
    # Each piece is given whole (no regex), as often as it is counted.
    pieces = [word for word, n in word_counts.items() for _ in range(n)]
    theirs = hugging_face_merges(pieces, vocab_size, min_frequency, use_regex=False)
    assert bpe.learn_merges(word_counts, vocab_size, min_frequency) == theirs


def test_counting_files_in_small_blocks_counts_the_whole_text(tmp_path, monkeypatch):
    text = (MULTILINGUAL + "  x = [1, 2]\n\n\tdef f():  " + ENDOFTEXT) * 30 + "tail"
    (tmp_path / "a.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "b.txt").write_bytes(b"second file\r\nwith CRLF")
    monkeypatch.setattr(dataset, "BLOCK_SIZE", 7)
    monkeypatch.setattr(bpe, "PIECE_SIZE", 5)
    counts = bpe.count_files(dataset.list_files(str(tmp_path)))
    expected = collections.Counter(PAT.findall("second file\nwith CRLF"))
    for part in text.split(ENDOFTEXT):  # <|endoftext|> becomes its own token, so it is not counted
        expected.update(PAT.findall(part))
    assert counts == expected


def test_stops_at_min_frequency():
    merges = bpe.learn_merges({"abab": 3, "cd": 1}, 1000, min_frequency=2)
    assert merges == [("a", "b"), ("ab", "ab")]
    assert bpe.learn_merges({"abab": 3, "cd": 1}, 1000, min_frequency=1)[-1] == ("c", "d")
    assert bpe.learn_merges({"abab": 3}, 257) == []


# ---------------------------------------------------------------------------------------------------
# The files written.


def test_files_have_gpt2s_formats(trained, vocab_dir):
    folder = os.path.join(*trained)
    with open(os.path.join(folder, "vocab.bpe"), "rb") as f:
        data = f.read()
    lines = data.decode("utf-8").split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == "" and data.endswith(b"\n")
    assert all(len(line.split(" ")) == 2 and all(line.split(" ")) for line in lines[1:-1])
    with open(os.path.join(folder, "encoder.json"), "rb") as f:
        raw = f.read()
    encoder = json.loads(raw)
    assert isinstance(encoder, dict) and raw.isascii()
    # The byte symbols are written exactly as in GPT-2's file.
    with open(os.path.join(vocab_dir, "encoder.json"), "rb") as f:
        gpt2_raw = f.read()
    prefix = raw[:raw.index(b", ", raw.index(b": 255")) + 2]
    assert gpt2_raw.startswith(prefix)

    loaded, merges = load_encoder_files(folder)
    assert loaded == encoder and len(merges) == 2000 - 257
    assert list(encoder.values()) == list(range(2000))
    assert [encoder[a + b] for a, b in merges] == list(range(256, 1999))
    assert encoder[ENDOFTEXT] == 1999
    assert load_hparams(folder).n_vocab == 2000
    assert sorted(os.listdir(folder)) == ["encoder.json", "hparams.json", "vocab.bpe"]


def test_vocabulary_is_used_by_the_encoders(enc, corpus):
    assert enc.eot_token == len(enc.encoder) - 1
    text = corpus[1][-1][:3000]
    tokens = enc.encode(text)
    assert enc.decode(tokens) == text
    assert len(tokens) < len(text.encode("utf-8")) / 2
    fast = FastEncoder.build(enc)
    if fast is not None:  # tiktoken is installed
        assert fast.encode(text) == tokens


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_any_unicode_round_trips(enc, text):
    assert enc.decode(enc.encode(text)) == text


# ---------------------------------------------------------------------------------------------------
# The command line.


def run_train_bpe(*args):
    command = [sys.executable, os.path.join(ROOT, "train_bpe.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_writes_a_model_folder(corpus, tmp_path):
    out = tmp_path / "models" / "new"
    result = run_train_bpe(corpus[0], "--vocab_size", "600", "--out", str(out), "--n_layer", "4")
    assert result.returncode == 0, result.stderr
    assert "600 tokens" in result.stdout and "Merging" in result.stderr
    assert load_hparams(str(out)).to_dict() == dict(n_vocab=600, n_ctx=1024, n_embd=768, n_head=12, n_layer=4)
    assert len(get_encoder("new", str(tmp_path / "models")).encoder) == 600
    again = run_train_bpe(corpus[0], "--vocab_size", "500", "--out", str(out), "--force", "--quiet")
    assert again.returncode == 0 and len(get_encoder("new", str(tmp_path / "models")).encoder) == 500


def test_cli_errors_are_one_line(corpus, tmp_path):
    for args, words in [(["--vocab_size", "256"], "at least 257"),
                        (["--vocab_size", "300", str(tmp_path / "*.txt")], "no files match this pattern")]:
        result = run_train_bpe(corpus[0], "--out", str(tmp_path / "out"), *args)
        assert result.returncode != 0
        assert result.stderr.startswith("train_bpe.py: error: ") and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


# Bad usage: (arguments, with {tmp} for the test's folder, which holds a.txt, binary/blob and
# trained/checkpoint; words the message must hold).
BAD_USAGE = [
    (["--vocab_size", "256"], "--vocab_size: must be at least 257, got 256"),
    (["--vocab_size", "-5"], "--vocab_size: must be at least 257, got -5"),
    (["--vocab_size", "1e3"], "--vocab_size: expected an integer, got '1e3'"),
    (["--vocab_size", "nan"], "--vocab_size: expected an integer, got 'nan'"),
    (["--min_frequency", "0"], "--min_frequency: must be at least 1, got 0"),
    (["--n_ctx", "0"], "--n_ctx: must be at least 1, got 0"),
    (["--n_embd", "-768"], "--n_embd: must be at least 1, got -768"),
    (["--n_head", "0"], "--n_head: must be at least 1, got 0"),
    (["--n_layer", "0"], "--n_layer: must be at least 1, got 0"),
    (["--n_embd", "100", "--n_head", "12"], "--n_embd (100) must be a multiple of --n_head (12)"),
    (["--out", "{tmp}/a.txt"], "{tmp}/a.txt is a file, not a folder"),
    (["--out", "{tmp}/a.txt/new"], "cannot write to {tmp}/a.txt/new: {tmp}/a.txt is a file, not a folder"),
    (["--out", "{tmp}/trained"], "{tmp}/trained holds a trained model (it has a checkpoint)"),
    (["--out", "{tmp}/vocab"], "{tmp}/vocab already holds a vocabulary (encoder.json): datasets encoded "
                               "with it would no longer match; choose a new folder, or pass --force"),
    (["--encoding", "no-such-codec"], "encoding 'no-such-codec'"),
    (["--encoding", "hex"], "'hex' is not a text encoding"),
    (["{tmp}/missing.txt"], "{tmp}/missing.txt: no such file or folder"),
    (["{tmp}/*.md"], "{tmp}/*.md: no files match this pattern"),
    (["{tmp}/binary"], "{tmp}/binary: no text files in this folder (skipped 1 file holding NUL bytes or "
                       "misnamed as token files)"),
    (["--vocab_size"], "--vocab_size: expected one argument"),
]


@pytest.mark.parametrize("args, message", BAD_USAGE)
def test_cli_refuses_bad_usage_before_any_work(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("Some text to learn from, some text.")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "blob").write_bytes(b"\x7fELF\0\0\0")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "checkpoint").write_text('model_checkpoint_path: "model-10"\n')
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "encoder.json").write_text("{}")
    before = snapshot(tmp_path)
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = run_train_bpe(str(tmp_path / "a.txt"), "--vocab_size", "300", "--out", str(tmp_path / "new"),
                           *args)
    assert_refused(result, "train_bpe.py", tmp_path, before, message.format(tmp=tmp_path))


def test_cli_skips_hidden_pycache_and_binary_files(corpus, tmp_path):
    project = tmp_path / "project"
    (project / "__pycache__").mkdir(parents=True)
    (project / ".git").mkdir()
    texts = corpus[1][:3]
    for i, text in enumerate(texts):
        (project / f"{i}.py").write_text(text, encoding="utf-8")
        (project / "__pycache__" / f"{i}.pyc").write_bytes(b"\xcb\r\r\n\0\0\0\0" + text.encode())
    (project / ".git" / "index").write_bytes(b"DIRC\0\0\0\2" + texts[0].encode())
    (project / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + texts[1].encode())
    (project / ".notes.txt").write_text(MULTILINGUAL)
    result = run_train_bpe(str(project), "--vocab_size", "500", "--out", str(tmp_path / "from_folder"),
                           "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 files (1 more skipped as not text), ")
    assert f"skipped {project / 'image.png'}: not text (it holds NUL bytes)" in result.stderr.splitlines()
    files = [str(project / f"{i}.py") for i in range(3)]
    result = run_train_bpe(*files, "--vocab_size", "500", "--out", str(tmp_path / "from_files"), "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("encoder.json", "vocab.bpe", "hparams.json"):
        assert (tmp_path / "from_folder" / name).read_bytes() == (tmp_path / "from_files" / name).read_bytes()
