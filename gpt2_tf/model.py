"""The GPT-2 transformer, as Keras 3 layers with the original's pieces and names.

A reader of OpenAI's `model.py` finds every piece here, in its order: `softmax`, `gelu`, `norm`,
`split_states`, `merge_states`, `conv1d`, `attention_mask`, `attn` (with `split_heads`,
`merge_heads`, `mask_attn_weights`, `multihead_attn`), `mlp`, `block`, `past_shape`, `expand_tile`,
`positions_for` and `model`, whose tied `wte` is also the output head. `present` holds the keys and
values of the new positions; a later call gets them back as `past`. The weights keep the original's
TF1 names (`model/h0/attn/c_attn/w`), so released checkpoints load by name (see checkpoint.py).

Beside the original's `past`, fast decoding uses a cache allocated once at its final size and
written in place: `call_with_cache` of the attention, the blocks and the model (sample.py).

Each formula is written here as the original wrote it. Where ops.py has a faster kernel for it (less
memory in training, or a workaround for XLA or oneDNN), that kernel is called instead: it gives the
same values, forward and backward. Within `with plain_formulas():` the model computes the formulas.

Shapes: B batch, T new positions, P past positions, S cache length, C = n_embd, H = n_head,
D = C // H, L = n_layer, V = n_vocab.
"""

import contextlib
import math

import keras
import tensorflow as tf

from gpt2_tf import ops
from gpt2_tf.hparams import HParams

KERNELS = True  # whether the pieces call ops.py's kernels; False within `plain_formulas()`
RANDOM_INIT = True  # whether new weights get random values; False within `weights_to_be_loaded()`


def kernels_on():
    """Whether ops.py's kernels are used (not within `plain_formulas()`), as code tracing now sees it."""
    return KERNELS


@contextlib.contextmanager
def plain_formulas():
    """Compute the original's formulas instead of ops.py's kernels, in the calls traced within.

    The values are the same; training takes more memory and time. For reading and stepping through
    the model, and for the tests that compare the two.
    """
    global KERNELS
    previous, KERNELS = KERNELS, False
    try:
        yield
    finally:
        KERNELS = previous


@contextlib.contextmanager
def weights_to_be_loaded():
    """Build models whose weights are read from a checkpoint next: their random initial values are
    skipped (weights start as zeros), which made building the 124M model 5x faster (1.5 s to 0.3 s)
    and its peak memory 320 MB smaller (bench/cold_start.py)."""
    global RANDOM_INIT
    previous, RANDOM_INIT = RANDOM_INIT, False
    try:
        yield
    finally:
        RANDOM_INIT = previous


def normal(stddev):
    """The initializer of a weight: N(0, stddev), or zeros within `weights_to_be_loaded()`."""
    return keras.initializers.RandomNormal(stddev=stddev) if RANDOM_INIT else "zeros"


def shape_list(x):
    """The static size of each dimension where known, else the dynamic one."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [dynamic[i] if s is None else s for i, s in enumerate(static)]


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)), with the max subtracted first; TensorFlow's kernel does both in one pass."""
    return tf.nn.softmax(x, axis=axis)


def gelu(x):
    """GELU, the tanh approximation GPT-2 was trained with. [...] -> [...]."""
    if KERNELS:
        return ops.gelu(x)
    return 0.5 * x * (1 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def norm(x, g, b, epsilon):
    """Layer normalization over the last axis, with the biased variance. x [..., C]; g, b [C]; epsilon [].

    Computed in float32 for half-precision x and cast back, as PyTorch's autocast and Keras'
    LayerNormalization do: float16 cannot hold the square of a value 256 from its row's mean.
    """
    if KERNELS:
        return ops.norm(x, g, b, epsilon)
    dtype = x.dtype
    x, g, b, epsilon = (tf.cast(t, tf.float32) for t in (x, g, b, epsilon))
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    return tf.cast((x - u) * tf.math.rsqrt(s + epsilon) * g + b, dtype)


class Norm(keras.layers.Layer):
    """`norm` with its weights `g` [C] (ones) and `b` [C] (zeros), epsilon 1e-5. [..., C] -> [..., C]."""

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


def split_states(x, n):
    """[..., m] -> [..., n, m // n]."""
    *start, m = shape_list(x)
    return tf.reshape(x, start + [n, m // n])


def merge_states(x):
    """[..., a, b] -> [..., a * b]."""
    *start, a, b = shape_list(x)
    return tf.reshape(x, start + [a * b])


class Conv1D(keras.layers.Layer):
    """`conv1d`: the original's width-1 convolution, which is x w + b. [..., nx] -> [..., nf].

    Weights `w` [nx, nf] (normal, stddev w_init_stdev) and `b` [nf] (zeros). Checkpoints hold `w` with
    the original's shape [1, nx, nf] (see checkpoint.py); in memory the width-1 axis is left out, as
    XLA's decoding loop computed its reshape element by element, several times slower.

    With `enable_lora`, w and b are frozen and the layer adds LoRA's low-rank update (see lora.py).
    """

    def __init__(self, nx, nf, w_init_stdev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.nx = nx
        self.nf = nf
        self.w_init_stdev = w_init_stdev
        self.w = self.add_weight(name="w", shape=(nx, nf), initializer=normal(w_init_stdev))
        self.b = self.add_weight(name="b", shape=(nf,), initializer="zeros")
        self.lora = None

    def enable_lora(self, rank, alpha, dropout=0.0, seed=None):
        """Freeze w and b, and add x -> dropout(x) lora_a lora_b * alpha / rank to the output: lora_a
        [nx, rank] uniform in +-1/sqrt(nx) and lora_b [rank, nf] zeros, as peft initialises them, so
        that the layer computes what it did until lora_b is trained."""
        self.w.trainable = self.b.trainable = False
        bound = 1 / math.sqrt(self.nx)
        self._tracker.unlock()  # a built layer takes new weights only so (as Keras' own enable_lora)
        self.lora = {
            "a": self.add_weight(name="lora_a", shape=(self.nx, rank),
                                 initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed)),
            "b": self.add_weight(name="lora_b", shape=(rank, self.nf), initializer="zeros"),
            "scale": alpha / rank,
            "dropout": keras.layers.Dropout(dropout, seed=seed) if dropout else None,
        }
        self._tracker.lock()

    def call(self, x, training=None):
        *start, _ = shape_list(x)
        x = tf.reshape(x, [-1, self.nx])
        c = ops.conv1d(x, self.w, self.b) if KERNELS else tf.matmul(x, self.w) + self.b
        if self.lora is not None:
            dropped = self.lora["dropout"](x, training=training) if self.lora["dropout"] else x
            c += tf.matmul(tf.matmul(dropped, self.lora["a"]), self.lora["b"]) * self.lora["scale"]
        return tf.reshape(c, start + [self.nf])

    def get_config(self):
        return {**super().get_config(), "nx": self.nx, "nf": self.nf, "w_init_stdev": self.w_init_stdev}


def attention_mask(nd, ns, dtype, past_length=None):
    """[nd, ns] matrix, 1 where query i may see key j: j <= past_length + i.

    By default past_length = ns - nd (the new queries are the last nd of the ns keys): the lower
    triangle anchored at the bottom-right corner, as in the original. A preallocated cache passes the
    number of positions already filled, and the keys past the queries stay masked. A past_length of
    shape [N] (each row of a ragged batch at its own position) gives one matrix per row, [N, nd, ns].
    """
    if past_length is None:
        past_length = ns - nd
    i = tf.range(nd)[:, None]
    j = tf.range(ns)
    if ops.per_row(past_length):
        past_length = past_length[:, None, None]
    return tf.cast(j <= past_length + i, dtype)


def past_shape(*, hparams, batch_size=None, sequence=None):
    """The shape of `past` and `present`: [B, L, 2, H, sequence, D]."""
    return [batch_size, hparams.n_layer, 2, hparams.n_head, sequence, hparams.n_embd // hparams.n_head]


def expand_tile(value, size):
    """Add a new first axis of the given size: value [...] -> [size, ...]."""
    value = tf.convert_to_tensor(value)
    return tf.tile(tf.expand_dims(value, axis=0), [size] + [1] * value.shape.ndims)


def positions_for(tokens, past_length):
    """The positions of tokens [B, T]: past_length + 0 .. T-1, [B, T]. past_length is a scalar, or [B]
    (each row of a ragged batch at its own position)."""
    batch_size, nsteps = shape_list(tokens)
    if ops.per_row(past_length):
        return past_length[:, None] + tf.range(nsteps)[None]
    return expand_tile(past_length + tf.range(nsteps), batch_size)


def mask_attn_weights(w, past_length=None):
    """Scores of the keys a query may not see become -1e10. w: [..., T, S] -> [..., T, S]."""
    *_, nd, ns = shape_list(w)
    b = attention_mask(nd, ns, w.dtype, past_length)
    return w * b - tf.cast(1e10, w.dtype) * (1 - b)


def multihead_attn(q, k, v, past_length=None):
    """q [..., T, D], k and v [..., S, D] -> [..., T, D] (the leading axes: batch and heads).

    The scores are scaled by 1/sqrt(D), masked and softmaxed in float32, so that -1e10 is safe in
    half precision.
    """
    nd, ns = shape_list(q)[-2], shape_list(k)[-2]
    if KERNELS:
        if past_length is None and isinstance(nd, int) and nd == ns:  # a whole sequence, no past
            return ops.causal_attention(q, k, v)
        return ops.attention(q, k, v, attention_mask(nd, ns, tf.bool, past_length))
    return tf.matmul(tf.cast(attention_weights(q, k, past_length), v.dtype), v)


def attention_weights(q, k, past_length=None):
    """Where each query looks: softmax(mask(q k^T / sqrt(D))) in float32. q [..., T, D], k [..., S, D]
    -> [..., T, S], each row summing to 1 over the keys the query may see (0 elsewhere)."""
    w = tf.matmul(q, k, transpose_b=True)
    w = w * tf.math.rsqrt(tf.cast(shape_list(q)[-1], w.dtype))
    return softmax(mask_attn_weights(tf.cast(w, tf.float32), past_length))


class Attention(keras.layers.Layer):
    """`attn`: masked multi-head self-attention, with the keys and values of earlier positions.

    call(x [B, T, C], past [B, 2, H, P, D] or None) -> (a [B, T, C], present [B, 2, H, T, D]).
    `present` holds the keys and values of the T new positions only. With return_attention=True, a
    third output: the attention weights [B, H, T, P + T] (`attention_weights`), computed by the
    formula (the fast kernels never form them). `call_with_cache` attends over a preallocated cache.
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

    def call(self, x, past=None, return_attention=False):
        c = self.c_attn(x)
        q, k, v = map(self.split_heads, tf.split(c, 3, axis=2))
        present = tf.stack([k, v], axis=1)
        if past is not None:
            pk, pv = tf.unstack(past, axis=1)
            k = tf.concat([pk, k], axis=-2)
            v = tf.concat([pv, v], axis=-2)
        if return_attention:
            w = attention_weights(q, k)
            a = tf.matmul(tf.cast(w, v.dtype), v)
            return self.c_proj(self.merge_heads(a)), present, w
        a = multihead_attn(q, k, v)
        return self.c_proj(self.merge_heads(a)), present

    def call_with_cache(self, x, cache, past_length):
        """Attention over a preallocated cache, for fast decoding: x [B, T, C]; cache (keys, values),
        each [B * H, S, D], whose first past_length positions are filled. Returns (a [B, T, C], the
        cache with the new keys and values written at past_length).

        Batch and heads share one axis so that the products read the cache where it is: with two axes,
        XLA on a CPU copied the cache at every step (a quarter of a batch-8 step of the 124M model).
        A past_length of shape [B] puts each row at its own position (one new token, T = 1).
        """
        c = self.c_attn(x)
        q, k, v = map(self.split_heads, tf.split(c, 3, axis=2))
        batch, heads, length, depth = shape_list(q)
        q, k, v = (tf.reshape(t, [batch * heads, length, depth]) for t in (q, k, v))
        if ops.per_row(past_length):
            past_length = tf.repeat(past_length, heads)  # [B * H], the rows of the merged axis
        keys, values = ops.write_cache(cache[0], k, past_length), ops.write_cache(cache[1], v, past_length)
        a = tf.reshape(multihead_attn(q, keys, values, past_length), [batch, heads, length, depth])
        return self.c_proj(self.merge_heads(a)), (keys, values)

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

    call(x [B, T, C], past [B, 2, H, P, D] or None) -> (x [B, T, C], present [B, 2, H, T, D]), and
    the attention weights [B, H, T, P + T] third with return_attention=True; `call_with_cache` the
    same over a preallocated cache (Attention.call_with_cache).
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

    def call(self, x, past=None, return_attention=False):
        a, present, *weights = self.attn(self.ln_1(x), past=past, return_attention=return_attention)
        x = x + a
        m = self.mlp(self.ln_2(x))
        x = x + m
        return (x, present, *weights)

    def call_with_cache(self, x, cache, past_length):
        a, cache = self.attn.call_with_cache(self.ln_1(x), cache, past_length)
        x = x + a
        return x + self.mlp(self.ln_2(x)), cache

    def get_config(self):
        return {**super().get_config(), "n_embd": self.n_embd, "n_head": self.n_head,
                "proj_init_stdev": self.proj_init_stdev}


class GPT2(keras.Model):
    """`model`: token and position embeddings, L blocks, a final norm, and logits from the tied `wte`.

    call(tokens [B, T] int, past [B, L, 2, H, P, D] or None, return_hidden=False) -> {
        "logits": [B, T, V] float32,
        "present": [B, L, 2, H, T, D], the keys and values of the T new positions,
        "hidden": [B, L + 1, T, C] with return_hidden: the embeddings (h_0) and each block's output
            (h_1 .. h_L, before ln_f), in the compute dtype; see `unembed` and lens.py,
        "attention": [B, L, H, T, P + T] float32 with return_attention: each head's attention weights
            after the mask and softmax (row t: where new position t looks; attention.py draws them),
    }
    With `past`, the new tokens take positions P .. P+T-1. P + T may not exceed n_ctx.

    For fast decoding, `call_with_cache(tokens, cache, past_length)` takes instead a list of L
    preallocated caches, each a pair (keys, values) of [B * H, S, D], with `past_length` positions
    filled, and returns {"logits", "cache": the updated caches} (see `Attention.call_with_cache`).
    past_length is a scalar, or [B] for a ragged batch: row b's token is at position past_length[b]
    (one new token per row).

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
                                   initializer=normal(0.01))
        self.wte = self.add_weight(name="wte", shape=(hparams.n_vocab, hparams.n_embd),
                                   initializer=normal(0.02))
        self.blocks = [
            Block(hparams.n_embd, hparams.n_head, proj_stdev, name=f"h{i}", dtype=self.dtype_policy)
            for i in range(hparams.n_layer)
        ]
        self.ln_f = Norm(hparams.n_embd, name="ln_f", dtype=self.dtype_policy)

    def call(self, tokens, past=None, return_hidden=False, return_attention=False):
        hp = self.hparams
        past_length = 0 if past is None else shape_list(past)[-2]
        h, wte = self.embed(tokens, past_length)

        # Transformer
        hidden, presents, attention = [h], [], []
        pasts = tf.unstack(past, axis=1) if past is not None else [None] * hp.n_layer
        for block, layer_past in zip(self.blocks, pasts):
            h, present, *weights = block(h, past=layer_past, return_attention=return_attention)
            presents.append(present)
            hidden.append(h)
            attention += weights
        present = tf.stack(presents, axis=1)
        present.set_shape(past_shape(hparams=hp, batch_size=tokens.shape[0], sequence=tokens.shape[1]))
        h = self.ln_f(h)

        # Language model loss.  Do tokens <n predict token n?
        out = {"present": present, "logits": self.logits(h, wte)}
        if return_hidden:
            out["hidden"] = tf.stack(hidden, axis=1)
        if return_attention:
            out["attention"] = tf.stack(attention, axis=1)
        return out

    def call_with_cache(self, tokens, cache, past_length):
        """`call` over preallocated caches (see the class's docstring): {"logits", "cache"}."""
        h, wte = self.embed(tokens, past_length)
        caches = []
        for block, layer_cache in zip(self.blocks, cache):
            h, layer_cache = block.call_with_cache(h, layer_cache, past_length)
            caches.append(layer_cache)
        return {"logits": self.logits(self.ln_f(h), wte), "cache": caches}

    def embed(self, tokens, past_length):
        """(h [B, T, C], wte [V, C]) in the compute dtype: each token's embedding plus its position's.
        past_length: the position of the first token, a scalar or [B]."""
        past_length = check_positions(past_length, shape_list(tokens)[1], self.hparams.n_ctx)
        wte = tf.cast(self.wte, self.compute_dtype)
        wpe = tf.gather(self.wpe, positions_for(tokens, past_length))
        return tf.gather(wte, tokens) + tf.cast(wpe, self.compute_dtype), wte

    def unembed(self, h, final_norm=True):
        """Logits [..., V] float32 of hidden states h [..., C]: ln_f (unless final_norm=False), then
        the product with the tied wte. The model's own logits are unembed(h_L)."""
        return self.logits(self.ln_f(h) if final_norm else h, tf.cast(self.wte, h.dtype))

    def logits(self, h, wte):
        """h [..., C] times wte [V, C] transposed -> [..., V] float32. `call` passes the wte it read for
        the embeddings: one read, so that the two gradients of wte are summed before any conversion."""
        *start, n_embd = shape_list(h)
        logits = tf.matmul(tf.reshape(h, [-1, n_embd]), wte, transpose_b=True)
        return tf.reshape(tf.cast(logits, tf.float32), start + [self.hparams.n_vocab])

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
    """Refuse to run past the position table: P + T must be at most n_ctx. Returns past_length, which
    in a graph is computed after the check, so that the position lookup that would fail cannot run
    first (a graph orders its ops only by what they read)."""
    if isinstance(past_length, int) and isinstance(length, int):
        if past_length + length > n_ctx:
            raise ValueError(f"sequence too long: {past_length} past + {length} new positions > n_ctx = "
                             f"{n_ctx}; GPT-2 has no position embedding beyond n_ctx")
        return past_length
    message = f"sequence too long: past + new positions exceed n_ctx = {n_ctx}"
    check = tf.debugging.assert_less_equal(past_length + length, n_ctx, message=message)
    with tf.control_dependencies([check] if check is not None else []):  # None when run eagerly
        return tf.identity(past_length)
