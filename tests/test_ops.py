"""The fast kernels of ops.py give the values of the original's formulas (model.py under
`plain_formulas()`), forward and backward, in float32 and bfloat16."""

import contextlib
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import ops
from gpt2_tf.hparams import HParams
from gpt2_tf.model import GPT2, attention_mask, gelu, plain_formulas
from gpt2_tf.score import loss_sum

# T = 256 with no past takes the attention in halves; n_head 4 of depth 8.
HP = HParams(n_vocab=300, n_ctx=320, n_embd=32, n_head=4, n_layer=2)


def varied_model(policy):
    """A GPT2 in the Keras dtype policy, with float32 weights shared by every call (seeded), and
    gains and biases that are not 1 and 0."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = GPT2(HP)
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    for name, variable in model.variables_by_name().items():
        stddev = 0.1 if name.endswith(("/g", "/b")) else 0.05
        base = 1.0 if name.endswith("/g") else 0.0
        variable.assign(base + rng.normal(size=variable.shape).astype(np.float32) * stddev)
    return model


def loss_and_gradients(model, tokens, plain):
    """(logits [B, T, V], loss, {name: gradient}) of the next-token loss, with the kernels or not."""
    names = model.variables_by_name()
    with plain_formulas() if plain else contextlib.nullcontext(), tf.GradientTape() as tape:
        logits = model(tokens)["logits"]
        loss = loss_sum(model, tokens, tokens) / np.prod(tokens.shape)
    grads = tape.gradient(loss, list(names.values()))
    return logits, loss, {n: tf.convert_to_tensor(g).numpy() for n, g in zip(names, grads)}


def relative_error(a, e):
    return float(np.abs(np.asarray(a, np.float64) - e).max() / (np.abs(e).max() + 1e-30))


@pytest.mark.parametrize("length", [256, 37])  # in halves, and whole with an odd length
def test_model_with_kernels_equals_plain_formulas_in_float32(length):
    model = varied_model("float32")
    tokens = tf.constant(np.random.default_rng(1).integers(0, HP.n_vocab, size=(2, length)), tf.int32)
    fast = loss_and_gradients(model, tokens, plain=False)
    plain = loss_and_gradients(model, tokens, plain=True)
    np.testing.assert_allclose(fast[0].numpy(), plain[0].numpy(), rtol=0, atol=2e-5)
    assert abs(float(fast[1]) - float(plain[1])) < 1e-5
    for name in fast[2]:
        assert relative_error(fast[2][name], plain[2][name]) < 1e-4, name


def test_model_with_kernels_in_bfloat16_is_as_close_to_float32_as_the_plain_formulas():
    """Mixed bfloat16: the kernels recompute in float32 where the formulas round, so their logits and
    gradients are at least as close to the float32 ones (within a margin of bfloat16 rounding)."""
    tokens = tf.constant(np.random.default_rng(2).integers(0, HP.n_vocab, size=(2, 256)), tf.int32)
    exact = loss_and_gradients(varied_model("float32"), tokens, plain=True)
    mixed = varied_model("mixed_bfloat16")
    fast = loss_and_gradients(mixed, tokens, plain=False)
    plain = loss_and_gradients(mixed, tokens, plain=True)
    assert fast[0].dtype == plain[0].dtype == tf.float32
    fast_error, plain_error = relative_error(fast[0], exact[0]), relative_error(plain[0], exact[0])
    assert fast_error < 2e-2 and fast_error <= 1.5 * plain_error + 1e-3, (fast_error, plain_error)
    for name in exact[2]:
        fast_error = relative_error(fast[2][name], exact[2][name])
        plain_error = relative_error(plain[2][name], exact[2][name])
        assert fast_error < 5e-2 and fast_error <= 1.5 * plain_error + 2e-3, (name, fast_error, plain_error)


@pytest.mark.parametrize("policy, atol", [("float32", 2e-5), ("bfloat16", 0.15)])
def test_decoding_cache_with_kernels_equals_plain_formulas(policy, atol):
    """The preallocated cache (ops.write_cache, attention with past_length): a prompt, then two
    single tokens, under XLA as the sampler compiles it; and the same logits as one whole pass."""
    model = varied_model(policy)
    tokens = tf.constant(np.random.default_rng(3).integers(0, HP.n_vocab, size=(2, 7)), tf.int32)
    depth = HP.n_embd // HP.n_head

    def decode():
        cache = [(tf.zeros([2 * HP.n_head, 16, depth], model.compute_dtype),) * 2 for _ in range(HP.n_layer)]
        out = model.call_with_cache(tokens[:, :5], cache, tf.constant(0))
        logits = [out["logits"]]
        for position in (5, 6):
            out = model.call_with_cache(tokens[:, position:position + 1], out["cache"], tf.constant(position))
            logits.append(out["logits"])
        return tf.concat(logits, axis=1)

    fast = tf.function(decode, jit_compile=True)()
    with plain_formulas():
        plain = tf.function(decode, jit_compile=True)()
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=0, atol=atol)
    whole = model(tokens)["logits"]
    np.testing.assert_allclose(fast.numpy(), whole.numpy(), rtol=0, atol=atol)


def test_plain_formulas_switches_the_kernels_off_and_back_on(monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "gelu", lambda x: calls.append("kernel") or x)
    x = tf.constant([-1.0, 0.5, 2.0])
    with plain_formulas():
        expected = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
                    for v in (-1, 0.5, 2)]
        np.testing.assert_allclose(gelu(x).numpy(), expected, rtol=1e-6)
    assert calls == []
    gelu(x)
    assert calls == ["kernel"]


def test_pieces_with_custom_gradients_match_autodiff():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 7, 8)) * 3, tf.float32)
    g, b = tf.constant(rng.normal(size=8), tf.float32), tf.constant(rng.normal(size=8), tf.float32)
    eps = tf.constant(1e-5)

    def plain_norm(x, g, b):
        u = tf.reduce_mean(x, -1, keepdims=True)
        return (x - u) / tf.sqrt(tf.reduce_mean(tf.square(x - u), -1, keepdims=True) + eps) * g + b

    def plain_gelu(x):
        return 0.5 * x * (1 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def plain_attend(q, k, v, mask):
        w = tf.where(mask, tf.matmul(q, k, transpose_b=True), -1e10)
        return tf.matmul(tf.nn.softmax(w), v)

    def grads(f, *args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = f(*args)
            loss = tf.reduce_sum(y * tf.constant(np.cos(np.arange(y.shape.num_elements())).reshape(y.shape),
                                                 tf.float32))
        return [y] + tape.gradient(loss, list(args))

    def close(ours, reference):
        for a, e in zip(ours, reference):
            np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4, atol=1e-5)

    close(grads(ops.gelu, x), grads(plain_gelu, x))
    close(grads(lambda x, g, b: ops.norm(x, g, b, eps), x, g, b), grads(plain_norm, x, g, b))
    q, k, v = (tf.constant(rng.normal(size=(2, 3, 6, 4)), tf.float32) for _ in range(3))
    mask = attention_mask(4, 6, tf.bool)[None, None]
    close(grads(lambda q, k, v: ops.attend(q[:, :, 2:], k, v, mask), q, k, v),
          grads(lambda q, k, v: plain_attend(q[:, :, 2:], k, v, mask), q, k, v))
    q, k, v = (tf.constant(rng.normal(size=(1, 2, 256, 4)), tf.float32) for _ in range(3))
    full = attention_mask(256, 256, tf.bool)[None, None]
    close(grads(ops.causal_attention, q, k, v),  # in halves
          grads(lambda q, k, v: plain_attend(q / 2, k, v, full), q, k, v))


def test_gelu_and_norm_gradients_in_bfloat16():
    """In bfloat16 (mixed-precision training) the gradients keep their type and the float32 values."""
    rng = np.random.default_rng(6)
    x32 = tf.constant(rng.normal(size=(3, 16)) * 2, tf.float32)
    g32, b32 = tf.constant(rng.normal(size=16), tf.float32), tf.constant(rng.normal(size=16), tf.float32)
    dy32 = tf.constant(rng.normal(size=(3, 16)), tf.float32)
    x, g, b, dy = (tf.cast(t, tf.bfloat16) for t in (x32, g32, b32, dy32))
    for f, args, args32 in [(ops.gelu, [x], [tf.cast(x, tf.float32)]),
                            (lambda x, g, b: ops.norm(x, g, b, tf.constant(1e-5, x.dtype)), [x, g, b],
                             [tf.cast(t, tf.float32) for t in (x, g, b)])]:
        with tf.GradientTape() as tape:
            tape.watch(args)
            ours = tape.gradient(f(*args), args, output_gradients=dy)
        with tf.GradientTape() as tape:
            tape.watch(args32)
            expected = tape.gradient(f(*args32), args32, output_gradients=tf.cast(dy, tf.float32))
        for a, e in zip(ours, expected):
            assert a.dtype == tf.bfloat16
            np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), e.numpy(), rtol=2e-2, atol=2e-2)


def test_attention_in_bfloat16():
    """bfloat16 attention weights are the float32 softmax of the bfloat16 scores, rounded once (outside
    XLA, in bfloat16 when the kernel computes in float32; under XLA, float32); the gradients of
    `attend` keep their type and match float32 autodiff."""
    rng = np.random.default_rng(9)
    q, k, v = (tf.constant(rng.normal(size=(2, 3, 8, 16)) * 2, tf.bfloat16) for _ in range(3))
    mask = attention_mask(8, 8, tf.bool)
    scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)
    expected = tf.nn.softmax(tf.where(mask, scores, -1e10))
    eager = ops.attention_weights(q, k, mask)
    np.testing.assert_array_equal(tf.cast(eager, tf.bfloat16).numpy(), tf.cast(expected, tf.bfloat16).numpy())
    compiled = tf.function(ops.attention_weights, jit_compile=True)(q, k, mask)
    assert compiled.dtype == tf.float32
    # XLA's bfloat16 product rounds differently from TensorFlow's kernel (in some versions it is off
    # by up to a rounding of the scores): the softmax is checked on XLA's own scores.
    xla_scores = tf.function(lambda q, k: tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32),
                             jit_compile=True)(q, k)
    expected_xla = tf.nn.softmax(tf.where(mask, xla_scores, -1e10))
    np.testing.assert_allclose(compiled.numpy(), expected_xla.numpy(), rtol=1e-5, atol=1e-7)

    dy = tf.constant(rng.normal(size=(2, 3, 8, 16)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        ours = tape.gradient(ops.attend(q, k, v, mask), [q, k, v], output_gradients=tf.cast(dy, tf.bfloat16))
    q32, k32, v32 = (tf.cast(t, tf.float32) for t in (q, k, v))
    with tf.GradientTape() as tape:
        tape.watch([q32, k32, v32])
        w = tf.nn.softmax(tf.where(mask, tf.matmul(q32, k32, transpose_b=True), -1e10))
        reference = tape.gradient(tf.matmul(w, v32), [q32, k32, v32], output_gradients=dy)
    for a, e in zip(ours, reference):
        assert a.dtype == tf.bfloat16
        scale = np.abs(e.numpy()).max()
        np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), e.numpy(), rtol=0, atol=3e-2 * scale)
