"""Documents in CSV, JSON Lines and one-text-per-line files (gpt2_tf/documents.py), as encode.py,
train.py and score.py read them; CSV checked against gpt-2-simple's own code."""

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_tf.dataset import DatasetError, count_documents, load_dataset
from gpt2_tf.documents import STARTOFTEXT, Numbered, TextFormat, documents, held_out, joined
from gpt2_tf.encoder import ENDOFTEXT, get_encoder
from gpt2_tf.score import load_documents
from gpt2_tf.token_files import save_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Texts a CSV of user data holds: commas, quotes, newlines inside a field, Unicode, long runs of spaces.
TEXTS = ["Hello, world", 'She said "hi", twice.', "two\nlines", "tabs\tand  spaces   ", "中文文本，逗号",
         "emoji 😀 and é", "", "  leading space", "a \"quoted\" word, and more\n\nparagraphs", "x" * 300,
         "ends with a newline\n", f"holds {ENDOFTEXT} inside"]


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


def write_csv(path, rows, header=("text", "label"), newline="\r\n"):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator=newline)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def blocks_of(text, sizes):
    """`text` cut into blocks of the given sizes, cycled (how read_text hands a file over)."""
    blocks, i, n = [], 0, 0
    while i < len(text):
        blocks.append(text[i:i + sizes[n % len(sizes)]])
        i += sizes[n % len(sizes)]
        n += 1
    return blocks


def chunks(enc, path, **kwargs):
    return [np.asarray(c).tolist() for c in load_dataset(enc, path, progress=False, fast=False, **kwargs)]


# ---------------------------------------------------------------------------------------------------
# CSV, against gpt-2-simple.

GPT_2_SIMPLE = textwrap.dedent("""
    import sys
    import numpy as np
    import gpt_2_simple
    from gpt_2_simple.src import encoder
    from gpt_2_simple.src.load_dataset import load_dataset
    csv_path, text_path, vocab_dir, tokens_path = sys.argv[1:]
    gpt_2_simple.encode_csv(csv_path, text_path)
    enc = encoder.get_encoder(vocab_dir)
    chunks = load_dataset(enc, csv_path, 50000)
    np.save(tokens_path, np.concatenate(chunks))
""")


def test_a_csv_gives_the_tokens_of_gpt_2_simples_encode_csv_and_its_load_dataset(enc, vocab_dir, tmp_path):
    if importlib.util.find_spec("gpt_2_simple") is None:  # not imported here: it turns eager execution off
        pytest.skip("gpt-2-simple is not installed (pip install -e '.[test]')")
    rows = [[text, str(i)] for i, text in enumerate(TEXTS)]
    path = write_csv(tmp_path / "data.csv", rows)
    text_path, tokens_path = tmp_path / "encode_csv.txt", tmp_path / "tokens.npy"
    done = subprocess.run([sys.executable, "-c", GPT_2_SIMPLE, path, str(text_path), vocab_dir,
                           str(tokens_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # encode.py on the CSV, and on the text file gpt-2-simple's encode_csv wrote from it.
    for literal in (False, True):
        ours = chunks(enc, path, literal_endoftext=literal)
        assert ours == chunks(enc, str(text_path), literal_endoftext=literal)
    assert len(ours) == 1 and enc.decode(ours[0]).count(STARTOFTEXT) == len(TEXTS)
    # gpt-2-simple's own load_dataset reads a CSV as the text (the separator as 7 tokens), with no
    # <|endoftext|> after the file: ours with --literal_endoftext, a chunk closed after each file.
    assert chunks(enc, path, literal_endoftext=True, combine=1) == [np.load(tokens_path).tolist()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"),
                              max_size=30), min_size=1, max_size=6),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4), newline=st.sampled_from(["\n", "\r\n"]))
def test_csv_documents_are_the_rows_written_by_pythons_csv_writer(texts, sizes, newline):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(["text"])
    writer.writerows([[text, "other, column"] for text in texts])
    as_read = out.getvalue().replace("\r\n", "\n")  # what text mode reads
    fmt = TextFormat(start="<s>", end="</s>")
    found = [text for _, text in documents("x.csv", blocks_of(as_read, sizes), fmt)]
    assert found == [f"<s>{text}</s>" for text in texts]
    assert "".join(joined("x.csv", blocks_of(as_read, sizes), fmt)) == "".join(f"{t}\n" for t in found)


def test_csv_flags_pick_the_column_the_header_and_the_wrapping(tmp_path):
    path = write_csv(tmp_path / "d.csv", [["1", "first text"], ["2", "second, text"]], header=("id", "body"))
    blocks = [open(path, encoding="utf-8").read()]
    assert list(documents(path, blocks, TextFormat(column="body", start="", end=""))) == \
        [(2, "first text"), (3, "second, text")]
    assert list(documents(path, blocks, TextFormat(column="1", header=False, start="[", end="]"))) == \
        [(1, "[body]"), (2, "[first text]"), (3, "[second, text]")]
    assert [text for _, text in documents(path, blocks, TextFormat())] == \
        [f"{STARTOFTEXT}1{ENDOFTEXT}", f"{STARTOFTEXT}2{ENDOFTEXT}"]
    multi = write_csv(tmp_path / "m.csv", [["a\nb\nc", "x"], ["d", "y"]])  # a row is named by its first line
    lines = [line for line, _ in documents(multi, [open(multi, encoding="utf-8").read()], TextFormat())]
    assert lines == [2, 5]


@pytest.mark.parametrize("content, fmt, message", [
    ('text\n"fine"\n"bad"quote\n', TextFormat(), r"bad.csv line 3: not valid CSV \(.*"),
    ('text\n"never closed\nmore\n', TextFormat(), r"bad.csv line 3: not valid CSV \(.*"),
    ("a,b\n1,2\n", TextFormat(column="c"), r"bad.csv: no column 'c' to read the texts from; its header names "
                                           "'a', 'b'"),
    ("a,b\n1,2\n", TextFormat(column="c", header=False), r"bad.csv: no column 'c' .*--csv_no_header"),
    ("a,b\n1,2\n3\n", TextFormat(column="1"), r"bad.csv line 3: the row has 1 column, no column 1 .*"
                                              "--csv_column"),
])
def test_a_csv_that_cannot_be_read_names_the_file_and_line(tmp_path, content, fmt, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        list(documents(str(path), [content], fmt))


# ---------------------------------------------------------------------------------------------------
# JSON Lines and one text per line.


def test_jsonl_and_line_by_line_documents_are_separated_by_endoftext(enc, tmp_path):
    records = [{"text": text, "id": i} for i, text in enumerate(TEXTS) if text.strip()]
    jsonl = tmp_path / "d.jsonl"
    text = "\n".join(json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records))
    jsonl.write_text(text + "\n\n", encoding="utf-8")
    as_text = tmp_path / "as_text.txt"
    as_text.write_text(ENDOFTEXT.join(r["text"] for r in records), encoding="utf-8")
    assert chunks(enc, str(jsonl)) == chunks(enc, str(as_text))
    field = tmp_path / "other.jsonl"
    field.write_text("".join(json.dumps({"body": r["text"]}) + "\n" for r in records), encoding="utf-8")
    assert chunks(enc, str(field), text_format=TextFormat(field="body")) == chunks(enc, str(as_text))

    lines = ["first line", "second line", "third, 中文"]
    plain = tmp_path / "lines.txt"
    plain.write_bytes(b"first line\n\n  \nsecond line\r\nthird, \xe4\xb8\xad\xe6\x96\x87\n")
    (tmp_path / "joined.txt").write_text(ENDOFTEXT.join(lines), encoding="utf-8")
    assert chunks(enc, str(plain), text_format=TextFormat(line_by_line=True)) == \
        chunks(enc, str(tmp_path / "joined.txt"))
    assert chunks(enc, str(plain)) != chunks(enc, str(tmp_path / "joined.txt"))  # whole, without the flag


@pytest.mark.parametrize("content, fmt, message", [
    ('{"text": "ok"}\n{"text": "no end"\n', TextFormat(),
     r"bad.jsonl line 2: not valid JSON \(.* column 18\)"),
    ('{"text": "ok"}\n\n["a list"]\n', TextFormat(), r'bad.jsonl line 3: expected an object with a "text" '
                                                      r"string \(--json_field names another field\)"),
    ('{"body": "ok"}\n', TextFormat(), r'bad.jsonl line 1: expected an object with a "text" string'),
    ('{"text": 3}\n', TextFormat(field="text"), r'bad.jsonl line 1: expected an object with a "text"'),
])
def test_a_json_line_that_cannot_be_read_names_the_file_and_line(tmp_path, content, fmt, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        list(documents(str(path), [content], fmt))


def test_documents_stream_in_blocks_of_any_size():
    text = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS if t.strip())
    whole = list(documents("d.jsonl", [text], TextFormat()))
    for sizes in ([1], [2, 7], [64], [len(text)]):
        assert list(documents("d.jsonl", blocks_of(text, sizes), TextFormat())) == whole
        assert "".join(joined("d.jsonl", blocks_of(text, sizes), TextFormat())) == \
            ENDOFTEXT.join(t for _, t in whole)


def test_score_reads_each_row_record_and_line_as_a_document(enc, tmp_path):
    path = write_csv(tmp_path / "d.csv", [["a first review", "5"], ["a second one", "1"]])
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    (tmp_path / "d.txt").write_text("line one\n\nline three\n", encoding="utf-8")
    found = load_documents(enc, [path, str(tmp_path / "d.jsonl"), str(tmp_path / "d.txt")],
                           TextFormat(line_by_line=True))
    assert [d.name for d in found] == [f"{path}:2", f"{path}:3", f"{tmp_path}/d.jsonl:1",
                                       f"{tmp_path}/d.jsonl:3", f"{tmp_path}/d.txt:1", f"{tmp_path}/d.txt:3"]
    assert [enc.decode(d.tokens) for d in found] == [
        f"{STARTOFTEXT}a first review{ENDOFTEXT}", f"{STARTOFTEXT}a second one{ENDOFTEXT}", "one", "two",
        "line one", "line three"]
    assert [d.name for d in load_documents(enc, [str(tmp_path / "d.txt")])] == [f"{tmp_path}/d.txt"]


# ---------------------------------------------------------------------------------------------------
# The scripts.


def run_encode(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "encode.py"), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_encode_py_reads_csv_and_jsonl_and_refuses_a_bad_line_in_one_line(vocab_dir, tmp_path):
    models = ["--models_dir", os.path.dirname(vocab_dir), "--model_name", os.path.basename(vocab_dir)]
    write_csv(tmp_path / "d.csv", [["b1", "a text"], ["b2", "another"]], header=("id", "body"))
    done = run_encode("d.csv", "out.npz", "--csv_column", "body", "--end_token", "", *models, "--quiet",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    enc = get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))
    with np.load(tmp_path / "out.npz") as npz:
        assert enc.decode(npz["arr_0"]) == f"{STARTOFTEXT}a text\n{STARTOFTEXT}another\n{ENDOFTEXT}"
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    done = run_encode("bad.jsonl", "bad.npz", *models, "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "encode.py: error: bad.jsonl line 2: not valid JSON (Expecting value at column 10)"]
    assert not (tmp_path / "bad.npz").exists()


def test_train_bpe_counts_the_texts_of_a_jsonl_file_not_its_syntax(tmp_path):
    from gpt2_tf.bpe import count_files

    texts = [t for t in TEXTS if t.strip()]
    records = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "d.jsonl").write_text(records, encoding="utf-8")
    (tmp_path / "d.txt").write_text(ENDOFTEXT.join(texts), encoding="utf-8")
    counts = count_files([str(tmp_path / "d.jsonl")])
    assert counts == count_files([str(tmp_path / "d.txt")]) and '"text"' not in "".join(counts)


# ---------------------------------------------------------------------------------------------------
# A held-out split (train.py --val_split): which documents, and what the loaders keep.


@pytest.mark.parametrize("n, fraction", [(2, 0.5), (3, 0.01), (10, 0.05), (10, 0.99), (1000, 0.05)])
def test_held_out_draws_a_fixed_count_of_distinct_documents_by_its_seed(n, fraction):
    held = held_out(n, fraction, seed=3)
    assert len(held) == min(max(1, round(fraction * n)), n - 1) and len(set(held)) == len(held)
    assert held == sorted(held) and all(0 <= i < n for i in held)
    assert held_out(n, fraction, seed=3) == held
    if n == 1000:
        assert held_out(n, fraction, seed=4) != held


def test_a_split_keeps_exactly_the_documents_of_each_side(enc, tmp_path):
    """Loading with Numbered keeps the documents it names, numbered across files as count_documents
    counts them: the chunks equal those of files that hold only those documents."""
    texts = [f"Record {i}, on its own line." for i in range(9)]
    (tmp_path / "all").mkdir()
    write_csv(tmp_path / "all" / "a.csv", [[t] for t in texts[:4]], header=("text",))
    (tmp_path / "all" / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n\n" for t in texts[4:8]),
                                              encoding="utf-8")
    save_tokens(tmp_path / "all" / "c.npz", [np.arange(5, 9), np.arange(20, 31)])
    (tmp_path / "all" / "d.txt").write_text(texts[8], encoding="utf-8")
    documents_in_order = ([("a.csv", [t]) for t in texts[:4]] + [("b.jsonl", t) for t in texts[4:8]]
                          + [("c.npz", np.arange(5, 9)), ("c.npz", np.arange(20, 31)), ("d.txt", texts[8])])
    assert count_documents(str(tmp_path / "all")) == len(documents_in_order) == 11
    held = [1, 5, 8, 10]
    for inside in (True, False):
        chosen = [d for i, d in enumerate(documents_in_order) if (i in held) == inside]
        only = tmp_path / f"only-{inside}"
        only.mkdir()
        csv_rows = [text for name, text in chosen if name == "a.csv"]
        if csv_rows:
            write_csv(only / "a.csv", csv_rows, header=("text",))
        records = [text for name, text in chosen if name == "b.jsonl"]
        if records:
            (only / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in records),
                                          encoding="utf-8")
        arrays = [array for name, array in chosen if name == "c.npz"]
        if arrays:
            save_tokens(only / "c.npz", arrays)
        if any(name == "d.txt" for name, _ in chosen):
            (only / "d.txt").write_text(texts[8], encoding="utf-8")
        wanted = Numbered(held, inside)
        split = load_dataset(enc, str(tmp_path / "all"), progress=False, wanted=wanted)
        assert wanted.count == 11
        expected = load_dataset(enc, str(only), progress=False)
        assert [c.tolist() for c in split] == [c.tolist() for c in expected]
        wanted = Numbered(held, inside)
        scored = load_documents(enc, sorted(str(p) for p in (tmp_path / "all").iterdir()), wanted=wanted)
        reference = load_documents(enc, sorted(str(p) for p in only.iterdir()))
        assert [d.tokens.tolist() for d in scored] == [d.tokens.tolist() for d in reference]
