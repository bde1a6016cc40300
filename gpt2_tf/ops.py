"""Fast kernels for model.py: the original's formulas, computed with less memory or in less time.

Each function here gives the values of a plain formula in model.py (`gelu`, `norm`, `conv1d`,
`multihead_attn`), and tests/test_ops.py checks that it does, forward and backward, in float32 and
bfloat16. The reasons are measured on a CPU with the 124M shape: training memory and speed with
`python bench/train.py --peers ours`, sampling speed with `python bench/sample.py --only ours-xla-float32`.

- Custom gradients keep only their inputs for the backward pass and recompute the rest: `gelu`,
  `norm`, and `attend`, whose [T, S] attention weights of every head were half of the activation
  memory of a training step.
- The recomputations run as one fused XLA loop each (`gelu_grad`, `norm_grad`, `softmax_grad`).
- `causal_attention` skips the masked quarter of the attention over a whole sequence.
- `cross_entropy`, the loss over the [T, V] logits, in one fused pass forward and one backward.
- Workarounds for XLA and oneDNN on a CPU: `conv1d` at batch 1, `attention_weights` in bfloat16,
  and `write_cache`, the in-place write of the decoding cache.

Shapes: the leading axes `...` are batch and heads; T queries, S keys, D = C // H.
"""

import functools
import math

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext

GELU_C = math.sqrt(2 / math.pi)


@tf.custom_gradient
def gelu(x):
    """model.gelu, keeping only x for the backward pass (a tenth of the 124M model's activation memory)."""
    return 0.5 * x * (1 + tf.tanh(GELU_C * (x + 0.044715 * tf.pow(x, 3)))), lambda dy: gelu_grad(x, dy)


@tf.function(jit_compile=True)
def gelu_grad(x, dy):
    """dy * gelu'(x), recomputed from x in one fused loop (XLA). x, dy: [...].

    Computed in float32 whatever the input type: XLA on a CPU has no bfloat16 arithmetic, and its
    conversions around every operation made this 8 times slower in bfloat16 than in float32.
    """
    x32, dy32 = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
    t = tf.tanh(GELU_C * (x32 + 0.044715 * x32 * x32 * x32))
    dx = dy32 * (0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * x32 * x32))
    return tf.cast(dx, x.dtype)


@tf.custom_gradient
def norm(x, g, b, epsilon):
    """model.norm, keeping only x for the backward pass. x: [..., C]; g, b: [C]; epsilon: [].

    In float32 whatever the input type, as model.norm (and its gradient, `norm_grad`).
    """
    x32, g32, b32, epsilon32 = (tf.cast(t, tf.float32) for t in (x, g, b, epsilon))
    u = tf.reduce_mean(x32, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x32 - u), axis=-1, keepdims=True)
    y = tf.cast((x32 - u) * tf.math.rsqrt(s + epsilon32) * g32 + b32, x.dtype)
    return y, lambda dy: norm_grad(x, g, epsilon, dy) + (None,)


@tf.function(jit_compile=True)
def norm_grad(x, g, epsilon, dy):
    """The gradients (dx [..., C], dg [C], db [C]) of `norm`, in one fused computation (XLA).

    Computed in float32 whatever the input type, as `gelu_grad`.
    """
    dtype = x.dtype
    x, g, epsilon, dy = (tf.cast(t, tf.float32) for t in (x, g, epsilon, dy))
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    r = tf.math.rsqrt(tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True) + epsilon)
    x_hat = (x - u) * r
    batch_axes = list(range(len(x.shape) - 1))
    dx_hat = dy * g
    dx = r * (dx_hat - tf.reduce_mean(dx_hat, axis=-1, keepdims=True)
              - x_hat * tf.reduce_mean(dx_hat * x_hat, axis=-1, keepdims=True))
    dg, db = tf.reduce_sum(dy * x_hat, batch_axes), tf.reduce_sum(dy, batch_axes)
    return tf.cast(dx, dtype), tf.cast(dg, dtype), tf.cast(db, dtype)


def conv1d(x, w, b):
    """x w + b for x [N, nx], w [nx, nf], b [nf] -> [N, nf].

    With one row (decoding at batch 1), XLA on a CPU fuses `x w + b` into one matrix-vector kernel
    that reads w at three quarters of the speed of its plain product. The same sum written as a
    difference is not fused (batch-1 sampling: about 65 -> 78 tokens/s).
    """
    c = tf.matmul(x, w)
    return c - (0 - b) if x.shape[0] == 1 else c + b


def attention(q, k, v, b):
    """softmax(mask(q k^T / sqrt(D))) v with the keys that b hides masked out.

    q [..., T, D], k and v [..., S, D], b [T, S] or [N, T, S] bool (True: visible) -> [..., T, D]. The
    scale is applied to q, which is cheaper than to the [T, S] scores and, for D = 64, exact.
    """
    return attend(scaled(q), k, v, b)


def causal_attention(q, k, v):
    """`attention` of a whole sequence over itself (query i sees keys 0..i). q, k, v [..., T, D], T static.

    For an even T of 256 or more it is computed in two halves: the first half of the queries may
    only see the first half of the keys, so it is computed against those alone. That skips a
    quarter of the work and of the memory of the scores.
    """
    q = scaled(q)
    n = q.shape[-2]
    if n % 2 or n < 256:
        return attend(q, k, v, lower_triangle(n))
    n //= 2
    (q1, q2), (k1, _), (v1, _) = (tf.split(x, 2, axis=-2) for x in (q, k, v))  # split: cheaper gradient
    first = attend(q1, k1, v1, lower_triangle(n))
    second = attend(q2, k, v, tf.concat([tf.ones([n, n], tf.bool), lower_triangle(n)], axis=1))
    return tf.concat([first, second], axis=-2)


def scaled(q):
    """q / sqrt(D). q: [..., T, D]."""
    return q * tf.cast(1 / math.sqrt(q.shape[-1]), q.dtype)


def lower_triangle(n):
    """[n, n] bool, True where j <= i."""
    return tf.range(n)[None, :] <= tf.range(n)[:, None]


@tf.custom_gradient
def attend(q, k, v, b):
    """softmax(mask(q k^T)) v, q already scaled. q [..., T, D], k and v [..., S, D], b [T, S] bool.

    For training, the [T, S] attention weights of every head are not kept for the backward pass
    (they were half of the activation memory of the 124M model): the backward pass computes them
    again from q and k, at the cost of one more q k^T.
    """
    a = tf.matmul(tf.cast(attention_weights(q, k, b), v.dtype), v)

    def grad(da):
        q_again = after(q, da)  # so that the weights are computed again, not kept from the forward pass
        w = attention_weights(q_again, k, b)
        dv = tf.matmul(tf.cast(w, v.dtype), da, transpose_a=True)
        dw = tf.matmul(da, v, transpose_b=True)
        # Through the softmax: ds_ij = w_ij (dw_ij - row_i), row_i = sum_j w_ij dw_ij = da_i . a_i.
        row = tf.reduce_sum(tf.cast(da, tf.float32) * tf.cast(a, tf.float32), axis=-1, keepdims=True)
        ds = softmax_grad(w, dw, row)
        return tf.matmul(ds, k), tf.matmul(ds, q, transpose_a=True), dv, None

    return a, grad


def after(x, y):
    """x, as a value that exists only once y does. In a graph a control dependency does it; XLA drops
    those and would find x's recomputation equal to its first computation and keep that instead (the
    [T, S] attention weights of every head, through the backward pass): an optimization barrier that
    holds x and y together stops it."""
    if in_xla():
        return xla.optimization_barrier(x, y)[0]
    with tf.control_dependencies([y]):
        return tf.identity(x)


def attention_weights(q, k, b):
    """softmax(mask(q k^T)): q [..., T, D], k [..., S, D], b [T, S] bool -> [..., T, S].

    In float32, or in bfloat16 when q is bfloat16, outside XLA, and `exact_bfloat16_softmax()`.
    bfloat16 has float32's range, so -1e10 is safe, and TensorFlow's CPU softmax kernel (oneDNN)
    computes in float32 and rounds once: the values are exactly those of the float32 softmax rounded
    to bfloat16, and the [T, S] scores are not converted twice. XLA computes a bfloat16 softmax in
    bfloat16 (errors of several percent), and float16 cannot hold -1e10: there the scores are
    converted to float32 (under XLA the conversions are fused).
    """
    w = tf.matmul(q, k, transpose_b=True)
    if w.dtype != tf.bfloat16 or in_xla() or not exact_bfloat16_softmax():
        w = tf.cast(w, tf.float32)
    # The values of the original's w * b - 1e10 * (1 - b), as one select that keeps no copy of w.
    return tf.nn.softmax(tf.where(b, w, tf.cast(-1e10, w.dtype)))


@tf.function(jit_compile=True)
def softmax_grad(w, dw, row):
    """The gradient through the softmax, ds_ij = w_ij (dw_ij - row_i), in one fused pass (XLA).

    w: the attention weights, dw: their gradient, both [..., T, S]; row [..., T, 1] float32, the sum
    over j of w_ij dw_ij. Computed in float32; returns [..., T, S] in dw's dtype.
    """
    return tf.cast(tf.cast(w, tf.float32) * (tf.cast(dw, tf.float32) - row), dw.dtype)


def in_xla():
    """Whether the graph being built is compiled by XLA (in a tf.function with jit_compile=True)."""
    return GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


@functools.cache
def exact_bfloat16_softmax():
    """Whether TensorFlow's bfloat16 softmax on this machine's default device equals its float32
    softmax rounded to bfloat16 (checked once, on 4 rows of 1024 values). A kernel that summed in
    bfloat16 would be off by far more than one rounding."""
    with tf.init_scope():  # eagerly, also when called while a function is traced
        x = tf.constant(8 * np.sin(np.arange(4 * 1024)).reshape(4, 1024), tf.bfloat16)
        rounded = tf.cast(tf.nn.softmax(tf.cast(x, tf.float32)), tf.bfloat16)
        return bool(tf.reduce_all(tf.nn.softmax(x) == rounded))


def per_row(position):
    """Whether `position` holds one position per row ([N]) rather than one for all (a scalar)."""
    return getattr(position, "shape", None) is not None and position.shape.rank == 1


def write_cache(cache, new, position):
    """`cache` [N, S, D] with `new` [N, T, D] written at positions position .. position + T - 1.

    In place under XLA (dynamic_update_slice), where a concatenation would copy the whole cache at
    every decoding step. A position of shape [N] writes each row's one new entry (T = 1) at its own
    position, with a scatter. Outside XLA a half-precision cache is scattered as int64 words (its bits
    four at a time, moved exactly): TensorFlow has no float16 or bfloat16 GPU kernel for the scatter,
    which would run on the CPU, copying the cache there and back at every step.
    """
    if per_row(position):
        rows = tf.stack([tf.range(tf.shape(cache)[0]), position], axis=1)
        half = cache.dtype in (tf.float16, tf.bfloat16) and cache.shape[-1] % 4 == 0 and not in_xla()
        if not half:
            return tf.tensor_scatter_nd_update(cache, rows, new[:, 0])
        written = tf.tensor_scatter_nd_update(as_words(cache), rows, as_words(new[:, 0]))
        return tf.reshape(tf.bitcast(written, cache.dtype), tf.shape(cache))
    return xla.dynamic_update_slice(cache, new, tf.stack([0, tf.cast(position, tf.int32), 0]))


def as_words(x):
    """A 16-bit tensor [..., D] (D a multiple of 4) as int64 [..., D / 4]: the same bits, not copied."""
    return tf.bitcast(tf.reshape(x, tf.concat([tf.shape(x)[:-1], [-1, 4]], 0)), tf.int64)


@tf.custom_gradient
def cross_entropy(logits, labels):
    """-log softmax(logits)[label] of each row: logits [N, V] float32, labels [N] int32 -> [N].

    The values of tf.nn.sparse_softmax_cross_entropy_with_logits, in one fused pass forward and one
    backward (XLA): for the 124M model's [1024, 50257] logits on a CPU, 27 ms per update instead of 85.
    """
    losses, log_sum = cross_entropy_forward(logits, labels)
    return losses, lambda dloss: (cross_entropy_backward(logits, labels, log_sum, dloss), None)


@tf.function(jit_compile=True)
def cross_entropy_forward(logits, labels):
    """(losses [N], log of the softmax's denominator [N]) for logits [N, V], labels [N]."""
    top = tf.reduce_max(logits, axis=-1, keepdims=True)
    log_sum = tf.math.log(tf.reduce_sum(tf.exp(logits - top), axis=-1)) + top[:, 0]
    return log_sum - tf.gather(logits, labels, batch_dims=1), log_sum


@tf.function(jit_compile=True)
def cross_entropy_backward(logits, labels, log_sum, dloss):
    """d(losses . dloss) / d logits = (softmax(logits) - one_hot(labels)) * dloss. -> [N, V]."""
    probs = tf.exp(logits - log_sum[:, None])
    return (probs - tf.one_hot(labels, tf.shape(logits)[-1])) * dloss[:, None]


# ---------------------------------------------------------------------------------------------------
# Sampling: the filters' thresholds without a sort, and argmax.


def top_k_logits(logits, k):
    """sample.top_k_logits' values without sorting, which XLA does slowly on a CPU: the k-th largest
    logit of each row found by bisection over the logits' order keys. logits [B, V], k >= 1."""
    keys = order_keys(logits)
    # The k-th largest key of each row: the largest t with at least k keys >= t.
    kth = bisect(lambda t: tf.reduce_sum(tf.cast(keys >= t, tf.int32), axis=-1, keepdims=True) >= k,
                 lo=_wide(tf.reduce_min(keys, axis=-1, keepdims=True)),
                 hi=_wide(tf.reduce_max(keys, axis=-1, keepdims=True)) + 1)
    return tf.where(keys >= kth, logits, tf.cast(-1e10, logits.dtype))


def top_p_logits(logits, p):
    """sample.top_p_logits' values without sorting: the threshold of each row found by bisection over
    the logits' order keys. logits [B, V], 0 < p < 1."""
    # Outside XLA the keys are int64: TensorFlow's GPU kernels keep int32 tensors in host memory, and
    # the [B, V] keys would be copied there and back at each of the bisection's comparisons.
    wide = not in_xla()
    keys = order_keys(logits, wide)
    probs = tf.nn.softmax(tf.cast(logits, tf.float32))
    # Keep the keys above t*, the largest t such that the tokens above t hold at least p. The bounds
    # come from the keys of the smallest and largest logits (the keys keep their order), one wider
    # each way for -0.0 and +0.0, which compare equal and have keys -1 and 0.
    above = bisect(lambda t: tf.reduce_sum(tf.where(keys > t, probs, 0.0), axis=-1, keepdims=True) >= p,
                    lo=_wide(order_keys(tf.reduce_min(logits, axis=-1, keepdims=True))) - 2,
                    hi=_wide(order_keys(tf.reduce_max(logits, axis=-1, keepdims=True))) + 1,
                    dtype=keys.dtype)
    return tf.where(keys > above, logits, tf.cast(-1e10, logits.dtype))


def order_keys(logits, wide=False):
    """int32 keys (int64 when `wide`) in the order of the float logits [B, V]: the float bits,
    negatives' magnitude bits flipped.

    Thresholds are found by bisection on these keys rather than by sorting the vocabulary, which
    XLA does slowly on a CPU; the result is the same.
    """
    bits = tf.bitcast(tf.cast(logits, tf.float32), tf.int32)
    if wide:
        bits = tf.cast(bits, tf.int64)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.cast(0x7FFFFFFF, bits.dtype)), bits)


def _wide(keys):
    """Keys as int64, so that bounds one beyond them and midpoints cannot overflow."""
    return tf.cast(keys, tf.int64)


def bisect(ok, lo, hi, dtype=tf.int32):
    """The largest t in [lo, hi) with ok(t), per row, for ok true up to some t and false above.

    lo, hi: [B, 1] int64 with ok(lo) true and ok(hi) false; ok takes t as `dtype` (a key's).
    33 halvings cover any int32 range. Returns t, [B, 1] of `dtype`.
    """
    for _ in range(33):
        mid = (lo + hi) // 2
        good = ok(tf.cast(mid, dtype))
        lo = tf.where(good, mid, lo)
        hi = tf.where(good, hi, mid)
    return tf.cast(lo, dtype)


def argmax(x):
    """The index of the largest value of each row, the first one on ties: x [B, V] -> [B] int32.

    tf.argmax's result, as two plain reductions (the max, then the smallest index holding it). XLA
    compiles tf.argmax to a slow two-value reduction on a CPU: over 50,257 logits, drawing a token
    took 1.4 ms per decoding step with it and 0.8 ms this way (TF profiler).
    """
    largest = x == tf.reduce_max(x, axis=-1, keepdims=True)
    # The indices as float32 (exact below 2^24): TensorFlow's GPU kernels reduce no int32.
    index = tf.range(tf.cast(tf.shape(x)[-1], tf.float32))
    return tf.cast(tf.reduce_min(tf.where(largest, index, float("inf")), axis=-1), tf.int32)
