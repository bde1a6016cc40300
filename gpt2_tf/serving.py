"""A SavedModel that generates text by itself: string in, string out, in plain TensorFlow.

`export(model, encoder, merges, folder)` writes `folder/1/` (TF Serving's version layout) with these
signatures:

    serving_default  prompt tf.string [B], max_new_tokens int32 [], temperature float32 [],
                     top_k int32 [], top_p float32 [], seed int32 []
                     -> text tf.string [B], token_ids int32 [B, max_new_tokens], lengths int32 [B]
    generate_ids     input_ids int32 [B, T] (right-padded), lengths int32 [B], and the same settings
                     -> token_ids int32 [B, max_new_tokens], lengths int32 [B]
    score            input_ids int32 [B, T], lengths int32 [B] -> log_probs float32 [B, T]
    tokenize         prompt tf.string [B] -> input_ids int32 [B, T], lengths int32 [B]
    generate_ids_xla generate_ids, compiled by XLA (faster on a CPU, where the runtime has XLA)
    generate_controls, generate_ids_controls
                     serving_default and generate_ids with the generation controls too (controls.py):
                     repetition_penalty float32 [], frequency_penalty float32 [], presence_penalty
                     float32 [], no_repeat_ngram_size int32 [], min_p float32 [], logit_bias_ids int32
                     [N], logit_bias_values float32 [N], banned int32 [K, M] (token sequences padded
                     on the right with -1), logprobs int32 [] (n); and they return besides
                     token_logprobs float32 [B, max_new_tokens], top_logprobs float32 [B,
                     max_new_tokens, n] and top_ids int32 [B, max_new_tokens, n] (the model's own
                     distribution, as sample.py --logprobs)

Everything runs as a TensorFlow graph: the tokenizer (graph_encoder.py), the prompt step and the
decoding loop of sample.py (a preallocated cache, a tf.while_loop bounded by max_new_tokens), and
score.py's loss. The weights are the model's variables, stored once and shared by the signatures.
"""

import os

import tensorflow as tf

from gpt2_tf.controls import from_inputs, input_specs
from gpt2_tf.decoding import BUCKET, bucketed
from gpt2_tf.graph_encoder import GraphEncoder
from gpt2_tf.sample import NO_CONTROLS, decode_steps, prompt_step
from gpt2_tf.score import next_token_scores
from gpt2_tf.streams import batch_keys

VERSION = "1"  # the subfolder TF Serving loads: <model base path>/<version>/


def signatures(model, text, eot):
    """{name: concrete function} of the signatures, for `model` and `text` (a GraphEncoder).

    Settings, as sample.py's: temperature 0 is greedy; top_k 0 and top_p 1 (or 0) switch those filters
    off. A row's new tokens end at the first <|endoftext|> (`eot`), which is not part of them: token_ids
    holds <|endoftext|> from `lengths` on. A row with no tokens (an empty prompt) starts from
    <|endoftext|>, as unconditional sampling does. Row b's random stream depends on `seed` and b alone.
    """
    settings = [tf.TensorSpec([], dtype, name) for name, dtype in (
        ("max_new_tokens", tf.int32), ("temperature", tf.float32), ("top_k", tf.int32), ("top_p", tf.float32),
        ("seed", tf.int32))]
    controls = input_specs()
    prompt = [tf.TensorSpec([None], tf.string, "prompt")]
    ids = [tf.TensorSpec([None, None], tf.int32, "input_ids"), tf.TensorSpec([None], tf.int32, "lengths")]
    n = len(settings)
    functions = {
        "serving_default": (lambda *a: serve(model, text, eot, *a), prompt + settings),
        "generate_ids": (lambda *a: generate_ids(model, eot, *a), ids + settings),
        "generate_ids_xla": (lambda *a: generate_ids(model, eot, *a, xla=True), ids + settings),
        "generate_controls": (
            lambda *a: serve(model, text, eot, *a[:n + 1], controls=from_inputs(*a[n + 1:])),
            prompt + settings + controls),
        "generate_ids_controls": (
            lambda *a: generate_ids(model, eot, *a[:n + 2], controls=from_inputs(*a[n + 2:])),
            ids + settings + controls),
        "score": (lambda *a: score(model, eot, *a), ids),
        "tokenize": (lambda *a: tokenize(text, *a), prompt),
    }
    return {name: tf.function(function, input_signature=inputs, autograph=False).get_concrete_function()
            for name, (function, inputs) in functions.items()}


def tokenize(text, prompt):
    """prompt [B] -> input_ids [B, T] (right-padded with 0), lengths [B]."""
    ids = text.encode(prompt)
    return {"input_ids": ids.to_tensor(), "lengths": tf.cast(ids.row_lengths(), tf.int32)}


def serve(model, text, eot, prompt, max_new_tokens, temperature, top_k, top_p, seed, controls=NO_CONTROLS):
    """prompt [B] and the settings -> text [B], token_ids [B, max_new_tokens], lengths [B] (and as
    generate_ids' with controls)."""
    tokens = tokenize(text, prompt)
    out = generate_ids(model, eot, tokens["input_ids"], tokens["lengths"], max_new_tokens, temperature, top_k,
                       top_p, seed, controls=controls)
    kept = tf.RaggedTensor.from_tensor(out["token_ids"], lengths=out["lengths"])
    return {"text": text.decode(kept), **out}


def generate_ids(model, eot, input_ids, lengths, max_new_tokens, temperature, top_k, top_p, seed, xla=False,
                 controls=NO_CONTROLS):
    """input_ids [B, T] (right-padded), lengths [B] and the settings -> token_ids [B, max_new_tokens],
    lengths [B]: sample.py's prompt step and decoding loop, stopped once every row has drawn `eot`.
    With controls.logprobs (a tensor n), also token_logprobs [B, max_new_tokens], top_logprobs and
    top_ids [B, max_new_tokens, n] (0 past a row's end).

    With `xla`, the prompt step and the loop are compiled by XLA when first called with a shape; the
    prompt and the cache are then padded to multiples of decoding.BUCKET positions, so that few shapes
    are compiled.
    """
    n_ctx = model.hparams.n_ctx
    batch = tf.shape(lengths)[0]
    # Rows without tokens start from <|endoftext|>; the padding past each row is never seen.
    input_ids = tf.concat([input_ids, tf.zeros([batch, 1], tf.int32)], 1)
    first = tf.range(tf.shape(input_ids)[1])[None] == 0
    input_ids = tf.where(first & (lengths == 0)[:, None], eot, input_ids)
    lengths = tf.maximum(lengths, 1)
    longest = tf.reduce_max(lengths)
    checks = [
        tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be at least 1"),
        check_ids(model, input_ids, lengths),
        tf.debugging.assert_less_equal(
            longest + max_new_tokens - 1, n_ctx,
            message=f"the longest prompt and max_new_tokens together pass the n_ctx = {n_ctx} positions of "
                    "the model (the last new token is not fed back, so they may make n_ctx + 1)"),
    ]
    with tf.control_dependencies(checks):  # nothing is computed from a request that fails them
        input_ids = tf.identity(input_ids)
        size, width = longest + max_new_tokens - 1, tf.identity(longest)
    if xla:
        size = bucketed(size, n_ctx, tf.minimum)
        width = bucketed(longest, n_ctx, tf.minimum)
        input_ids = tf.pad(input_ids, [[0, 0], [0, BUCKET]])
    decode = tf.function(_decode, jit_compile=True, autograph=False) if xla else _decode
    tokens, scores = decode(model, eot, input_ids[:, :width], lengths, size, batch_keys(seed, batch),
                            max_new_tokens, temperature, top_k, top_p, xla, controls)
    at = lengths[:, None] + tf.range(max_new_tokens)[None]  # [B, max_new_tokens]: the new tokens' places
    new = tf.gather(tokens, at, batch_dims=1)
    ended = tf.cumsum(tf.cast(new == eot, tf.int32), axis=1) > 0
    out = {"token_ids": tf.where(ended, eot, new),
           "lengths": max_new_tokens - tf.reduce_sum(tf.cast(ended, tf.int32), axis=1)}
    for name, score in zip(("token_logprobs", "top_logprobs", "top_ids"), scores):
        score = tf.gather(score, at, batch_dims=1)
        past = ended if score.shape.rank == 2 else ended[..., None]
        out[name] = tf.where(past, tf.zeros_like(score), score)
    return out


def _decode(model, eot, prompts, lengths, size, keys, n, temperature, top_k, top_p, xla, controls):
    """sample.py's prompt step and decoding loop: (tokens [B, size + 1], scores as prompt_step's)."""
    tokens, cache, scores = prompt_step(model, prompts, lengths, size, keys, 0, temperature, top_k, top_p,
                                        xla=xla, controls=controls)
    tokens, _, scores = decode_steps(model, tokens, cache, lengths, 1, n - 1, keys, 1, temperature, top_k,
                                     top_p, xla=xla, ragged=True, end=eot, scores=scores, controls=controls)
    return tokens, scores


def score(model, eot, input_ids, lengths):
    """input_ids [B, T], lengths [B] -> log_probs [B, T]: log p of each token after <|endoftext|> and the
    tokens before it (score.py's definition, one window), 0 past each row's length."""
    n_ctx = model.hparams.n_ctx
    check = tf.debugging.assert_less_equal(
        tf.shape(input_ids)[1], n_ctx,
        message=f"score takes at most n_ctx = {n_ctx} tokens per row; score.py scores longer text with a "
                "sliding window")
    with tf.control_dependencies([check, check_ids(model, input_ids, lengths)]):
        input_ids = tf.identity(input_ids)
        batch = tf.shape(input_ids)[0]
    inputs = tf.concat([tf.fill([batch, 1], eot), input_ids[:, :-1]], 1)
    loss = next_token_scores(model, inputs, input_ids)["loss"]
    inside = tf.range(tf.shape(input_ids)[1])[None] < lengths[:, None]
    return {"log_probs": tf.where(inside, -loss, 0.0)}


def check_ids(model, input_ids, lengths):
    """An assertion that every token id within the rows' lengths is in the vocabulary: out of range,
    a GPU's gather reads zeros and XLA's clamps, so a client's mistake would pass as text."""
    n_vocab = model.hparams.n_vocab
    inside = tf.range(tf.shape(input_ids)[1])[None] < lengths[:, None]
    bad = inside & ((input_ids < 0) | (input_ids >= n_vocab))
    return tf.debugging.Assert(~tf.reduce_any(bad), [f"input_ids must be token ids from 0 to {n_vocab - 1}; "
                                                      "got", tf.boolean_mask(input_ids, bad)], summarize=5)


def export(model, encoder, merges, folder):
    """Write the SavedModel of `model` and its vocabulary into folder/VERSION/; returns that path.

    What is saved is a plain tf.Module holding the tokenizer's tables and the TensorFlow variables the
    signatures use, not the Keras model: tracked as a Keras object, each weight was saved as two graph
    variables, of which the TF1 loader (TF Serving's, saved_model_cli's) restored only one.
    """
    root = tf.Module()
    root.text = GraphEncoder(encoder, merges)
    concrete = signatures(model, root.text, encoder["<|endoftext|>"])
    root.weights = list({id(v): v for c in concrete.values() for v in c.variables}.values())
    path = os.path.join(folder, VERSION)
    tf.saved_model.save(root, path, signatures=concrete)
    return path
