"""The GPT-2 transformer, as Keras 3 layers with the original's pieces and names.

A reader of OpenAI's `model.py` finds every piece here: `norm`, `conv1d`, `attn`, `mlp`, `block`, the
tied `wte` output head, and `present`, the keys and values of the new positions that a later call gets
back as `past`. The weights keep the original's TF1 names (`model/h0/attn/c_attn/w`), so released
checkpoints load by name (see checkpoint.py); the conv1d weights are kept without their width-1 axis.

Shapes: B batch, T new positions, P past positions, C = n_embd, H = n_head, D = C // H, L = n_layer,
V = n_vocab.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla  # dynamic_update_slice: in-place cache writes
from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext

from gpt2_tf.hparams import HParams


def shape_list(x):
    """The static size of each dimension where known, else the dynamic one."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [dynamic[i] if s is None else s for i, s in enumerate(static)]


def softmax(x, axis=-1):
    """Numerically stable softmax: the max is subtracted before exponentiating.

    tf.nn.softmax does that in one kernel, whose gradient keeps only its output (a third of the
    memory of the three-op form in training).
    """
    return tf.nn.softmax(x, axis=axis)


GELU_C = math.sqrt(2 / math.pi)


@tf.custom_gradient
def gelu(x):
    """GELU, tanh approximation (as GPT-2 was trained).

    For training, only x is kept for the backward pass (`gelu_grad`), not the half-dozen
    intermediates of the formula: a tenth of the activation memory of the 124M model.
    """
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


def attention_mask(nd, ns, dtype, past_length=None):
    """[nd, ns] matrix, 1 where query i may see key j: j <= past_length + i.

    By default past_length = ns - nd (the new queries are the last nd of the ns keys): the lower
    triangle anchored at the bottom-right corner, as in the original. A preallocated cache passes the
    number of positions already filled, and the keys past the queries stay masked.
    """
    if past_length is None:
        past_length = ns - nd
    i = tf.range(nd)[:, None]
    j = tf.range(ns)
    return tf.cast(j <= past_length + i, dtype)


def split_states(x, n):
    """[..., m] -> [..., n, m // n]."""
    *start, m = shape_list(x)
    return tf.reshape(x, start + [n, m // n])


def merge_states(x):
    """[..., a, b] -> [..., a * b]."""
    *start, a, b = shape_list(x)
    return tf.reshape(x, start + [a * b])


class Norm(keras.layers.Layer):
    """`norm`: layer normalization over the last axis, with the original's epsilon and biased variance.

    Weights `g` [C] (ones) and `b` [C] (zeros). [..., C] -> [..., C].
    """

    def __init__(self, n_state, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.n_state = n_state
        self.epsilon = epsilon
        self.g = self.add_weight(name="g", shape=(n_state,), initializer="ones")
        self.b = self.add_weight(name="b", shape=(n_state,), initializer="zeros")

    def call(self, x):
        return norm(x, tf.cast(self.g, x.dtype), tf.cast(self.b, x.dtype), tf.constant(self.epsilon, x.dtype))

    def get_config(self):
        return {**super().get_config(), "n_state": self.n_state, "epsilon": self.epsilon}


@tf.custom_gradient
def norm(x, g, b, epsilon):
    """(x - mean) / sqrt(variance + epsilon) * g + b over the last axis. x: [..., C]; g, b: [C]; epsilon: [].

    For training, only x is kept for the backward pass (`norm_grad` recomputes the rest).
    """
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    y = (x - u) * tf.math.rsqrt(s + epsilon) * g + b
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


class Conv1D(keras.layers.Layer):
    """`conv1d`: the original's width-1 convolution, which is a dense layer. [..., nx] -> [..., nf].

    Weights `w` [nx, nf] (normal, stddev w_init_stdev) and `b` [nf] (zeros). Checkpoints hold `w`
    with the original's shape [1, nx, nf] (see checkpoint.py). In memory the width-1 axis is left
    out: reshaping it away inside XLA's decoding loop made XLA fuse the reshape into the matrix
    product and compute it element by element, several times slower.
    """

    def __init__(self, nx, nf, w_init_stdev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.nx = nx
        self.nf = nf
        self.w_init_stdev = w_init_stdev
        init = keras.initializers.RandomNormal(stddev=w_init_stdev)
        self.w = self.add_weight(name="w", shape=(nx, nf), initializer=init)
        self.b = self.add_weight(name="b", shape=(nf,), initializer="zeros")

    def call(self, x):
        *start, _ = shape_list(x)
        x = tf.reshape(x, [-1, self.nx])
        c = tf.matmul(x, self.w)
        if x.shape[0] == 1:
            # One row (decoding at batch 1). XLA on a CPU fuses `x w + b` into one matrix-vector
            # kernel that reads w at three quarters of the speed of its plain product. The same sum
            # written as a difference is not fused (batch-1 sampling: about 65 -> 78 tokens/s).
            c = c - (0 - self.b)
        else:
            c = c + self.b
        return tf.reshape(c, start + [self.nf])

    def get_config(self):
        return {**super().get_config(), "nx": self.nx, "nf": self.nf, "w_init_stdev": self.w_init_stdev}


def mask_attn_weights(w, b):
    """Set the scores of future keys to -1e10. w: [..., T, S] float32 or bfloat16, b: [T, S] bool.

    The values of the original's w * b - 1e10 * (1 - b), as one select that keeps no copy of w
    for the backward pass.
    """
    return tf.where(b, w, tf.cast(-1e10, w.dtype))


def attention_weights(q, k, b):
    """softmax(mask(q k^T)): q [..., T, D], k [..., S, D], b [T, S] -> [..., T, S].

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
    return softmax(mask_attn_weights(w, b))


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


@tf.function(jit_compile=True)
def softmax_grad(w, dw, row):
    """The gradient through the softmax, ds_ij = w_ij (dw_ij - row_i), in one fused pass (XLA).

    w: the attention weights, dw: their gradient, both [..., T, S]; row [..., T, 1] float32, the sum
    over j of w_ij dw_ij. Computed in float32; returns [..., T, S] in dw's dtype.
    """
    return tf.cast(tf.cast(w, tf.float32) * (tf.cast(dw, tf.float32) - row), dw.dtype)


@tf.custom_gradient
def attend(q, k, v, b):
    """The attention of queries q over keys k and values v: softmax(mask(q k^T)) v.

    q [..., T, D], k and v [..., S, D], b [T, S] bool -> a [..., T, D] (the leading axes: batch and heads).
    For training, the [T, S] attention weights of every head are not kept for the backward pass
    (they were half of the activation memory of the 124M model): the backward pass computes them
    again from q and k, at the cost of one more q k^T.
    """
    a = tf.matmul(tf.cast(attention_weights(q, k, b), v.dtype), v)

    def grad(da):
        with tf.control_dependencies([da]):  # computed again after the forward pass, not kept
            q_again = tf.identity(q)
        w = attention_weights(q_again, k, b)
        dv = tf.matmul(tf.cast(w, v.dtype), da, transpose_a=True)
        dw = tf.matmul(da, v, transpose_b=True)
        # Through the softmax: ds_ij = w_ij (dw_ij - row_i), row_i = sum_j w_ij dw_ij = da_i . a_i.
        row = tf.reduce_sum(tf.cast(da, tf.float32) * tf.cast(a, tf.float32), axis=-1, keepdims=True)
        ds = softmax_grad(w, dw, row)
        return tf.matmul(ds, k), tf.matmul(ds, q, transpose_a=True), dv, None

    return a, grad


def causal_halves(q, k, v):
    """`attend` over a whole sequence (no past), in two halves. q, k, v [B, H, T, D], T even -> [B, H, T, D].

    The first half of the queries may only see the first half of the keys, so it is computed against
    those alone; the mask would zero the rest. That skips a quarter of the work (and of the memory).
    """
    n = shape_list(q)[2] // 2
    (q1, q2), (k1, _), (v1, _) = (tf.split(x, 2, axis=2) for x in (q, k, v))  # split: cheaper gradient
    first = attend(q1, k1, v1, attention_mask(n, n, tf.bool))
    second = attend(q2, k, v, attention_mask(n, 2 * n, tf.bool))
    return tf.concat([first, second], axis=2)


class Attention(keras.layers.Layer):
    """`attn`: masked multi-head self-attention, with the key/value cache of earlier positions.

    call(x [B, T, C], past [B, 2, H, P, D] or None) -> (a [B, T, C], present [B, 2, H, T, D]).
    `present` holds the keys and values of the T new positions only.

    With `past_length` (a scalar), `past` is instead a preallocated cache: a pair (keys, values), each
    [B * H, S, D], whose first past_length positions are filled. The new keys and values are written
    in place after them, and `present` is the updated pair (see `cached_attn`).
    """

    def __init__(self, n_state, n_head, proj_init_stdev=0.02, **kwargs):
        super().__init__(**kwargs)
        if n_state % n_head:
            raise ValueError(f"n_state ({n_state}) must be a multiple of n_head ({n_head})")
        self.n_state = n_state
        self.n_head = n_head
        self.proj_init_stdev = proj_init_stdev
        self.c_attn = Conv1D(n_state, 3 * n_state, name="c_attn", dtype=self.dtype_policy)
        self.c_proj = Conv1D(n_state, n_state, proj_init_stdev, name="c_proj", dtype=self.dtype_policy)

    def split_heads(self, x):
        """[B, T, C] -> [B, H, T, D]."""
        return tf.transpose(split_states(x, self.n_head), [0, 2, 1, 3])

    def merge_heads(self, x):
        """[B, H, T, D] -> [B, T, C]."""
        return merge_states(tf.transpose(x, [0, 2, 1, 3]))

    def multihead_attn(self, q, k, v, past_length=None):
        """q [..., T, D], k and v [..., S, D] -> [..., T, D] (the leading axes: batch and heads).

        The scores are scaled by 1/sqrt(D) (applied to q, which is cheaper and, for D = 64, exact),
        masked and softmaxed in float32 (see `attention_weights` for bfloat16), so that -1e10 is safe
        in half precision.
        """
        q = q * tf.cast(1 / math.sqrt(shape_list(q)[-1]), q.dtype)
        nd, ns = shape_list(q)[-2], shape_list(k)[-2]
        whole = past_length is None and isinstance(nd, int) and isinstance(ns, int) and nd == ns
        if whole and nd % 2 == 0 and nd >= 256:
            return causal_halves(q, k, v)
        return attend(q, k, v, attention_mask(nd, ns, tf.bool, past_length))

    def cached_attn(self, q, k, v, cache, past_length):
        """Attention over a preallocated cache, for fast decoding.

        q, k, v [B, H, T, D]; cache: (keys, values), each [B * H, S, D], of which the first
        past_length positions are filled. Returns (a [B, H, T, D], the updated cache), with k and v
        written in place at past_length. The batch and head axes are merged so that the matrix
        products read the cache where it is: with separate axes, XLA on a CPU copied the keys and
        values out of the cache at every step (a quarter of a batch-8 step of the 124M model).
        """
        batch, heads, length, depth = shape_list(q)
        q, k, v = (tf.reshape(x, [batch * heads, length, depth]) for x in (q, k, v))
        start = tf.stack([0, tf.cast(past_length, tf.int32), 0])
        keys, values = (xla.dynamic_update_slice(old, new, start) for old, new in zip(cache, (k, v)))
        a = self.multihead_attn(q, keys, values, past_length)
        return tf.reshape(a, [batch, heads, length, depth]), (keys, values)

    def call(self, x, past=None, past_length=None):
        c = self.c_attn(x)
        q, k, v = map(self.split_heads, tf.split(c, 3, axis=2))
        if past_length is not None:
            a, present = self.cached_attn(q, k, v, past, past_length)
        else:
            present = tf.stack([k, v], axis=1)
            if past is not None:
                pk, pv = tf.unstack(past, axis=1)
                k = tf.concat([pk, k], axis=-2)
                v = tf.concat([pv, v], axis=-2)
            a = self.multihead_attn(q, k, v)
        return self.c_proj(self.merge_heads(a)), present

    def get_config(self):
        return {**super().get_config(), "n_state": self.n_state, "n_head": self.n_head,
                "proj_init_stdev": self.proj_init_stdev}


class MLP(keras.layers.Layer):
    """`mlp`: c_fc (C -> 4C), gelu, c_proj (4C -> C). [B, T, C] -> [B, T, C]."""

    def __init__(self, n_state, n_embd, proj_init_stdev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.n_state = n_state
        self.n_embd = n_embd
        self.proj_init_stdev = proj_init_stdev
        self.c_fc = Conv1D(n_embd, n_state, name="c_fc", dtype=self.dtype_policy)
        self.c_proj = Conv1D(n_state, n_embd, proj_init_stdev, name="c_proj", dtype=self.dtype_policy)

    def call(self, x):
        return self.c_proj(gelu(self.c_fc(x)))

    def get_config(self):
        return {**super().get_config(), "n_state": self.n_state, "n_embd": self.n_embd,
                "proj_init_stdev": self.proj_init_stdev}


class Block(keras.layers.Layer):
    """`block`: pre-norm residual attention and MLP.

    call(x [B, T, C], past [B, 2, H, P, D] or None) -> (x [B, T, C], present [B, 2, H, T, D]).
    """

    def __init__(self, n_embd, n_head, proj_init_stdev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.n_embd = n_embd
        self.n_head = n_head
        self.proj_init_stdev = proj_init_stdev
        self.ln_1 = Norm(n_embd, name="ln_1", dtype=self.dtype_policy)
        self.attn = Attention(n_embd, n_head, proj_init_stdev, name="attn", dtype=self.dtype_policy)
        self.ln_2 = Norm(n_embd, name="ln_2", dtype=self.dtype_policy)
        self.mlp = MLP(4 * n_embd, n_embd, proj_init_stdev, name="mlp", dtype=self.dtype_policy)

    def call(self, x, past=None, past_length=None):
        a, present = self.attn(self.ln_1(x), past=past, past_length=past_length)
        x = x + a
        m = self.mlp(self.ln_2(x))
        x = x + m
        return x, present

    def get_config(self):
        return {**super().get_config(), "n_embd": self.n_embd, "n_head": self.n_head,
                "proj_init_stdev": self.proj_init_stdev}


class GPT2(keras.Model):
    """`model`: token and position embeddings, L blocks, a final norm, and logits from the tied `wte`.

    call(tokens [B, T] int, past [B, L, 2, H, P, D] or None) -> {
        "logits": [B, T, V] float32,
        "present": [B, L, 2, H, T, D], the keys and values of the T new positions,
    }
    With `past`, the new tokens take positions P .. P+T-1. P + T may not exceed n_ctx.

    For fast decoding, `past` may instead be a list of L preallocated caches, each a pair (keys,
    values) of [B * H, S, D], with `past_length` (a scalar) positions filled; "present" is then the
    list of updated caches (see `Attention.cached_attn`).

    Weights are created with the model, initialised as GPT-2 was (wte N(0, 0.02), wpe
    N(0, 0.01), every w N(0, 0.02), biases 0, gains 1); `residual_scaling=True` also scales the
    residual projections (attn/c_proj and mlp/c_proj) by 1/sqrt(2 * n_layer), as in the GPT-2 paper.

    `dtype` is a Keras dtype policy: "float32" (default), "bfloat16" (bf16 weights and compute, for
    fast sampling) or "mixed_bfloat16" / "mixed_float16" (float32 weights, half-precision compute,
    for training). The attention softmax is computed in float32 and the logits are float32 in every
    case.
    """

    def __init__(self, hparams, residual_scaling=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(hparams, dict):
            hparams = HParams.from_dict(hparams)
        self.hparams = hparams
        self.residual_scaling = residual_scaling
        proj_stdev = 0.02 / math.sqrt(2 * hparams.n_layer) if residual_scaling else 0.02
        self.wpe = self.add_weight(name="wpe", shape=(hparams.n_ctx, hparams.n_embd),
                                   initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.wte = self.add_weight(name="wte", shape=(hparams.n_vocab, hparams.n_embd),
                                   initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.blocks = [
            Block(hparams.n_embd, hparams.n_head, proj_stdev, name=f"h{i}", dtype=self.dtype_policy)
            for i in range(hparams.n_layer)
        ]
        self.ln_f = Norm(hparams.n_embd, name="ln_f", dtype=self.dtype_policy)

    def call(self, tokens, past=None, past_length=None):
        hp = self.hparams
        batch, length = shape_list(tokens)
        if past_length is not None:
            pasts, start = past, past_length
        else:
            pasts = [None] * hp.n_layer if past is None else tf.unstack(past, axis=1)
            start = 0 if past is None else shape_list(past)[-2]
        check_positions(start, length, hp.n_ctx)
        positions = start + tf.range(length)
        wte = tf.cast(self.wte, self.compute_dtype)
        h = tf.gather(wte, tokens) + tf.cast(tf.gather(self.wpe, positions)[None], self.compute_dtype)
        presents = []
        for block, layer_past in zip(self.blocks, pasts):
            h, present = block(h, past=layer_past, past_length=past_length)
            presents.append(present)
        h = self.ln_f(h)
        logits = tf.matmul(tf.reshape(h, [-1, hp.n_embd]), wte, transpose_b=True)
        logits = tf.reshape(tf.cast(logits, tf.float32), [batch, length, hp.n_vocab])
        if past_length is not None:
            return {"present": presents, "logits": logits}
        return {"present": tf.stack(presents, axis=1), "logits": logits}

    def variables_by_name(self):
        """{TF1 checkpoint name: variable}, e.g. "model/h0/attn/c_attn/w"."""
        names = {"model/wpe": self.wpe, "model/wte": self.wte}
        for i, block in enumerate(self.blocks):
            for path, layer in (("ln_1", block.ln_1), ("attn/c_attn", block.attn.c_attn),
                                ("attn/c_proj", block.attn.c_proj), ("ln_2", block.ln_2),
                                ("mlp/c_fc", block.mlp.c_fc), ("mlp/c_proj", block.mlp.c_proj)):
                for weight in ("g", "b") if isinstance(layer, Norm) else ("w", "b"):
                    names[f"model/h{i}/{path}/{weight}"] = getattr(layer, weight)
        names["model/ln_f/g"] = self.ln_f.g
        names["model/ln_f/b"] = self.ln_f.b
        return names

    def get_config(self):
        return {**super().get_config(), "hparams": self.hparams.to_dict(),
                "residual_scaling": self.residual_scaling}


def check_positions(past_length, length, n_ctx):
    """Refuse to run past the position table: P + T must be at most n_ctx."""
    if isinstance(past_length, int) and isinstance(length, int):
        if past_length + length > n_ctx:
            raise ValueError(f"sequence too long: {past_length} past + {length} new positions > n_ctx = "
                             f"{n_ctx}; GPT-2 has no position embedding beyond n_ctx")
    else:
        tf.debugging.assert_less_equal(
            past_length + length, n_ctx,
            message=f"sequence too long: past + new positions exceed n_ctx = {n_ctx}")


def past_shape(hparams, batch_size=None, sequence=None):
    """[B, L, 2, H, P, D], the shape of `past` / `present`."""
    return [batch_size, hparams.n_layer, 2, hparams.n_head, sequence, hparams.n_embd // hparams.n_head]
