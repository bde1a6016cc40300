"""LiteRT models (convert.py --to litert): drawn as sample.py draws, by LiteRT's own interpreter, with
builtin ops only, and run by sample.py without TensorFlow."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_checks import ROOT, TF_LOG, assert_refused, snapshot

from gpt2_tf.checkpoint import load_model
from gpt2_tf.convert import read, write
from gpt2_tf.decoding import Controls
from gpt2_tf.litert_runtime import LiteRTGenerator, interpreter
from gpt2_tf.model_files import LITERT_FILE, LITERT_SCORE_FILE
from gpt2_tf.sample import Generator

PROMPTS = [[464, 3290, 318, 257], [15496], [40, 588, 6184, 11, 290, 612, 13]]


@pytest.fixture(scope="module")
def tiny_litert(tiny_model, tmp_path_factory):
    """{quantization: LiteRT model folder} of the tiny model, in its models_dir beside it."""
    models_dir, name, _ = tiny_model
    data = read(os.path.join(models_dir, name))
    folders = {}
    for quantize in ("float32", "int8"):
        folders[quantize] = os.path.join(models_dir, f"{name}-litert-{quantize}")
        if not os.path.exists(folders[quantize]):
            write(data, folders[quantize], "litert", progress=False, quantize=quantize)
    return folders


@pytest.fixture(scope="module")
def tiny_tf(tiny_model):
    models_dir, name, _ = tiny_model
    model, hparams = load_model(os.path.join(models_dir, name))
    return model, hparams


def litert_generator(folder, hparams):
    return LiteRTGenerator(os.path.join(folder, LITERT_FILE), hparams)


def drawn(generator, prompts, length, **settings):
    *_, state = generator.draws(prompts, length, **settings)
    return [list(row) for row in state.new_tokens()]


def test_the_file_holds_builtin_ops_only(tiny_litert, tiny_tf):
    """LiteRT's own interpreter loads the files as written, and every op in them is a builtin: no Flex
    (TensorFlow) op and no custom op, so a stock LiteRT (a phone's) runs them. model.tflite holds the
    generation signatures (only those: a sampler loads no scoring weights), score.tflite the scoring
    ones."""
    for folder in tiny_litert.values():
        tflite = sorted(f for f in os.listdir(folder) if f.endswith(".tflite"))
        assert tflite == [LITERT_FILE, LITERT_SCORE_FILE]
        for name in (LITERT_FILE, LITERT_SCORE_FILE):
            ops = interpreter(os.path.join(folder, name))._get_ops_details()
            names = collections.Counter(op["op_name"] for op in ops)
            assert names["FULLY_CONNECTED"] > 0
            assert not [n for n in names if n.startswith("Flex") or n in ("CUSTOM", "DELEGATE_FLEX")], names
    signatures = interpreter(os.path.join(tiny_litert["int8"], LITERT_FILE)).get_signature_list()
    assert sorted(signatures) == ["decode", "prompt"]
    assert "key_0" in signatures["decode"]["inputs"] and "present" in signatures["prompt"]["outputs"]
    scoring = interpreter(os.path.join(tiny_litert["int8"], LITERT_SCORE_FILE)).get_signature_list()
    assert sorted(scoring) == ["score", "score_details"]
    assert sorted(scoring["score_details"]["inputs"]) == ["inputs", "targets"]


def test_float32_greedy_equals_sample_py_for_a_ragged_batch(tiny_litert, tiny_tf):
    """Each prompt of a ragged batch continues as sample.py's Generator continues it (greedy, float32),
    through the prompt step and 20 decoding steps, and at batch 1 as in the batch."""
    model, hparams = tiny_tf
    expected = drawn(Generator(model), PROMPTS, 20, temperature=0)
    lite = litert_generator(tiny_litert["float32"], hparams)
    assert drawn(lite, PROMPTS, 20, temperature=0) == expected
    assert [drawn(lite, [p], 20, temperature=0)[0] for p in PROMPTS] == expected


@pytest.mark.parametrize("settings", [dict(top_k=40, seed=7), dict(top_p=0.9, seed=8),
                                      dict(temperature=0.7, top_k=5, top_p=0.8, seed=9)])
def test_float32_draws_are_sample_py_draws(tiny_litert, tiny_tf, settings):
    """The same random streams and filters: with a seed, LiteRT draws the tokens sample.py draws, and a
    row draws the same whatever shares its batch."""
    model, hparams = tiny_tf
    rows = [(p, 0) for p in range(len(PROMPTS))]
    expected = drawn(Generator(model), PROMPTS, 16, rows=rows, **settings)
    lite = litert_generator(tiny_litert["float32"], hparams)
    assert drawn(lite, PROMPTS, 16, rows=rows, **settings) == expected
    assert drawn(lite, PROMPTS[1:2], 16, rows=rows[1:2], **settings) == expected[1:2]


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(top_k=40, seed=7), dict(top_p=0.9, seed=8)])
def test_float32_draws_with_every_control_are_sample_py_draws(tiny_litert, tiny_tf, settings):
    """The generation controls are sample.py's, traced into the file: with every one on, the same
    tokens and the same log-probabilities, past a slide of the window too."""
    model, hparams = tiny_tf
    controls = Controls(repetition_penalty=1.5, frequency_penalty=0.4, presence_penalty=0.3,
                        no_repeat_ngram_size=2, min_p=0.05, logit_bias=((11, -3.0), (13, 2.0)),
                        banned=((40,), (3290, 318), (11, 290, 612)), logprobs=3)
    rows = [(p, 0) for p in range(len(PROMPTS))]
    length = hparams.n_ctx + 8
    *_, expected = Generator(model).draws(PROMPTS, length, rows=rows, window_shift=24, controls=controls,
                                          **settings)
    *_, got = litert_generator(tiny_litert["float32"], hparams).draws(PROMPTS, length, rows=rows,
                                                                       window_shift=24, controls=controls,
                                                                       **settings)
    assert got.new_tokens().tolist() == expected.new_tokens().tolist()
    for ours, theirs in zip(got.drawn_scores(), expected.drawn_scores()):
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4)
        np.testing.assert_array_equal(ours[2], theirs[2])


def test_what_a_reused_buffer_held_never_reaches_the_draws(tiny_litert, tiny_tf):
    """The cache's buffers are the interpreter's, reused from one generation to the next and
    uninitialised when reallocated: whatever they held (here NaN everywhere) changes no token."""
    model, hparams = tiny_tf
    lite = litert_generator(tiny_litert["float32"], hparams)
    expected = drawn(lite, PROMPTS, 12, top_k=40, seed=3)
    for name in lite.decode.inputs:
        if name.startswith(("key_", "value_")):
            lite.decode.view(name)[...] = np.nan
    assert drawn(lite, PROMPTS, 12, top_k=40, seed=3) == expected


def test_sliding_window_goes_on_as_sample_py_does(tiny_litert, tiny_tf):
    """Past n_ctx, the window slides and the cache is rebuilt as in sample.py (decoding.Drawing)."""
    model, hparams = tiny_tf
    length = hparams.n_ctx + 10
    expected = drawn(Generator(model), PROMPTS[:2], length, temperature=0, window_shift=16)
    lite = litert_generator(tiny_litert["float32"], hparams)
    assert drawn(lite, PROMPTS[:2], length, temperature=0, window_shift=16) == expected


def test_int8_stays_close_to_float32(tiny_litert, tiny_tf):
    """int8 weights: the file is smaller (here by little: the tiny model is nearly all wte, which the
    int8 file holds twice, for the lookup and for the output head, beside the sampler's constants),
    and greedy decoding mostly agrees
    with float32 (a random model's logits are close together, so this is a loose bound;
    docs/litert.md has a trained model's figures)."""
    _, hparams = tiny_tf
    sizes = {q: os.path.getsize(os.path.join(f, LITERT_FILE)) for q, f in tiny_litert.items()}
    assert sizes["int8"] < 0.9 * sizes["float32"]
    full = drawn(litert_generator(tiny_litert["float32"], hparams), PROMPTS, 8, temperature=0)
    int8 = drawn(litert_generator(tiny_litert["int8"], hparams), PROMPTS, 8, temperature=0)
    assert np.mean([a[0] == b[0] for a, b in zip(full, int8)]) >= 2 / 3


def run_sample(models_dir, *args, code=None):
    """sample.py in a new process; `code` runs instead of the script (it reads sys.argv)."""
    command = [sys.executable, "sample.py"] if code is None else [sys.executable, "-c", code]
    return subprocess.run([*command, "--models_dir", models_dir, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


# sample.py run in this process's interpreter; after it, the TensorFlow and Keras modules imported.
WITHOUT_TENSORFLOW = ("import atexit, runpy, sys; atexit.register(lambda: print('imported:', sorted("
                      "m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')), "
                      "file=sys.stderr)); sys.argv[0] = 'sample.py'; "
                      "runpy.run_path('sample.py', run_name='__main__')")


@pytest.mark.slow
def test_sample_py_runs_a_litert_model_without_tensorflow(tiny_model, tiny_litert):
    """sample.py --model_name names a LiteRT folder as any model: the same text as the checkpoint's
    (float32, greedy and seeded, a ragged --prompts batch, the generation controls), no log lines,
    and TensorFlow never imported."""
    models_dir, name, _ = tiny_model
    lite = os.path.basename(tiny_litert["float32"])
    prompts = os.path.join(models_dir, "prompts.txt")
    with open(prompts, "w") as f:
        f.write("Hello there\nThe cat sat on the\nA\n")
    controls = ["--seed", "4", "--temperature", "0.8", "--repetition_penalty", "1.3",
                "--no_repeat_ngram_size", "2", "--ban", "the", "--min_p", "0.05",
                "--frequency_penalty", "0.5", "--presence_penalty", "0.2", "--logit_bias", "13=3"]
    for flags in (["--temperature", "0"], ["--top_k", "40", "--seed", "3", "--nsamples", "2",
                                           "--batch_size", "2"], controls):
        args = ["--prompts", prompts, "--length", "12", *flags]
        expected = run_sample(models_dir, "--model_name", name, *args)
        got = run_sample(models_dir, "--model_name", lite, *args, code=WITHOUT_TENSORFLOW)
        assert expected.returncode == 0 and got.returncode == 0, got.stderr
        assert got.stdout == expected.stdout and "SAMPLE" in got.stdout
        assert got.stderr.splitlines() == ["imported: []"], got.stderr
        assert not TF_LOG.search(got.stderr)


def test_sample_py_refuses_tensorflow_flags_for_a_litert_model(tiny_model, tiny_litert):
    models_dir, _, _ = tiny_model
    lite = os.path.basename(tiny_litert["int8"])
    before = snapshot(models_dir)
    for flag in (["--dtype", "bfloat16"], ["--compile", "xla"], ["--dtype", "float32"]):
        result = run_sample(models_dir, "--model_name", lite, *flag, "--length", "2")
        assert_refused(result, "sample.py", models_dir, before, f"{flag[0]} is for TensorFlow models")


def test_score_py_refuses_a_litert_folder_without_its_scoring_file(tiny_model, tiny_litert, tmp_path):
    """A LiteRT folder that lost score.tflite still samples (sample.py needs only model.tflite), and
    score.py says in one line which file is missing and how to write it."""
    import shutil

    models_dir, _, _ = tiny_model
    shutil.copytree(tiny_litert["int8"], tmp_path / "lite")
    os.remove(tmp_path / "lite" / LITERT_SCORE_FILE)
    text = tmp_path / "text.txt"
    text.write_text("Hello there, this is a text to score.\n")
    before = snapshot(str(tmp_path))
    result = subprocess.run([sys.executable, "score.py", str(text), "--models_dir", str(tmp_path),
                             "--model_name", "lite"], cwd=ROOT, capture_output=True, text=True)
    assert_refused(result, "score.py", str(tmp_path), before, "without score.tflite")
    assert "convert.py" in result.stderr
    sampled = run_sample(str(tmp_path), "--model_name", "lite", "--length", "3", "--temperature", "0")
    assert sampled.returncode == 0 and sampled.stdout, sampled.stderr


def test_convert_py_quantize_is_for_litert_only(tiny_model, tmp_path):
    models_dir, name, _ = tiny_model
    command = ["convert.py", os.path.join(models_dir, name), str(tmp_path / "x"), "--to", "hf",
               "--quantize", "int8"]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert_refused(result, "convert.py", str(tmp_path), {}, "--quantize is for --to litert")


@pytest.mark.slow
def test_log_probabilities_equal_score_py(tiny_model, tiny_litert, tiny_tf):
    """The `score` signatures are score.py's next_token_scores: float32 LiteRT gives score.py's
    log-probability of every token (atol 1e-4), its rank and the most likely tokens, and score.py
    --model_name with the LiteRT folder prints the same table."""
    from gpt2_tf.score import Document, score_documents

    model, hparams = tiny_tf
    rng = np.random.default_rng(3)
    documents = [Document(f"d{i}", rng.integers(0, 50257, size=n).astype(np.int32), None, None)
                 for i, n in enumerate((5, 90, 130))]
    expected = score_documents(model, documents, 64, 32, details=True)
    path = os.path.join(tiny_litert["float32"], LITERT_SCORE_FILE)
    got = score_documents(path, documents, 64, 32, details=True)
    for a, b in zip(got, expected):
        assert a.tokens == b.tokens and a.correct == b.correct
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4)
        # A random model's logits lie close together: float rounding may move a rank by one.
        assert np.all(np.abs(a.rank - b.rank) <= 1) and np.mean(a.rank == b.rank) > 0.9
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        assert abs(a.nll - b.nll) < 1e-3
    models_dir, name, _ = tiny_model
    text = os.path.join(models_dir, "heldout.txt")
    with open(text, "w") as f:
        f.write("It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 3)
    table = {}
    for folder in (name, os.path.basename(tiny_litert["float32"])):
        result = subprocess.run([sys.executable, "score.py", text, "--models_dir", models_dir, "--model_name",
                                 folder, "--quiet", "--json", "-"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and not TF_LOG.search(result.stderr), result.stderr
        table[folder] = json.loads(result.stdout)["total"]
    a, b = table.values()
    assert a["tokens"] == b["tokens"] and abs(a["ppl"] - b["ppl"]) < 1e-3 * a["ppl"]


@pytest.mark.slow
def test_sample_py_runs_where_tensorflow_is_not_installed(tiny_model, tiny_litert, tmp_path):
    """`pip install 'gpt2-tf[litert]'` without TensorFlow: a fresh environment holding only
    ai-edge-litert, numpy, regex, tqdm and this project (installed without its dependencies) runs
    sample.py on a LiteRT model, as in this environment, and never imports TensorFlow."""
    models_dir, _, _ = tiny_model
    lite = os.path.basename(tiny_litert["float32"])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "ai-edge-litert", "numpy", "regex", "tqdm"], check=True, capture_output=True)
    subprocess.run([*pip, "--no-deps", ROOT], check=True, capture_output=True)
    assert subprocess.run([python, "-c", "import tensorflow"], capture_output=True).returncode != 0
    args = ["--models_dir", models_dir, "--model_name", lite, "--prompt", "Hello there", "--length", "12",
            "--top_k", "40", "--seed", "5"]
    code = WITHOUT_TENSORFLOW.replace("runpy.run_path('sample.py', run_name='__main__')",
                                      "runpy.run_module('sample', run_name='__main__')")
    got = subprocess.run([python, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    expected = run_sample(models_dir, *args[2:])
    assert got.returncode == 0, got.stderr
    assert got.stdout == expected.stdout and "SAMPLE 1" in got.stdout
    assert got.stderr.splitlines() == ["imported: []"], got.stderr


@pytest.mark.slow
def test_int8_perplexity_is_within_one_percent_of_float32_on_a_trained_model(demo_run):
    """The demo's model (trained on the Python standard library with its own BPE vocabulary), as
    LiteRT float32 and int8: score.py's perplexity on the held-out files differs by less than 1%."""
    work, run = demo_run
    ppl = {}
    for quantize in ("float32", "int8"):
        folder = work / "models" / f"demo-{quantize}"
        subprocess.run([sys.executable, "convert.py", run, str(folder), "--to", "litert", "--quantize",
                        quantize, "--quiet"], cwd=ROOT, check=True, capture_output=True)
        result = subprocess.run([sys.executable, "score.py", str(work / "val.npz"), "--models_dir",
                                 str(work / "models"), "--model_name", folder.name, "--quiet", "--json", "-"],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        ppl[quantize] = json.loads(result.stdout)["total"]["ppl"]
    assert ppl["float32"] < 2048 / 10, ppl  # it learned: far below the 2048 of a uniform guess
    assert abs(ppl["int8"] / ppl["float32"] - 1) < 0.01, ppl
