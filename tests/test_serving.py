"""convert.py --to saved_model: a SavedModel that a plain TensorFlow serves, with the tokenizer, the
sampler and the scores of this project inside.

The client (tests/serving_client.py) runs in its own process with gpt2_tf, keras, keras_hub and
tensorflow_text impossible to import; the slow test runs it in a new virtual environment holding
nothing but TensorFlow. Its answers are checked against encoder.py, sample.py and score.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_convert import VARIED
from tf1_model import TINY_HPARAMS

from gpt2_tf.checkpoint import load_model
from gpt2_tf.encoder import get_encoder
from gpt2_tf.graph_encoder import GraphEncoder
from gpt2_tf.sample import sample_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "tests", "serving_client.py")
EOT = 50256
N_CTX = TINY_HPARAMS["n_ctx"]
N_VOCAB = TINY_HPARAMS["n_vocab"]
# Where GPT-2's pre-tokenizer needs its lookahead, and characters whose class only Unicode knows.
TRICKY = ["  's", "hi  's", "a  b", "a \n b", "end   ", "   ", " " * 1000 + "word", "\n\n\nx", "\r\n\r\n",
          "\u00a0\u2003 nbsp\u3000ideographic", "\x85next\u2028line", "a\x00b\x01c\x7f", "٣٤٥ Ⅻ ½ ²",
          "tab\t\t\tword", "'ll've 're'", "A" * 300, "x" + "\u0301" * 5, ""]
SETTINGS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


@pytest.fixture(scope="module")
def graph_encoder(enc):
    return GraphEncoder(enc.encoder, sorted(enc.bpe_ranks, key=enc.bpe_ranks.get))


# ---------------------------------------------------------------------------------------------------
# The tokenizer in graph operations, against encoder.py.


def test_graph_tokenizer_gives_encoder_ids(enc, graph_encoder):
    texts = VARIED + TRICKY
    got = graph_encoder.encode(tf.constant(texts)).to_list()
    for text, ids in zip(texts, got):
        assert ids == enc.encode(text), repr(text)


ALPHABET = "ab Z 'sltdmrev\n\r\t\u00a0\u3000\x85é漢😀👍🏽\u200d0123456789.,!?-_\"'" + " " * 6


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(ALPHABET, max_size=60), min_size=1, max_size=4))
def test_graph_tokenizer_on_random_text(enc, graph_encoder, texts):
    for text, ids in zip(texts, graph_encoder.encode(tf.constant(texts)).to_list()):
        assert ids == enc.encode(text), repr(text)


def test_graph_decoder_gives_encoder_text(enc, graph_encoder):
    rng = np.random.default_rng(0)
    byte_tokens = [enc.encoder[enc.byte_encoder[b]] for b in range(128, 256)]  # pieces of UTF-8 sequences
    rows = [rng.choice(byte_tokens + [EOT, 198, 220, 15496], 20).tolist() for _ in range(30)]
    rows += [rng.integers(0, 50257, 20).tolist() for _ in range(10)]
    texts = graph_encoder.decode(tf.constant(rows)).numpy()
    for row, text in zip(rows, texts):
        assert text.decode("utf-8") == enc.decode(row), row


# ---------------------------------------------------------------------------------------------------
# The exported SavedModel, through a client that only has TensorFlow.


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    models_dir, name, _ = tiny_model
    folder = tmp_path_factory.mktemp("served") / "gpt2"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), f"{models_dir}/{name}",
                             str(folder), "--to", "saved_model", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return folder


def ask(folder, requests, tmp_path, python=sys.executable):
    """The client's answers to requests [(signature, inputs)], in a process of its own."""
    with open(tmp_path / "requests.json", "w", encoding="utf-8") as f:
        json.dump([{"signature": s, "inputs": i} for s, i in requests], f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([python, "-I", CLIENT, str(folder / "1"), str(tmp_path / "requests.json"),
                             str(tmp_path / "results.json")], capture_output=True, text=True,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))


def padded(rows):
    width = max(1, max(len(r) for r in rows))
    return [r + [0] * (width - len(r)) for r in rows], [len(r) for r in rows]


def sample_py(tiny_model, prompts, length, tmp_path):
    """sample.py --top_k 1's continuation of each prompt (a ragged batch, --prompts .jsonl)."""
    models_dir, name, _ = tiny_model
    with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    argv = ["--models_dir", models_dir, "--model_name", name, "--prompts", str(tmp_path / "prompts.jsonl"),
            "--top_k", "1", "--length", str(length), "--batch_size", str(len(prompts)), "--output_format",
            "jsonl", "--output", str(tmp_path / "out.jsonl"), "--seed", "3"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *argv], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["text"].split("<|endoftext|>")[0] for row in rows]


def score_py(tiny_model, texts, tmp_path):
    """score.py's per-token log-probabilities of each text (a file each), from its --tsv."""
    models_dir, name, _ = tiny_model
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "score.py"), *map(str, files), "--models_dir",
                             models_dir, "--model_name", name, "--tsv", str(tmp_path / "s.tsv"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in (tmp_path / "s.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    return [[float(r[4]) for r in rows if r[0] == str(path)] for path in files]


def test_saved_model_layout_and_size(exported, tiny_model):
    models_dir, name, _ = tiny_model
    assert sorted(os.listdir(exported)) == ["1"]
    assert {"saved_model.pb", "variables"} <= set(os.listdir(exported / "1"))
    checkpoint = os.path.getsize(f"{models_dir}/{name}/model.ckpt.data-00000-of-00001")
    variables = sum(os.path.getsize(exported / "1" / "variables" / f)
                    for f in os.listdir(exported / "1" / "variables"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(exported) for f in fs)
    assert abs(variables - checkpoint) < 0.02 * checkpoint  # the weights, once
    # the graphs of the seven signatures (about 4.5 MB) and the vocabulary (about 2 MB of tables), and no
    # copy of the weights (6.5 MB)
    assert total - variables < 9e6


@pytest.mark.slow
def test_a_plain_tensorflow_client_gets_sample_py_and_score_py_results(exported, tiny_model, enc, tmp_path):
    prompts = ["Hello there", "A much longer prompt, with punctuation and some more words in it.", "x"]
    ids, lengths = padded([enc.encode(p) for p in prompts])
    greedy = {"max_new_tokens": 12, **SETTINGS, "top_k": 1}
    texts = ["The quick brown fox jumps over the lazy dog.", "Short one", " naïve café, 1234 — ok?"]
    score_ids, score_lengths = padded([enc.encode(t) for t in texts])
    too_long, _ = padded([list(range(1, N_CTX - 5))])
    requests = [
        ("tokenize", {"prompt": VARIED + TRICKY}),
        ("serving_default", {"prompt": prompts, **greedy}),
        ("generate_ids", {"input_ids": ids, "lengths": lengths, **greedy, "temperature": 0.0}),
        ("generate_ids_xla", {"input_ids": ids, "lengths": lengths, **greedy, "temperature": 0.0}),
        ("generate_ids_xla", {"input_ids": ids, "lengths": lengths, "max_new_tokens": 10, **SETTINGS,
                              "seed": 5}),
        ("serving_default", {"prompt": [""], **greedy}),
        ("serving_default", {"prompt": prompts, "max_new_tokens": 10, **SETTINGS, "seed": 5}),
        ("serving_default", {"prompt": prompts, "max_new_tokens": 10, **SETTINGS, "seed": 5}),
        ("serving_default", {"prompt": prompts[:1], "max_new_tokens": 10, **SETTINGS, "seed": 5}),
        ("serving_default", {"prompt": prompts, "max_new_tokens": 10, **SETTINGS, "seed": 6, "top_k": 40,
                             "top_p": 0.9}),
        ("score", {"input_ids": score_ids, "lengths": score_lengths}),
        ("generate_ids", {"input_ids": too_long, "lengths": [N_CTX - 6], **greedy}),
        ("serving_default", {"prompt": prompts, **greedy, "max_new_tokens": 0}),
        ("generate_ids", {"input_ids": [[5, 50257, 0]], "lengths": [2], **greedy}),
        ("generate_ids_xla", {"input_ids": [[5, -3]], "lengths": [2], **greedy}),
        ("score", {"input_ids": [[5, 6, 99999]], "lengths": [3]}),
        ("score", {"input_ids": [[5, 6, 99999]], "lengths": [2]}),  # past the row's length: padding
    ]
    result = ask(exported, requests, tmp_path)
    names = ["generate_controls", "generate_ids", "generate_ids_controls", "generate_ids_xla", "score",
             "serving_default", "tokenize"]
    assert result["signatures"] == names
    (tokenized, served, generated, compiled, compiled_sampled, empty, first, again, alone, filtered, scored,
     long_error, zero_error, id_error, xla_id_error, score_id_error, padded_score) = result["answers"]

    # The tokenizer inside the graph gives encoder.py's ids.
    for text, row, n in zip(VARIED + TRICKY, tokenized["input_ids"], tokenized["lengths"]):
        assert row[:n] == enc.encode(text), repr(text)

    # Greedy text is sample.py's, for each prompt of a ragged batch; ids in gives the same tokens.
    assert served["text"] == sample_py(tiny_model, prompts, 12, tmp_path)
    assert generated["token_ids"] == served["token_ids"] and generated["lengths"] == served["lengths"]
    assert compiled == generated
    for row, n, text in zip(served["token_ids"], served["lengths"], served["text"]):
        assert enc.decode(row[:n]) == text and all(t == EOT for t in row[n:])
    model, _ = load_model(os.path.join(*tiny_model[:2]))
    unconditional = sample_sequence(model, 12, start_token=EOT, batch_size=1, top_k=1)[0, 1:].tolist()
    expected = unconditional[:unconditional.index(EOT)] if EOT in unconditional else unconditional
    assert empty["token_ids"][0][:empty["lengths"][0]] == expected

    # Sampling: the same seed gives the same tokens, a row's stream depends on its row alone, and the
    # filters give other tokens.
    assert first == again and alone["token_ids"][0] == first["token_ids"][0]
    assert compiled_sampled["token_ids"] == first["token_ids"]  # XLA draws the same tokens
    assert filtered["token_ids"] != first["token_ids"]
    for answer in (first, filtered):
        for row, n, text in zip(answer["token_ids"], answer["lengths"], answer["text"]):
            assert enc.decode(row[:n]) == text

    # score: score.py's per-token values.
    for row, n, expected in zip(scored["log_probs"], score_lengths, score_py(tiny_model, texts, tmp_path)):
        np.testing.assert_allclose(row[:n], expected, atol=1e-4)
        assert row[n:] == [0.0] * (len(row) - n)

    # Requests the model cannot serve are errors that say why.
    assert (f"the longest prompt and max_new_tokens together pass the n_ctx = {N_CTX} positions of the "
            "model") in long_error["error"]
    assert "max_new_tokens must be at least 1" in zero_error["error"]
    # Ids outside the vocabulary are refused (a GPU's gather would read zeros, XLA's clamp them).
    for answer, bad in ((id_error, "50257"), (xla_id_error, "-3"), (score_id_error, "99999")):
        assert f"input_ids must be token ids from 0 to {N_VOCAB - 1}; got" in answer["error"] and bad in \
            answer["error"]
    assert "log_probs" in padded_score


@pytest.mark.slow
def test_the_controls_signatures_draw_what_sample_py_draws(exported, tiny_model, enc, tmp_path):
    """generate_ids_controls and generate_controls: with every control on, the greedy tokens of
    sample_sequence with the same controls, and the model's log-probabilities; with the controls at
    their off values, generate_ids' tokens."""
    from gpt2_tf.decoding import Controls

    prompts = [enc.encode(p) for p in ("Hello there", "A longer prompt, with more words in it.", "x")]
    ids, lengths = padded(prompts)
    greedy = {"max_new_tokens": 12, **SETTINGS, "temperature": 0.0}
    on = {"repetition_penalty": 1.5, "frequency_penalty": 0.4, "presence_penalty": 0.3,
          "no_repeat_ngram_size": 2, "min_p": 0.1, "logit_bias_ids": [13, 11],
          "logit_bias_values": [2.0, -3.0],
          "banned": [[40, -1], [3290, 318]], "logprobs": 3}
    off = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
           "no_repeat_ngram_size": 0, "min_p": 0.0, "logit_bias_ids": [], "logit_bias_values": [],
           "banned": [[-1]], "logprobs": 0}  # an empty sequence bans nothing
    sampled = {"max_new_tokens": 10, **SETTINGS, "seed": 5, "top_k": 40}
    requests = [("generate_ids_controls", {"input_ids": ids, "lengths": lengths, **greedy, **on}),
                ("generate_controls", {"prompt": [enc.decode(p) for p in prompts], **greedy, **on}),
                ("generate_ids_controls", {"input_ids": ids, "lengths": lengths, **sampled, **off}),
                ("generate_ids", {"input_ids": ids, "lengths": lengths, **sampled})]
    with_controls, served, off_controls, plain = ask(exported, requests, tmp_path)["answers"]
    model, _ = load_model(os.path.join(*tiny_model[:2]))
    controls = Controls(1.5, 0.4, 0.3, 2, 0.1, ((11, -3.0), (13, 2.0)), ((40,), (3290, 318)), 3)
    expected = sample_sequence(model, 12, context=prompts, temperature=0, controls=controls)
    for prompt, row, got, n in zip(prompts, expected, with_controls["token_ids"], with_controls["lengths"]):
        assert got[:n] == row[len(prompt):len(prompt) + n].tolist()
    assert served["token_ids"] == with_controls["token_ids"]
    assert np.array(with_controls["top_ids"]).shape == (3, 12, 3)
    for prompt, got, n, logprobs in zip(prompts, with_controls["token_ids"], with_controls["lengths"],
                                        with_controls["token_logprobs"]):
        for i in range(n):
            logits = model(np.array([prompt + got[:i]], np.int32))["logits"].numpy()[0, -1].astype(np.float64)
            np.testing.assert_allclose(logprobs[i], logits[got[i]] - np.logaddexp.reduce(logits), atol=1e-4)
    assert off_controls["token_ids"] == plain["token_ids"]


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    shown = subprocess.run([cli, "show", "--all", "--dir", str(exported / "1")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    for name in ("serving_default", "generate_ids", "generate_ids_xla", "score", "tokenize", "prompt",
                 "max_new_tokens",
                 "temperature", "top_k", "top_p", "seed", "input_ids", "lengths", "log_probs", "text",
                 "token_ids"):
        assert f"['{name}']" in shown.stdout or f"signature_def['{name}']" in shown.stdout, name
    run = subprocess.run([cli, "run", "--dir", str(exported / "1"), "--tag_set", "serve", "--signature_def",
                          "serving_default", "--input_exprs",
                          "prompt=['Hello there'];max_new_tokens=5;temperature=0.0;top_k=0;top_p=1.0;seed=0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Result for output key text:" in run.stdout and "Result for output key lengths:" in run.stdout


@pytest.mark.slow
def test_a_virtual_environment_with_only_tensorflow_serves_it(exported, enc, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", f"tensorflow=={tf.__version__}"],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "tensorflow" in names and not names & {"gpt2-tf", "keras-hub", "tensorflow-text", "torch"}
    # The three signatures on a ragged batch answer as they do in the test above, which checks them
    # against sample.py and score.py.
    prompts = ["Hello there", "Another prompt, longer than the first one"]
    ids, lengths = padded([enc.encode(p) for p in prompts])
    greedy = {"max_new_tokens": 8, **SETTINGS, "temperature": 0.0}
    requests = [("serving_default", {"prompt": prompts, **greedy}),
                ("generate_ids", {"input_ids": ids, "lengths": lengths, **greedy}),
                ("score", {"input_ids": ids, "lengths": lengths})]
    alone = ask(exported, requests, tmp_path, python=python)["answers"]
    here = ask(exported, requests, tmp_path)["answers"]
    assert alone[:2] == here[:2]
    np.testing.assert_allclose(alone[2]["log_probs"], here[2]["log_probs"], atol=1e-5)
    served, generated, _ = alone
    assert [enc.decode(r[:n]) for r, n in zip(served["token_ids"], served["lengths"])] == served["text"]
    assert generated["token_ids"] == served["token_ids"]
