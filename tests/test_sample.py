"""Sampling: the filters keep exactly the right tokens, greedy decoding follows an independent NumPy
forward pass, and sample.py prints what the original printed."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from numpy_gpt2 import forward

import sample as sample_script
from gpt2_tf import get_encoder, sample
from gpt2_tf.checkpoint import load_model
from gpt2_tf.cli.sample import run
from gpt2_tf.generate import generate_texts
from gpt2_tf.model import plain_formulas
from gpt2_tf.ops import argmax
from gpt2_tf.sample import Generator, choose, sample_sequence, top_k_logits, top_p_logits
from gpt2_tf.streams import uniform_noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kept(filtered):
    return (np.asarray(filtered) > -1e9).tolist()


@pytest.mark.parametrize("jit", [False, True])
def test_argmax_is_the_first_largest(jit):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, size=(6, 50257)).astype(np.float32)  # many ties
    x[1] = -1e10
    x[2, 7] = np.inf
    x[3] = rng.normal(size=50257)
    got = tf.function(argmax, jit_compile=jit)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32


@pytest.mark.parametrize("xla", [False, True])
def test_top_k_keeps_the_k_largest_and_ties(xla):
    top_k = tf.function(lambda x, k: top_k_logits(x, k, xla), jit_compile=xla)
    logits = tf.constant([[1.0, 5.0, 3.0, 3.0, 0.0], [9.0, 8.0, 7.0, 6.0, 5.0]])
    assert kept(top_k(logits, 2)) == [[False, True, True, True, False], [True, True] + [False] * 3]
    assert kept(top_k(logits, 1)) == [[False, True, False, False, False], [True] + [False] * 4]
    assert top_k_logits(logits, 0, xla) is logits
    np.testing.assert_array_equal(top_k(logits, 5), logits)
    np.testing.assert_array_equal(top_k(logits, 9), logits)
    # Against NumPy's sort, on a vocabulary-sized batch with many ties and negative logits.
    x = np.random.default_rng(3).integers(-40, 40, size=(4, 50257)).astype(np.float32) / 8
    for k in (1, 40, 1000):
        kth = -np.sort(-x, axis=-1)[:, k - 1:k]
        np.testing.assert_array_equal(top_k(tf.constant(x), k), np.where(x >= kth, x, -1e10))


@pytest.mark.parametrize("p, n", [(0.4, 1), (0.5, 1), (0.7, 2), (0.85, 3), (0.9, 3), (0.99, 4), (1e-9, 1)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, n):
    # The worked example of the original nshepperd sampler: probabilities 0.5, 0.3, 0.15, 0.05.
    probs = np.array([0.15, 0.5, 0.05, 0.3])
    logits = tf.constant(np.log(probs)[None], tf.float32)
    keep = np.array(kept(top_p_logits(logits, p))[0])
    assert keep.sum() == n
    assert set(np.argsort(-probs)[:n]) == set(np.flatnonzero(keep))


def test_top_p_formula_and_kernel_keep_the_same_tokens_ties_included():
    """The original's sort and cumulative sum (within plain_formulas) and ops.py's bisection, under XLA
    and as a graph, on random logits with many tied values."""
    rng = np.random.default_rng(4)
    logits = np.round(rng.normal(0, 2, (6, 500)), 1).astype(np.float32)  # rounded: ties everywhere
    logits[5] = 0.0  # a row of one value
    for p in (0.05, 0.3, 0.5, 0.9, 0.999):
        with plain_formulas():
            plain = kept(tf.function(top_p_logits)(tf.constant(logits), p))
        for jit in (False, True):
            assert kept(tf.function(top_p_logits, jit_compile=jit)(tf.constant(logits), p)) == plain, (p, jit)


def test_top_p_rows_are_independent_and_ties_kept():
    logits = tf.constant(np.log([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]]),
                         tf.float32)
    assert kept(top_p_logits(logits, 0.6)) == [[True, True, False, False], [True] * 4, [True] + [False] * 3]
    np.testing.assert_array_equal(top_p_logits(logits, 1.0), logits)


def test_top_k_then_top_p():
    logits = tf.constant(np.log([[0.4, 0.3, 0.2, 0.1]]), tf.float32)
    # After top_k 3 the renormalised mass is 4/9, 3/9, 2/9: p = 0.7 needs the first two.
    assert kept(top_p_logits(top_k_logits(logits, 3), 0.7)) == [[True, True, False, False]]


@pytest.mark.slow
def test_top_k_draws_among_the_largest_the_token_drawn_over_the_whole_vocabulary():
    """Outside XLA, top-k draws among the k largest logits only (sample.py's _draw_top_k): the token
    drawn over the whole vocabulary (_draw_all), for every step, row and setting, also where the
    k-th logit ties with the ones after it (a few ties, and more than TIES), with min-p, and with the
    settings as tensors (a SavedModel's or LiteRT's one function)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 50257)).astype(np.float32) * 3
    order = np.argsort(-logits, axis=1)
    logits[1, order[1, 4:7]] = logits[1, order[1, 3]]  # the 4th to 7th largest equal
    logits[2, order[2, 2:30]] = logits[2, order[2, 2]]  # 28 equal from the 3rd: more than TIES
    logits = tf.constant(logits)
    keys = tf.constant([3, 1, 4, 1])
    draw_all = tf.function(lambda k, p, m, step: sample._draw_all(logits, k, p, m, keys, step, False))
    draw = tf.function(lambda t, k, p, m, step: choose(logits, t, k, p, keys, step, min_p=m))
    for k, p, m in ((1, 1.0, 0.0), (4, 1.0, 0.0), (40, 1.0, 0.0), (3, 0.5, 0.0), (40, 0.9, 0.0),
                    (40, 1.0, 0.3)):
        for step in range(12):
            expected = draw_all(k, p, m, step).numpy().tolist()
            assert sample._draw(logits, 1.0, k, p, m, keys, step, False).numpy().tolist() == expected
            settings = (tf.constant(1.0), tf.constant(k), tf.constant(p), tf.constant(m), tf.constant(step))
            assert draw(*settings).numpy().tolist() == expected


@pytest.mark.parametrize("xla", [False, True])
def test_sampling_frequencies_match_the_distribution(xla):
    probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    n = 40_000
    logits = tf.constant(np.tile(np.log(probs), (n, 1)), tf.float32)
    draw = tf.function(lambda *args: choose(*args, xla=xla), jit_compile=xla)
    keys = tf.range(n)  # every row its own stream
    counts = np.bincount(draw(logits, 1.0, 0, 1.0, keys, 1).numpy(), minlength=5)
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum()
    assert chi2 < 18.5  # the 0.999 quantile of chi-square with 4 degrees of freedom
    counts = np.bincount(draw(logits, 1.0, 2, 1.0, keys, 2).numpy(), minlength=5)
    assert counts[2:].sum() == 0 and abs(counts[0] / n - 2 / 3) < 0.015
    # Temperature 2 flattens: the frequencies follow probs ** (1/2), renormalised.
    flat = np.sqrt(probs) / np.sqrt(probs).sum()
    counts = np.bincount(draw(logits, 2.0, 0, 1.0, keys, 3).numpy(), minlength=5)
    assert (((counts - n * flat) ** 2) / (n * flat)).sum() < 18.5


def test_noise_is_uniform_per_row_and_the_same_under_xla():
    keys = tf.constant(np.arange(-3, 5, dtype=np.int32) * 7919)
    graph = uniform_noise(keys, 11, 50257).numpy()
    xla = tf.function(uniform_noise, jit_compile=True)
    np.testing.assert_array_equal(xla(keys, 11, 50257).numpy(), graph)
    np.testing.assert_array_equal(uniform_noise(keys[2:3], 11, 50257).numpy()[0], graph[2])  # no batch effect
    assert 0 < graph.min() and graph.max() < 1
    counts = np.histogram(graph, bins=64, range=(0, 1))[0]
    expected = graph.size / 64
    assert (((counts - expected) ** 2) / expected).sum() < 110  # chi-square, 63 degrees of freedom
    other_step = uniform_noise(keys, 12, 50257).numpy()
    for a, b in [(graph[0], graph[1]), (graph[0], other_step[0]), (graph[0, :-1], graph[0, 1:])]:
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def numpy_noise_bits(key, step, size):
    """The top 24 bits of uniform_noise's draws, computed in NumPy from its documented definition
    (murmur3's finalizer over the row's key, the step and the column times the golden ratio)."""
    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    golden = np.uint32(0x9E3779B9)
    with np.errstate(over="ignore"):
        row = fmix(np.uint32(np.int32(key).view(np.uint32)) ^ fmix(np.uint32(step) + golden))
        bits = fmix(fmix(row + np.arange(size, dtype=np.uint32) * golden) ^ row)
    return bits >> np.uint32(8)


def test_noise_is_never_1_so_a_filtered_token_is_never_drawn():
    """The draw whose 24 bits are all ones was 1.0 in float32, its Gumbel noise infinite: that token was
    drawn whatever the filters (about once in 334 draws over GPT-2's vocabulary)."""
    size = 50257
    step, column = next((s, int(np.argmax(b))) for s in range(10_000)
                        for b in [numpy_noise_bits(0, s, size)] if b.max() == 2**24 - 1)
    noise = uniform_noise(tf.constant([0]), step, size).numpy()[0]
    expected = (numpy_noise_bits(0, step, size).astype(np.float32) + np.float32(0.5)) * np.float32(2**-24)
    assert expected[column] == 1  # what float32 makes of it
    mask = np.arange(size) != column
    np.testing.assert_array_equal(noise[mask], expected[mask])
    assert noise[column] < 1 and noise.max() < 1
    logits = np.zeros([1, size], np.float32)
    logits[0, 7] = 5.0  # the one token top_k 1 keeps
    for xla in (False, True):
        draw = tf.function(choose, jit_compile=xla)
        assert draw(tf.constant(logits), 1.0, 1, 1.0, tf.constant([0]), step, xla).numpy().tolist() == [7]


def numpy_greedy(weights, hparams, context, length):
    tokens = np.array(context)
    for _ in range(length):
        logits, _ = forward(weights, hparams.to_dict(), tokens)
        tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return tokens


@pytest.mark.parametrize("jit_compile", [False, True])
def test_greedy_follows_numpy_forward_pass(tiny, jit_compile):
    model, hparams, weights = tiny
    context = np.random.default_rng(2).integers(0, 50257, size=(2, 5))
    expected = numpy_greedy(weights, hparams, context, 12)
    generator = Generator(model, jit_compile=jit_compile)
    greedy = sample_sequence(model, 12, context=context, temperature=0, generator=generator)
    np.testing.assert_array_equal(greedy, expected)
    top1 = sample_sequence(model, 12, context=context, top_k=1, seed=5, generator=generator)
    np.testing.assert_array_equal(top1, expected)


def test_same_seed_same_tokens_and_no_recompile(tiny):
    model, _, _ = tiny
    generator = Generator(model)
    a = sample_sequence(model, 10, start_token=50256, batch_size=3, top_k=40, seed=7, generator=generator)
    traces = {k: f.experimental_get_tracing_count() for k, f in generator._functions.items()}
    b = sample_sequence(model, 10, start_token=50256, batch_size=3, top_k=40, seed=7, generator=generator)
    c = sample_sequence(model, 10, start_token=50256, batch_size=3, top_k=40, seed=8, generator=generator)
    assert a.shape == (3, 11) and (a[:, 0] == 50256).all()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert {k: f.experimental_get_tracing_count() for k, f in generator._functions.items()} == traces
    # Prompts of other lengths share the same compiled functions (prompts are padded).
    sample_sequence(model, 10, context=[[1, 2, 3, 4]] * 3, top_k=40, seed=7, generator=generator)
    assert {k: f.experimental_get_tracing_count() for k, f in generator._functions.items()} == traces


def test_chunked_drawing_gives_the_same_tokens(tiny):
    model, _, _ = tiny
    generator = Generator(model)
    whole = sample_sequence(model, 20, context=[[5, 6, 7]], seed=3, generator=generator)
    state = generator.start(np.array([[5, 6, 7]]), 20, seed=3)
    for n in (4, 1, 7, 7):
        generator.extend(state, n)
    np.testing.assert_array_equal(state.numpy(), whole)


def test_full_window_is_allowed_and_more_is_refused(tiny):
    model, hparams, _ = tiny
    out = sample_sequence(model, hparams.n_ctx, start_token=50256, batch_size=1, seed=1)
    assert out.shape == (1, hparams.n_ctx + 1)
    with pytest.raises(ValueError, match="n_ctx = 64"):
        sample_sequence(model, 60, context=[list(range(10))])


def test_stop_strings_across_tokens_end_rows_early(tiny, tiny_model):
    model, hparams, weights = tiny
    enc = get_encoder(tiny_model[1], tiny_model[0])
    generator = Generator(model)
    context = [[464, 3290]] * 2
    full = generate_texts(generator, enc, context, 40, temperature=0)
    assert full[0] == full[1]
    tokens = numpy_greedy(weights, hparams, np.array(context[:1]), 40)[0, 2:]
    assert full[0] == enc.decode(tokens)
    # A stop string made of the end of one token and the start of the next, first seen there.
    ends = [len(enc.decode(tokens[:i])) for i in range(1, len(tokens))]
    end5 = next(e for e in ends if e >= 2 and full[0].find(full[0][e - 2:e + 2]) == e - 2)
    stop = full[0][end5 - 2:end5 + 2]
    calls = []
    original_extend = generator.extend
    generator.extend = lambda state, n: (calls.append(n), original_extend(state, n))[1]
    cut = generate_texts(generator, enc, context, 40, temperature=0, stops=["never there", stop])
    assert cut == [full[0][:end5 - 2]] * 2
    assert sum(calls) < 39  # ended before all 40 tokens were drawn


def cli(tiny_model, *argv, isatty=False):
    models_dir, name, _ = tiny_model
    args = sample_script.parse_args(["--models_dir", models_dir, "--model_name", name, *argv])
    out = io.StringIO()
    out.isatty = lambda: isatty
    run(args, out)
    return out.getvalue()


@pytest.mark.parametrize("nsamples, batch_size", [(1, 1), (3, 2), (4, 2), (5, 8)])
def test_nsamples_is_honoured_exactly(tiny_model, nsamples, batch_size):
    text = cli(tiny_model, "--length", "5", "--nsamples", str(nsamples), "--batch_size", str(batch_size),
               "--seed", "1")
    banners = [line for line in text.splitlines() if line.startswith("=" * 40 + " SAMPLE")]
    assert banners == ["=" * 40 + f" SAMPLE {i} " + "=" * 40 for i in range(1, nsamples + 1)]


def test_prompt_include_prompt_and_streaming(tiny_model):
    plain = cli(tiny_model, "--prompt", "Hello", "--length", "12", "--seed", "4")
    streamed = cli(tiny_model, "--prompt", "Hello", "--length", "12", "--seed", "4", isatty=True)
    assert plain == streamed
    with_prompt = cli(tiny_model, "--prompt", "Hello", "--length", "12", "--seed", "4", "--include_prompt")
    assert with_prompt.splitlines()[1] == "Hello" + plain.splitlines()[1]


def test_too_long_prompt_is_refused_or_truncated(tiny_model, capsys):
    prompt = " word" * 70
    with pytest.raises(SystemExit) as refused:
        cli(tiny_model, "--prompt", prompt, "--length", "10")
    assert refused.value.code == 2 and "at most n_ctx + 1 = 65" in capsys.readouterr().err
    text = cli(tiny_model, "--prompt", prompt, "--length", "10", "--truncate_prompt")
    assert "SAMPLE 1" in text
    assert "prompt cut from 70 to its last 55 tokens" in capsys.readouterr().err
    # A prompt of P tokens leaves room for n_ctx + 1 - P new ones: the last one drawn is never fed back.
    for words, fits in ((1, True), (2, False)):
        argv = ["--prompt", " word" * words, "--length", "64", "--seed", "1", "--output_format", "jsonl"]
        if fits:
            assert json.loads(cli(tiny_model, *argv))["text"]
        else:
            with pytest.raises(SystemExit):
                cli(tiny_model, *argv)


def test_prefix_eot_starts_the_prompt_with_the_document_token(tiny_model, capsys):
    """--prefix eot continues <|endoftext|> + the prompt (as KerasHub's and Hugging Face's users
    start prompts); a literal '<|endoftext|>' in the text stays text; --truncate_prompt keeps the token."""
    models_dir, name, _ = tiny_model
    model, _ = load_model(os.path.join(models_dir, name))
    enc = get_encoder(name, models_dir)
    tokens = enc.encode("The cabinet")
    argv = ["--prompt", "The cabinet", "--length", "6", "--temperature", "0", "--output_format", "jsonl"]
    got = json.loads(cli(tiny_model, *argv, "--prefix", "eot"))["text"]
    expected = sample_sequence(model, 6, context=[[enc.eot_token] + tokens], temperature=0)[0, -6:]
    assert got == enc.decode(expected)
    assert got != json.loads(cli(tiny_model, *argv))["text"]
    literal = json.loads(cli(tiny_model, *argv[:1], "<|endoftext|>The cabinet", *argv[2:]))["text"]
    assert literal == enc.decode(sample_sequence(model, 6, context=[enc.encode("<|endoftext|>The cabinet")],
                                                 temperature=0)[0, -6:])
    long = " word" * 70
    cut = json.loads(cli(tiny_model, "--prompt", long, "--length", "10", "--temperature", "0", "--prefix",
                         "eot", "--truncate_prompt", "--output_format", "jsonl"))["text"]
    kept = [enc.eot_token] + enc.encode(long)[-54:]
    assert cut == enc.decode(sample_sequence(model, 10, context=[kept], temperature=0)[0, -10:])
    assert "prompt cut from 71 to its last 55 tokens" in capsys.readouterr().err


def test_cli_errors_are_one_line_and_output_is_utf8(tiny_model, tmp_path):
    models_dir, name, _ = tiny_model
    base = [sys.executable, os.path.join(REPO, "sample.py"), "--models_dir", models_dir]
    bad = subprocess.run(base + ["--model_name", "missing"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("sample.py: error: no model missing in")
    assert "Traceback" not in bad.stderr
    out = tmp_path / "out.txt"
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    argv = ["--model_name", name, "--prompt", "Ünïcödé ☃", "--include_prompt", "--length", "4",
            "--output", str(out)]
    ok = subprocess.run(base + argv, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert out.read_text(encoding="utf-8").splitlines()[1].startswith("Ünïcödé ☃")


def test_tokens_outside_the_vocabulary_are_an_error(tiny_model):
    """A damaged model (NaN weights) draws no real token: a clear error, not a KeyError in the decoder."""
    from gpt2_tf.generate import GenerationError

    models_dir, name, _ = tiny_model
    model, _ = load_model(os.path.join(models_dir, name))
    model.variables_by_name()["model/ln_f/b"].assign(np.full([32], np.nan, np.float32))
    enc = get_encoder(name, models_dir)
    with pytest.raises(GenerationError, match="outside its vocabulary"):
        generate_texts(Generator(model), enc, [[50256]], 4, seed=1)


# ---------------------------------------------------------------------------------------------------
# Prompts of different lengths in one batch, and text longer than the context.

RAGGED = [[464, 2068, 7586, 21831, 18045, 625, 262], [40], [50256, 1212, 318, 257], [15496, 995, 11, 314, 716,
          257, 3303, 2746, 13, 632, 318, 257, 922, 1110, 13, 198, 198, 464]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_ragged_batch_greedy_equals_each_prompt_alone_and_numpy(tiny, jit_compile):
    model, hparams, weights = tiny
    generator = Generator(model, jit_compile=jit_compile)
    together = sample_sequence(model, 15, context=RAGGED, temperature=0, generator=generator)
    for prompt, row in zip(RAGGED, together):
        alone = sample_sequence(model, 15, context=[prompt], temperature=0, generator=generator)[0]
        np.testing.assert_array_equal(row, alone)
        np.testing.assert_array_equal(row, numpy_greedy(weights, hparams, np.array([prompt]), 15)[0])


@pytest.mark.slow
def test_a_rows_samples_do_not_depend_on_its_batch(tiny, tiny_model):
    """Row keys come from the seed, the prompt's number and the sample's number: any batch size and
    any neighbours give each sample the same tokens."""
    model, _, _ = tiny
    enc = get_encoder(tiny_model[1], tiny_model[0])
    generator = Generator(model)
    jobs = [(p, n) for p in range(len(RAGGED)) for n in range(2)]
    expected = {job: generate_texts(generator, enc, [RAGGED[job[0]]], 12, top_k=40, seed=9, rows=[job])[0]
                for job in jobs}
    for batch_size in (3, 8):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            contexts = [RAGGED[p] for p, _ in batch]
            texts = generate_texts(generator, enc, contexts, 12, top_k=40, seed=9, rows=batch)
            assert texts == [expected[job] for job in batch]
    assert len(set(expected.values())) == len(jobs)  # and the streams differ


def numpy_sliding_greedy(weights, hparams, prompt, length, shift):
    """The documented semantics: when the next position would pass n_ctx, keep the last n_ctx - shift
    tokens and run them again from position 0."""
    n_ctx, window, out = hparams.n_ctx, list(prompt), []
    for _ in range(length):
        if len(window) > n_ctx:
            window = window[-(n_ctx - shift):]
        logits = forward(weights, hparams.to_dict(), np.array([window]), last_only=True)[0]
        token = int(logits[0, -1].argmax())
        window.append(token)
        out.append(token)
    return out


@pytest.mark.parametrize("shift", [1, 16, 63])
def test_sliding_window_greedy_equals_running_the_kept_window(tiny, shift):
    model, hparams, weights = tiny
    prompts = [RAGGED[0], RAGGED[3]]
    drawn = sample_sequence(model, 150, context=prompts, temperature=0, window_shift=shift)
    for prompt, row in zip(prompts, drawn):
        assert len(row) == len(prompt) + 150
        assert row[len(prompt):].tolist() == numpy_sliding_greedy(weights, hparams, prompt, 150, shift)


def test_long_sliding_window_runs_follow_the_kept_windows(tiny):
    """Several slides and hundreds of tokens past n_ctx, in a ragged batch, drawn by top_k 1 (the
    sampling path, noise included: a draw of noise 1.0 once broke it), under XLA and as a graph: each
    token is NumPy's argmax over its kept window."""
    model, hparams, weights = tiny
    prompts = [RAGGED[0], RAGGED[3], RAGGED[1]]
    expected = [numpy_sliding_greedy(weights, hparams, prompt, 330, 20) for prompt in prompts]
    for jit_compile in (False, True):
        generator = Generator(model, jit_compile=jit_compile)
        rows = sample_sequence(model, 330, context=prompts, window_shift=20, top_k=1, seed=1,
                               generator=generator)
        assert [row[len(p):].tolist() for p, row in zip(prompts, rows)] == expected, jit_compile


def test_sliding_window_refuses_a_bad_shift_and_without_it_the_context_is_the_limit(tiny):
    model, hparams, _ = tiny
    with pytest.raises(ValueError, match="n_ctx = 64"):
        sample_sequence(model, 64, context=[RAGGED[0]])
    for shift in (0, 64):
        with pytest.raises(ValueError, match="window shift must be 1 to n_ctx - 1 = 63"):
            sample_sequence(model, 80, context=[RAGGED[0]], window_shift=shift)


def test_prompts_file_jsonl_output_in_input_order(tiny_model, tmp_path):
    lines = ["Hello", "The quick brown fox jumps over", "A", "Once upon a time, in a land far away, there"]
    plain = tmp_path / "prompts.txt"
    plain.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    structured = tmp_path / "prompts.jsonl"
    structured.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in lines), encoding="utf-8")
    runs = [cli(tiny_model, "--prompts", str(path), "--nsamples", "2", "--batch_size", str(b), "--length",
                "6", "--top_k", "40", "--seed", "3", "--output_format", "jsonl")
            for path, b in ((plain, 1), (plain, 3), (structured, 8))]
    assert runs[0] == runs[1] == runs[2]
    records = [json.loads(line) for line in runs[0].splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [(p, n) for p in lines for n in (1, 2)]
    banners = [line for line in cli(tiny_model, "--prompts", str(plain), "--length", "3").splitlines()
               if line.startswith("=")]
    assert banners == ["=" * 40 + f" PROMPT {i}, SAMPLE 1 " + "=" * 40 for i in range(1, 5)]


def test_sliding_window_on_the_command_line(tiny_model):
    text = cli(tiny_model, "--prompt", "Hello", "--length", "100", "--sliding_window", "--window_shift", "8",
               "--temperature", "0", "--output_format", "jsonl")
    assert len(json.loads(text)["text"]) > 0
    with pytest.raises(SystemExit) as refused:
        cli(tiny_model, "--length", "100")
    assert refused.value.code == 2
