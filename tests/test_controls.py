"""The generation controls (penalties, n-grams, bans, logit bias, min-p, log-probabilities): greedy
decoding with them follows a float64 NumPy oracle of their definitions, transformers' own generate()
draws what we draw, and sample.py gives them as flags."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from cli_checks import ROOT, assert_refused, snapshot
from numpy_gpt2 import forward
from test_convert import client
from test_sample import cli

from gpt2_tf import convert, get_encoder
from gpt2_tf.controls import min_p_logits
from gpt2_tf.decoding import Controls
from gpt2_tf.sample import Generator, sample_sequence

PROMPTS = [[464, 3290, 318, 257, 3290], [15496, 11], [40, 588, 6184, 11, 290, 612, 13, 40]]
ALL_ON = Controls(repetition_penalty=1.5, frequency_penalty=0.4, presence_penalty=0.3, no_repeat_ngram_size=2,
                  logit_bias=((13, 2.0), (11, -3.0)), banned=((40,), (3290, 318)))


def numpy_controlled(logits, context, drawn_from, c):
    """The controls' definitions, in float64, one row: logits [V], context a token list of which
    context[drawn_from:] were drawn."""
    logits = np.array(logits, np.float64)
    for token, value in c.logit_bias:
        logits[token] += value
    for token in set(context) if c.repetition_penalty != 1 else ():
        p = c.repetition_penalty
        logits[token] = logits[token] * p if logits[token] < 0 else logits[token] / p
    for token, n in collections.Counter(context[drawn_from:]).items():
        logits[token] -= c.frequency_penalty * n + c.presence_penalty
    n = c.no_repeat_ngram_size
    if n:
        for j in range(len(context) - n + 1):
            if context[j:j + n - 1] == context[len(context) - n + 1:]:
                logits[context[j + n - 1]] = -np.inf
    for sequence in c.banned:
        prefix = list(sequence[:-1])
        if len(prefix) <= len(context) and context[len(context) - len(prefix):] == prefix:
            logits[sequence[-1]] = -np.inf
    return logits


def numpy_greedy(weights, hparams, prompt, length, c, shift=None):
    """Greedy tokens after `prompt` with controls `c`; with `shift`, the window slides as sample.py's
    does (the drawn tokens that leave it count no more)."""
    window, drawn_from, out = list(prompt), len(prompt), []
    for _ in range(length):
        if shift and len(window) > hparams.n_ctx:
            cut = len(window) - (hparams.n_ctx - shift)
            window, drawn_from = window[cut:], max(0, drawn_from - cut)
        logits = forward(weights, hparams.to_dict(), np.array([window]), last_only=True)[0][0, -1]
        token = int(np.argmax(numpy_controlled(logits, window, drawn_from, c)))
        window.append(token)
        out.append(token)
    return out


@pytest.mark.parametrize("jit_compile", [False, True])
def test_greedy_with_every_control_follows_the_numpy_oracle(tiny, jit_compile):
    """Every control on at once, a ragged batch, under XLA and as a TensorFlow graph: each row's greedy
    tokens are the oracle's, and differ from the tokens drawn without the controls."""
    model, hparams, weights = tiny
    generator = Generator(model, jit_compile=jit_compile)
    got = sample_sequence(model, 16, context=PROMPTS, temperature=0, generator=generator, controls=ALL_ON)
    plain = sample_sequence(model, 16, context=PROMPTS, temperature=0, generator=generator)
    for prompt, row, before in zip(PROMPTS, got, plain):
        assert row[len(prompt):].tolist() == numpy_greedy(weights, hparams, prompt, 16, ALL_ON)
        assert row.tolist() != before.tolist()
        drawn = row[len(prompt):].tolist()
        assert 40 not in drawn and (3290, 318) not in zip(drawn, drawn[1:])
        grams = list(zip(row.tolist(), row.tolist()[1:]))
        assert len(grams) == len(set(grams))  # no bigram twice, those of the prompt included


@pytest.mark.parametrize("controls", [Controls(frequency_penalty=2.0, presence_penalty=1.0),
                                      Controls(no_repeat_ngram_size=3, repetition_penalty=1.3)])
def test_after_a_slide_the_controls_see_the_kept_window(tiny, controls):
    model, hparams, weights = tiny
    prompts = [PROMPTS[0], PROMPTS[2]]
    got = sample_sequence(model, 90, context=prompts, temperature=0, window_shift=20, controls=controls)
    for prompt, row in zip(prompts, got):
        assert row[len(prompt):].tolist() == numpy_greedy(weights, hparams, prompt, 90, controls, shift=20)


def test_a_rows_draws_with_controls_do_not_depend_on_its_batch(tiny):
    model, _, _ = tiny
    generator = Generator(model)
    settings = dict(top_k=40, seed=4, controls=ALL_ON._replace(min_p=0.2))
    rows = [(p, 0) for p in range(len(PROMPTS))]
    *_, together = generator.draws(PROMPTS, 12, rows=rows, **settings)
    for p, prompt in enumerate(PROMPTS):
        *_, alone = generator.draws([prompt], 12, rows=[(p, 0)], **settings)
        assert alone.new_tokens()[0].tolist() == together.new_tokens()[p].tolist()


def test_logprobs_are_the_models_own_distribution_across_a_slide(tiny):
    """Each drawn token's log-probability and the n most likely tokens at its step are those of the
    model's distribution (before the controls and filters), the NumPy forward pass's, across a slide
    of the window too."""
    model, hparams, weights = tiny
    generator = Generator(model)
    length = hparams.n_ctx + 6
    *_, state = generator.draws([PROMPTS[1]], length, top_k=5, seed=3, window_shift=32,
                                controls=Controls(repetition_penalty=1.2, logprobs=4))
    (chosen, values, ids), = state.drawn_scores()
    drawn = state.new_tokens()[0].tolist()
    assert chosen.shape == (length,) and values.shape == ids.shape == (length, 4)
    window = list(PROMPTS[1])
    for i, token in enumerate(drawn):
        if len(window) > hparams.n_ctx:
            window = window[-(hparams.n_ctx - 32):]
        if i in (0, 1, hparams.n_ctx - 3, hparams.n_ctx - 1, hparams.n_ctx, length - 1):  # around the slide
            logits = forward(weights, hparams.to_dict(), np.array([window]), last_only=True)[0][0, -1]
            logprobs = logits - np.logaddexp.reduce(logits)
            np.testing.assert_allclose(chosen[i], logprobs[token], atol=1e-4)
            np.testing.assert_array_equal(ids[i], np.argsort(-logprobs)[:4])
            np.testing.assert_allclose(values[i], np.sort(logprobs)[::-1][:4], atol=1e-4)
        window.append(token)


def test_min_p_keeps_the_tokens_transformers_keeps():
    """transformers' MinP warper, run by transformers itself, keeps the same tokens."""
    client("torch")
    generation = client("transformers.generation.logits_process")
    import torch

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 50257)) * rng.uniform(1, 6, size=(4, 1))).astype(np.float32)
    for m in (0.01, 0.1, 0.5, 1.0):
        theirs = generation.MinPLogitsWarper(m)(None, torch.tensor(logits)).numpy() > -np.inf
        ours = min_p_logits(tf.constant(logits), m).numpy() > -1e9
        np.testing.assert_array_equal(ours, theirs)
        assert theirs.sum(1).min() >= 1


def test_min_p_draws_only_tokens_it_keeps(tiny):
    model, _, weights = tiny
    *_, state = Generator(model).draws([PROMPTS[0]] * 4, 6, temperature=2.0, seed=1,
                                       controls=Controls(min_p=0.8, logprobs=0))
    for row, (chosen, _, _) in zip(state.new_tokens(), state.drawn_scores()):
        # p >= 0.8 p_max at temperature 2: log p - log p_max >= 2 log 0.8 for the model's own logprobs
        context = PROMPTS[0] + row.tolist()
        logits, _ = forward(weights, model.hparams.to_dict(), np.array([context]))
        for i, token in enumerate(row):
            step = logits[0, len(PROMPTS[0]) + i - 1]
            assert (step[token] - step.max()) / 2.0 >= np.log(0.8) - 1e-5
            np.testing.assert_allclose(chosen[i], step[token] - np.logaddexp.reduce(step), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# transformers' generate(), on our Hugging Face export, as the client.

@pytest.mark.slow
def test_transformers_generate_draws_our_greedy_tokens_with_its_controls(tiny, tiny_model, tmp_path):
    """Greedy, a ragged batch (left-padded for transformers), with repetition_penalty,
    no_repeat_ngram_size and bad_words_ids: transformers' generate() on our export gives our tokens."""
    client("torch")
    hf = client("transformers")
    import torch

    model, _, _ = tiny
    models_dir, name, _ = tiny_model
    convert.convert(os.path.join(models_dir, name), str(tmp_path / "hf"), to="hf", progress=False)
    theirs = hf.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    theirs.generation_config.eos_token_id = None
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    plain = sample_sequence(model, 14, context=PROMPTS, temperature=0)
    drawn = [row[len(p):].tolist() for p, row in zip(PROMPTS, plain)]
    # banned: a token drawn, a pair drawn later, and a triple that ends with a prompt's last token
    bad = [drawn[1][:1], drawn[0][3:5], [*PROMPTS[2][-2:], drawn[2][0]]]
    settings = [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=1),
                dict(bad_words_ids=bad),
                dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=bad[1:])]
    for setting in settings:
        with torch.no_grad():
            out = theirs.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False,
                                  pad_token_id=0, **setting)[:, width:].tolist()
        controls = Controls(repetition_penalty=setting.get("repetition_penalty", 1.0),
                            no_repeat_ngram_size=setting.get("no_repeat_ngram_size", 0),
                            banned=tuple(map(tuple, setting.get("bad_words_ids", ()))))
        ours = sample_sequence(model, 14, context=PROMPTS, temperature=0, controls=controls)
        assert [row[len(p):].tolist() for p, row in zip(PROMPTS, ours)] == out, setting
        assert [r.tolist() for r in ours] != [r.tolist() for r in plain], setting


# ---------------------------------------------------------------------------------------------------
# sample.py

def test_sample_py_flags_ban_bias_and_logprobs(tiny_model, tiny):
    model, _, _ = tiny
    models_dir, name, _ = tiny_model
    enc = get_encoder(name, models_dir)
    common = ["--prompt", "Hello there", "--temperature", "0", "--length", "12", "--output_format", "jsonl"]
    plain = json.loads(cli(tiny_model, *common))["text"]
    word = enc.decode(enc.encode(plain)[2:4])
    got = json.loads(cli(tiny_model, *common, "--ban", word, "--logit_bias", "13=5", "--logprobs", "3",
                         "--repetition_penalty", "1.2", "--no_repeat_ngram_size", "2"))
    tokens = [t["id"] for t in got["logprobs"]]
    assert len(tokens) == 12 and "".join(t["token"] for t in got["logprobs"]) == got["text"]
    assert all(len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["logprob"] >= t["logprob"] - 1e-6
               for t in got["logprobs"])
    assert bytes(b for t in got["logprobs"] for b in t["bytes"]).decode() == got["text"]
    forms = (word,) if word.startswith(" ") else (word, " " + word)  # as sample.py bans it
    for form in forms:
        banned = enc.encode(form)
        assert not any(tokens[i:i + len(banned)] == banned for i in range(len(tokens)))
    prompt = enc.encode("Hello there")
    controls = Controls(repetition_penalty=1.2, no_repeat_ngram_size=2, logit_bias=((13, 5.0),),
                        banned=tuple(dict.fromkeys(tuple(enc.encode(f)) for f in forms)))
    expected = sample_sequence(model, 12, context=[prompt], temperature=0, controls=controls)[0]
    assert tokens == expected[len(prompt):].tolist()


def test_logprobs_are_cut_with_the_text_at_a_stop(tiny_model):
    common = ["--prompt", "Hello there", "--temperature", "0", "--length", "12", "--output_format", "jsonl",
              "--logprobs", "0"]
    full = json.loads(cli(tiny_model, *common))
    stop = full["logprobs"][5]["token"]
    cut = json.loads(cli(tiny_model, *common, "--stop", stop))
    assert cut["text"] == full["text"][:full["text"].index(stop)]
    assert cut["logprobs"] == full["logprobs"][:len(cut["logprobs"])]
    assert "".join(t["token"] for t in cut["logprobs"]) == cut["text"]


@pytest.mark.parametrize("flags, message", [
    (["--logprobs", "2"], "--logprobs needs --output_format jsonl"),
    (["--logprobs", "21", "--output_format", "jsonl"], "must be at most 20"),
    (["--logit_bias", "13"], "--logit_bias 13: expected ID=VALUE"),
    (["--logit_bias", "x=1"], "expected ID=VALUE"),
    (["--logit_bias", "50257=1"], "token id 50257 is outside the vocabulary (0 to 50256)"),
    (["--logit_bias", "13=101"], "the value must be within -100 to 100"),
    (["--ban", ""], "--ban needs a text"),
    (["--min_p", "1.5"], "must be at most 1"),
    (["--repetition_penalty", "0"], "must be more than 0"),
    (["--frequency_penalty", "3"], "must be at most 2"),
    (["--no_repeat_ngram_size", "-1"], "must be at least 0"),
])
def test_sample_py_refuses_bad_controls_in_one_line(tiny_model, flags, message):
    models_dir, name, _ = tiny_model
    before = snapshot(models_dir)
    result = subprocess.run([sys.executable, "sample.py", "--models_dir", models_dir, "--model_name", name,
                             "--length", "2", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_refused(result, "sample.py", models_dir, before, message)
