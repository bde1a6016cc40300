"""score.py and gpt2_tf/score.py against an independent float64 NumPy scorer of the definitions."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from cli_checks import TF_LOG, assert_refused, snapshot
from numpy_gpt2 import forward

import train as train_script
from gpt2_tf.checkpoint import load_model
from gpt2_tf.cli.train_loop import run
from gpt2_tf.encoder import get_encoder
from gpt2_tf.score import Document, hf_windows, score_documents, totals, windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256


@pytest.fixture(scope="module")
def loaded(tiny_model):
    models_dir, name, weights = tiny_model
    model, hparams = load_model(f"{models_dir}/{name}")
    return model, hparams.to_dict(), weights


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def numpy_score(weights, hparams, tokens, context, stride, prefix):
    """(nll, scored tokens, correct) of one document by the definitions, in float64: every target t_j
    (j >= 1) of t_0 .. t_n is predicted from the window of the block that scores it."""
    seq = ([EOT] if prefix == "eot" else []) + list(tokens)
    n = len(seq) - 1
    ends = [min(context, n)] if n > 0 else []
    while ends and ends[-1] < n:
        ends.append(min(ends[-1] + stride, n))
    nll, count, correct = 0.0, 0, 0
    previous = 0
    for end in ends:
        start = max(0, end - context)
        log_p = log_softmax(forward(weights, hparams, np.array([seq[start:end]]))[0][0])
        for j in range(previous + 1, end + 1):
            row = log_p[j - 1 - start]
            nll -= row[seq[j]]
            correct += row[seq[j]] >= row.max()
            count += 1
        previous = end
    return nll, count, correct


def numpy_hf_score(weights, hparams, tokens, context, stride):
    """Hugging Face's perplexity-guide loop, in float64: (its nll sum, its token count)."""
    nll_sum, n_tokens, previous = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + context, len(tokens))
        target_length = end - previous
        window = np.array([tokens[begin:end]])
        labels = [-100] * (end - begin - target_length) + list(tokens[end - target_length:end])
        log_p = log_softmax(forward(weights, hparams, window)[0][0])
        used = [(i, t) for i, t in enumerate(labels[1:]) if t != -100]  # the model shifts the labels
        mean = -np.mean([log_p[i, t] for i, t in used])
        weight = sum(t != -100 for t in labels) - 1
        nll_sum += mean * weight
        n_tokens += weight
        previous = end
        if end == len(tokens):
            break
    return nll_sum, n_tokens


def documents(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [Document(f"doc{i}", rng.integers(0, 50257, size=n).astype(np.int32))
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("context, stride, prefix", [(64, 32, "eot"), (16, 5, "eot"), (16, 16, "none"),
                                                     (10, 1, "none")])
def test_scores_agree_with_an_independent_numpy_scorer(loaded, context, stride, prefix):
    model, hparams, weights = loaded
    docs = documents([1, 7, 40, 100])
    scored = score_documents(model, docs, context, stride, prefix, batch_size=3)
    for s, doc in zip(scored, docs):
        nll, count, correct = numpy_score(weights, hparams, doc.tokens, context, stride, prefix)
        assert s.tokens == count == len(doc.tokens) - (prefix == "none")
        assert s.nll == pytest.approx(nll, rel=1e-5, abs=1e-6)
        assert s.correct == correct


def test_windows_score_every_target_once_with_the_context_promised():
    for n, context, stride in [(1, 4, 2), (5, 4, 2), (100, 16, 5), (100, 16, 16), (33, 8, 1)]:
        found = windows(n, context, stride)
        targets = [j for b in found for j in range(b.first, b.last + 1)]
        assert targets == list(range(1, n + 1))
        for b in found:
            assert b.last - b.start <= context and b.start == max(0, b.last - context)
        for b in found[1:]:  # after the first block, at least C - S tokens before each target
            assert b.first - 1 - b.start >= context - stride
    assert [(b.start, b.first, b.last, b.weight) for b in hf_windows(10, 4, 4)] == \
        [(0, 1, 3, 3), (4, 5, 7, 3), (8, 9, 9, 1)]


@pytest.mark.parametrize("context, stride", [(64, 64), (64, 32), (20, 7)])
def test_compat_hf_is_the_perplexity_guides_loop(loaded, context, stride):
    model, hparams, weights = loaded
    docs = documents([150])
    scored = score_documents(model, docs, context, stride, compat="hf", batch_size=2)
    nll, count = numpy_hf_score(weights, hparams, list(docs[0].tokens), context, stride)
    assert scored[0].tokens == count
    assert scored[0].nll == pytest.approx(nll, rel=1e-5)


def test_results_do_not_depend_on_the_batch_size(loaded):
    model, _, _ = loaded
    docs = documents([3, 50, 130, 9], seed=1)
    results = [score_documents(model, docs, 64, 16, batch_size=b) for b in (1, 2, 7)]
    for others in results[1:]:
        for a, b in zip(results[0], others):
            assert (a.tokens, a.correct) == (b.tokens, b.correct)
            assert a.nll == pytest.approx(b.nll, rel=1e-6)


def test_stride_does_nothing_for_documents_shorter_than_the_context(loaded):
    model, _, _ = loaded
    docs = documents([30, 63], seed=2)
    results = [score_documents(model, docs, 64, stride) for stride in (1, 10, 64)]
    for others in results[1:]:
        assert [s.nll for s in others] == [s.nll for s in results[0]]


def test_zero_logits_give_the_log_of_the_vocabulary_size(loaded):
    model, _, _ = loaded
    saved = model.wte.numpy()
    model.wte.assign(np.zeros_like(saved))
    try:
        total = totals(score_documents(model, documents([20, 5]), 64, 32))
    finally:
        model.wte.assign(saved)
    assert total["loss"] == pytest.approx(math.log(50257), rel=1e-6)
    assert total["ppl"] == pytest.approx(50257, rel=1e-5)


def test_totals_are_sums_over_documents_never_averages():
    scored = [type("S", (), dict(tokens=10, nll=10.0, correct=5, document=Document("a", None, 40, 8)))(),
              type("S", (), dict(tokens=30, nll=90.0, correct=6, document=Document("b", None, 100, 20)))()]
    total = totals(scored)
    assert total["loss"] == pytest.approx(100 / 40) and total["ppl"] == pytest.approx(math.exp(2.5))
    assert total["bpb"] == pytest.approx(100 / (140 * math.log(2)))
    assert total["word_ppl"] == pytest.approx(math.exp(100 / 28))
    assert total["accuracy"] == pytest.approx(11 / 40)


# ---------------------------------------------------------------------------------------------------
# score.py


def run_score(*argv):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "score.py"), *argv], capture_output=True,
                          text=True, env=env, timeout=300)


def test_score_script_table_json_tsv_html(loaded, tiny_model, tmp_path, vocab_dir):
    model, hparams, weights = loaded
    models_dir, name, _ = tiny_model
    texts = {"a.txt": "The quick brown fox.\nIt jumps over the lazy dog. " * 3,
             "b.txt": "Caf\u00e9 \u2603 <|endoftext|> second part, with   spaces\r\n and lines.\n"}
    for file, text in texts.items():
        (tmp_path / file).write_bytes(text.encode("utf-8"))
    outputs = [a for kind in ("json", "tsv", "html") for a in (f"--{kind}", str(tmp_path / f"s.{kind}"))]
    out = run_score(str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--models_dir", models_dir,
                    "--model_name", name, "--context", "32", "--stride", "8", *outputs)
    assert out.returncode == 0, out.stderr
    assert not TF_LOG.search(out.stderr) and "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["document", "tokens", "bytes", "words", "loss", "ppl", "bits/byte", "word",
                                "ppl", "accuracy"]
    names = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "TOTAL"]
    assert [line.split()[0] for line in lines[1:]] == names

    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (data["context"], data["stride"], data["prefix"]) == (32, 8, "eot")
    enc = get_encoder(name, models_dir)
    total_nll = 0.0
    for doc, (file, raw) in zip(data["documents"], texts.items()):
        text = raw.replace("\r\n", "\n")  # read as text, as encode.py reads it
        tokens = enc.encode_with_eot(text)
        assert EOT in tokens or file == "a.txt"
        nll, count, correct = numpy_score(weights, hparams, tokens, 32, 8, "eot")
        assert (doc["tokens"], doc["correct"]) == (count, correct)
        assert doc["nll"] == pytest.approx(nll, rel=1e-5)
        assert doc["bytes"] == len(text.encode("utf-8")) and doc["words"] == len(re.split(r"\s+", text))
        total_nll += nll
    total = data["total"]
    assert total["nll"] == pytest.approx(total_nll, rel=1e-5)
    assert total["ppl"] == pytest.approx(math.exp(total["nll"] / total["tokens"]))

    rows = (tmp_path / "s.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["document", "position", "id", "token", "logprob", "rank", "entropy"]
    cells = [row.split("\t") for row in rows[1:]]
    assert len(cells) == total["tokens"] and all(len(c) == 7 for c in cells)
    assert -sum(float(c[4]) for c in cells) == pytest.approx(total["nll"], rel=1e-6)
    assert sum(int(c[5]) == 1 for c in cells) == total["correct"]
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    # One piece per token but for the snowman, whose three bytes are two tokens.
    assert page.count("<span") == total["tokens"] - 1 and "<script" not in page and "http" not in page
    assert " \u2603</span>" in page


def test_score_script_scores_each_record_of_a_jsonl_file(loaded, tiny_model, tmp_path):
    _, hparams, weights = loaded
    models_dir, name, _ = tiny_model
    texts = ["A first review, short.", "A second one\nover two lines."]
    records = json.dumps({"text": texts[0]}) + "\n\n" + json.dumps({"text": texts[1]})
    (tmp_path / "r.jsonl").write_text(records, encoding="utf-8")
    out = run_score(str(tmp_path / "r.jsonl"), "--models_dir", models_dir, "--model_name", name, "--json",
                    str(tmp_path / "s.json"), "--show_documents", "--context", "16")
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == [f"{tmp_path}/r.jsonl:1",
                                                                         f"{tmp_path}/r.jsonl:3", "TOTAL"]
    enc = get_encoder(name, models_dir)
    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    for doc, text in zip(data["documents"], texts, strict=True):
        nll, count, _ = numpy_score(weights, hparams, enc.encode(text), 16, 8, "eot")
        assert doc["tokens"] == count and doc["nll"] == pytest.approx(nll, rel=1e-5)


def test_score_views_show_split_characters_as_text(tiny_model, tmp_path, vocab_dir):
    """The issue's own text: the HTML shows characters (one piece per character, however many tokens
    it took), the TSV each token's bytes, never U+FFFD."""
    from gpt2_tf.token_text import spans

    models_dir, name, _ = tiny_model
    text = "第一章 / 很久很久以前，有一个小女孩。😀"
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    out = run_score(str(tmp_path / "zh.txt"), "--models_dir", models_dir, "--model_name", name, "--quiet",
                    "--tsv", str(tmp_path / "s.tsv"), "--html", str(tmp_path / "s.html"))
    assert out.returncode == 0, out.stderr
    enc = get_encoder(name, models_dir)
    tokens = enc.encode(text)
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "\ufffd" not in page and page.count("<span") == len(spans(enc, tokens)) < len(tokens)
    assert ">第</span>" in page and ">孩</span>" in page
    cells = [row.split("\t")[3] for row in (tmp_path / "s.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert len(cells) == len(tokens) and "\ufffd" not in "".join(cells)
    # Unescaped, the cells are the text's bytes.
    data = b"".join(re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), c.encode()) for c in cells)
    assert data.decode("utf-8") == text


@pytest.mark.slow
def test_npz_input_gives_token_figures_only(loaded, tiny_model, tmp_path):
    models_dir, name, _ = tiny_model
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", rng.integers(0, 50257, 40).astype(np.uint16), rng.integers(0, 50257, 9))
    out = run_score(str(tmp_path / "d.npz"), "--models_dir", models_dir, "--model_name", name, "--json",
                    str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "tokens only" in out.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["total"]["tokens"] == 49 and data["total"]["bpb"] is None and data["total"]["loss"] > 0
    # The first array as a nanoGPT .bin file (memory-mapped) is one document, scored the same.
    with np.load(tmp_path / "d.npz") as npz:
        npz["arr_0"].tofile(tmp_path / "d.bin")
    out = run_score(str(tmp_path / "d.bin"), "--models_dir", models_dir, "--model_name", name, "--json",
                    str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    (document,) = json.loads((tmp_path / "b.json").read_text())["documents"]
    assert document["name"] == str(tmp_path / "d.bin") and document["tokens"] == 40
    assert document["nll"] == pytest.approx(data["documents"][0]["nll"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/t.txt", "--context", "8", "--stride", "9"], "--stride 9 is more than --context 8"),
    (["{tmp}/t.txt", "--context", "65"], "--context 65 is more than the model's n_ctx = 64"),
    (["{tmp}/empty.txt"], "nothing to score"),
    (["{tmp}/nothing.txt"], "nothing.txt"),
    (["{tmp}/t.txt", "--compat", "hf", "--tsv", "{tmp}/x.tsv"], "--compat hf"),
    (["{tmp}/t.txt", "--stride", "0"], "--stride"),
    (["{tmp}/t.txt", "--json", "{tmp}/no/s.json"], "does not exist"),
])
def test_score_script_refuses_bad_input_in_one_line(tiny_model, tmp_path, argv, message):
    models_dir, name, _ = tiny_model
    (tmp_path / "t.txt").write_text("Some text to score.", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    before = snapshot(tmp_path)
    out = run_score(*[a.replace("{tmp}", str(tmp_path)) for a in argv], "--models_dir", models_dir,
                    "--model_name", name)
    assert_refused(out, "score.py", tmp_path, before, message)


def test_train_val_full_scores_the_validation_data_as_score_does(loaded, tiny_model, tmp_path):
    model, _, _ = loaded
    models_dir, name, _ = tiny_model
    (tmp_path / "train.txt").write_text("One two three four five six seven. " * 60, encoding="utf-8")
    (tmp_path / "val.txt").write_text("Eight nine ten, and so on. " * 20, encoding="utf-8")
    run(train_script.parse_args([
        "--dataset", str(tmp_path / "train.txt"), "--val_dataset", str(tmp_path / "val.txt"), "--val_full",
        "--val_every", "5", "--steps", "1", "--model_name", name, "--models_dir", models_dir,
        "--checkpoint_dir", str(tmp_path / "ckpt"), "--sample_every", "0", "--batch_size", "1"]))
    values = {}
    for event_file in (tmp_path / "ckpt" / "run1").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                values[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    enc = get_encoder(name, models_dir)
    text = (tmp_path / "val.txt").read_text(encoding="utf-8")
    expected = totals(score_documents(model, [Document.from_text("val", text, enc.encode_with_eot)], 64, 32))
    assert values["val_loss", 0] == pytest.approx(expected["loss"], rel=1e-5)
    assert values["val_ppl", 0] == pytest.approx(expected["ppl"], rel=1e-5)
    assert values["val_accuracy", 0] == pytest.approx(expected["accuracy"])


@pytest.mark.parametrize("content, message", [("{", "line 1 column 2"),
                                              ('{"dataset": "x"}', "no valid 'val_split'"),
                                              ("[1]", "not the record")])
def test_a_damaged_held_out_record_is_refused_in_one_line(tiny_model, tmp_path, content, message):
    models_dir, name, _ = tiny_model
    (tmp_path / "ckpt" / "run1").mkdir(parents=True)
    (tmp_path / "ckpt" / "run1" / "held_out.json").write_text(content, encoding="utf-8")
    before = snapshot(tmp_path)
    out = run_score("--held_out", "run1", "--checkpoint_dir", str(tmp_path / "ckpt"), "--models_dir",
                    models_dir, "--model_name", name)
    assert_refused(out, "score.py", tmp_path, before, "cannot read")
    assert message in out.stderr
