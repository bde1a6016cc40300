"""A GPT-2 model as a LiteRT (TensorFlow Lite) file, for fast sampling on CPUs and phones.

`write_litert(model, folder)` converts a model to two `.tflite` files, builtin LiteRT ops only (no
Flex ops), int8 weights by default: model.tflite with the `prompt` and `decode` signatures, which
generate, and score.tflite with `score` and `score_details`. Two files, for LiteRT's CPU kernels
(XNNPACK) repack the weights for each signature of a file as it is loaded: a sampler that loaded the
scoring signatures too would hold their copies as well (124M int8: 718 against 470 MiB after one
token).

- `prompt`: the prompts' forward pass and the first draw.
    inputs  tokens [B, T] int32, right-padded prompts; last [B] int32, each row's last prompt token
            (its length - 1); and the settings below.
    outputs token [B] int32, the token drawn after each prompt; present [B, L, 2, H, T, D] float32,
            the keys and values of the T positions (as the original model's `present`); and the
            scores below.
- `decode`: one new token per row.
    inputs  token [B] int32, each row's last token; position [B] int32, its position (also the
            number of cache positions filled before it); context [B, S + 1] int32, each row's tokens
            (token at `position` and those before it are read); key_0 .. key_{L-1} and value_0 ..
            value_{L-1} [B * H, S, D] float32, the cache (row b's head h is row b * H + h); the
            settings below.
    outputs next [B] int32, the token drawn; new [L, 2, B * H, D] float32, the keys and values of
            the fed token, which the caller writes at `position` in the cache; and the scores below.
- `score` and `score_details`: score.py's next_token_scores (see there).
    inputs  inputs [B, T] int32, targets [B, T] int32 (the token after each input).
    outputs loss [B, T] float32 (-log p of the target), correct [B, T] bool; score_details also
            rank [B, T] int32, entropy [B, T] float32, top_ids [B, T, 5] int32, top_probs [B, T, 5].
- Settings, scalars as in sample.py: temperature float32 (0: greedy), top_k int32 (0: off), top_p
  float32 (1: off); the random streams: keys [B] int32, draw int32 (see streams.py); the generation
  controls (controls.INPUTS: repetition_penalty ... banned, logprobs n), with drawn_from [B] int32,
  where each row's drawn tokens begin.
- Scores: token_logprob [B] float32, the model's log-probability of the token drawn; top_logprobs
  [B, n] float32 and top_ids [B, n] int32, the n most likely tokens' (controls.top_logprobs).

The cache stays where the interpreter keeps its inputs: a decoding step reads it there and returns
only the new position's keys and values, which the caller writes into the input buffers in place
(gpt2_tf/litert_runtime.py), so no step copies the cache. The draws are sample.py's own code
(`sample.choose`), traced into the file.

The decoding step is the model's forward pass written for one token: with T = 1 the shapes are
static but for the batch and the cache length, so LiteRT's XNNPACK kernels take whole blocks (with
the general [B, T, C] forms, the shape arithmetic split the graph into 110 pieces: 12.7 ms against
10.4 per greedy step, 124M int8, batch 1). tests/test_litert.py checks that it draws what sample.py
draws.
"""

import os
import tempfile

import tensorflow as tf

from gpt2_tf.controls import controlled, from_inputs, input_specs, top_logprobs
from gpt2_tf.files import atomic_write
from gpt2_tf.model import gelu, plain_formulas, softmax
from gpt2_tf.model_files import LITERT_FILE, LITERT_SCORE_FILE
from gpt2_tf.sample import choose
from gpt2_tf.score import next_token_scores

QUANTIZATIONS = ("int8", "float32")
FILES = {LITERT_FILE: ("prompt", "decode"), LITERT_SCORE_FILE: ("score", "score_details")}  # file: signatures


def prompt_step(model, tokens, last, settings, controls):
    """The `prompt` signature: the original model's forward pass over the prompts, the logits of each
    row's last token only, and the first draw. tokens [B, T], last [B] -> {"token" [B], "present"
    [B, L, 2, H, T, D], and the scores}."""
    h, wte = model.embed(tokens, 0)
    presents = []
    for block in model.blocks:
        h, present = block(h)
        presents.append(present)
    h = tf.gather(h, last[:, None], batch_dims=1)[:, 0]  # [B, C]
    logits = model.logits(model.ln_f(h), wte)
    return {**draw(logits, tokens, last + 1, settings, controls), "present": tf.stack(presents, axis=1)}


def draw(logits, context, length, settings, controls):
    """sample.py's draw after logits [B, V], the controls applied over context [B, S] (length [B]):
    {"token" [B], and the scores}."""
    drawn_from, keys, step, temperature, top_k, top_p = settings
    token = choose(controlled(logits, controls, context, length, drawn_from), temperature, top_k, top_p, keys,
                   step, min_p=controls.min_p)
    chosen, values, ids = top_logprobs(logits, token, controls.logprobs)
    return {"token": token, "token_logprob": chosen, "top_logprobs": values, "top_ids": ids}


def decode_step(model, token, position, context, settings, controls, cache):
    """The `decode` signature: one token per row through every block. token, position [B]; context
    [B, S + 1]; cache: L pairs (keys, values) of [B * H, S, D] whose first position[b] positions of
    row b are filled -> {"next" [B], "new" [L, 2, B * H, D], and the scores}."""
    hp = model.hparams
    wte = model.wte
    h = tf.gather(wte, token) + tf.gather(model.wpe, position)  # [B, C]
    heads = tf.repeat(position, hp.n_head)  # [B * H]: each head's filled positions
    new = []
    for block, (past_k, past_v) in zip(model.blocks, cache):
        a, k, v = one_token_attention(block.attn, block.ln_1(h), past_k, past_v, heads)
        h = h + a
        h = h + dense(block.mlp.c_proj, gelu(dense(block.mlp.c_fc, block.ln_2(h))))
        new.append(tf.stack([k, v]))
    logits = model.logits(model.ln_f(h), wte)
    scores = draw(logits, context, position + 1, settings, controls)
    return {"next": scores.pop("token"), **scores, "new": tf.stack(new)}


def one_token_attention(attn, x, past_k, past_v, filled):
    """`attn` for one token per row, over a cache it does not write: x [B, C]; past_k, past_v
    [B * H, S, D], of which head row n sees the first filled[n] positions. Returns (a [B, C], and the
    token's k and v [B * H, D]).

    The scores of the cache and of the token itself are softmaxed together, as the original's
    attention over the past and the new keys concatenated is.
    """
    n_state, n_head = attn.n_state, attn.n_head
    depth = n_state // n_head
    q, k, v = (tf.reshape(t, [-1, depth]) for t in tf.split(dense(attn.c_attn, x), 3, axis=1))
    scale = tf.math.rsqrt(tf.cast(depth, tf.float32))
    w_past = tf.matmul(q[:, None], past_k, transpose_b=True) * scale  # [B * H, 1, S]
    w_new = tf.reduce_sum(q * k, axis=-1)[:, None, None] * scale  # [B * H, 1, 1]
    seen = tf.range(tf.shape(past_k)[1])[None, None] < filled[:, None, None]
    w = softmax(tf.concat([tf.where(seen, w_past, -1e10), w_new], axis=-1))
    a = tf.matmul(w[:, :, :-1], past_v) + w[:, :, -1:] * v[:, None]  # [B * H, 1, D]
    return dense(attn.c_proj, tf.reshape(a, [-1, n_state])), k, v


def dense(conv, x):
    """A Conv1D layer's x w + b for x [N, nx] -> [N, nf], with no reshape (see `decode_step`)."""
    return tf.matmul(x, conv.w) + conv.b


def signatures(model):
    """The `prompt`, `decode`, `score` and `score_details` signatures of `model` (float32), as concrete
    functions."""
    hp = model.hparams
    depth = hp.n_embd // hp.n_head
    i32, f32 = tf.int32, tf.float32
    rows = tf.TensorSpec([None], i32)
    settings = dict(drawn_from=rows, keys=rows, draw=tf.TensorSpec([], i32),
                    temperature=tf.TensorSpec([], f32), top_k=tf.TensorSpec([], i32),
                    top_p=tf.TensorSpec([], f32), **{spec.name: spec for spec in input_specs()})
    cache = tf.TensorSpec([None, None, depth], f32)
    cache_specs = {f"{kind}_{i}": cache for i in range(hp.n_layer) for kind in ("key", "value")}

    def split(inputs):
        """(the sampling settings, the controls) of the signature's inputs."""
        sampling = tuple(inputs.pop(name) for name in ("drawn_from", "keys", "draw", "temperature", "top_k",
                                                       "top_p"))
        return sampling, from_inputs(*(inputs.pop(spec.name) for spec in input_specs()))

    def prompt(tokens, last, **inputs):
        return prompt_step(model, tokens, last, *split(inputs))

    def decode(token, position, context, **inputs):
        sampling, controls = split(inputs)
        cache = [(inputs[f"key_{i}"], inputs[f"value_{i}"]) for i in range(hp.n_layer)]
        return decode_step(model, token, position, context, sampling, controls, cache)

    def scores(details):
        return lambda inputs, targets: next_token_scores(model, inputs, targets, details)

    # The plain formulas: ops.py's kernels serve training and XLA, and their custom gradients and
    # int64 bisection keys have no LiteRT builtin.
    with plain_formulas():
        return {
            "prompt": tf.function(prompt, autograph=False).get_concrete_function(
                tokens=tf.TensorSpec([None, None], i32), last=rows, **settings),
            "decode": tf.function(decode, autograph=False).get_concrete_function(
                token=rows, position=rows, context=tf.TensorSpec([None, None], i32), **settings,
                **cache_specs),
            **{name: tf.function(scores(details), autograph=False).get_concrete_function(
                inputs=tf.TensorSpec([None, None], i32), targets=tf.TensorSpec([None, None], i32))
               for name, details in (("score", False), ("score_details", True))},
        }


def write_litert(model, folder, quantize="int8", files=tuple(FILES)):
    """Convert `model` to LiteRT files in `folder` (each written atomically), those of `files` (names
    in FILES): `quantize` "int8" (weights as int8 with a float32 scale per output channel, computed
    with float32 activations: LiteRT's dynamic-range quantization) or "float32"."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, not {quantize!r}")
    concrete = signatures(model)
    root = tf.Module()
    root.weights = list({id(v): v for c in concrete.values() for v in c.variables}.values())
    with tempfile.TemporaryDirectory() as temporary:
        saved = os.path.join(temporary, "saved_model")
        tf.saved_model.save(root, saved, signatures=concrete)
        for name in files:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(FILES[name]))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if quantize == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            data = converter.convert()
            with atomic_write(os.path.join(folder, name)) as f:
                f.write(data)
