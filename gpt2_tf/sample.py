"""Sampling from GPT-2: top-k and top-p filters, and the decoding loop with a preallocated cache.

The first step runs the whole prompt through the model; each later step feeds one token and writes
its keys and values into a cache that was allocated once at its final size. The loop runs inside one
compiled TensorFlow function, compiled once per shape and reused by later calls.

Filters, as in the originals: temperature first, then top-k, then top-p (nucleus). Masked logits
become -1e10. Nucleus sampling keeps the smallest set of most likely tokens whose probability
reaches p, the token that crosses p included (the nshepperd sampler's definition). Temperature 0
means greedy decoding.
"""

import weakref

import numpy as np
import tensorflow as tf

from gpt2_tf.model import softmax

# Prompts are padded up to a multiple of this, so that prompts of different lengths share one
# compiled function (the padding positions are masked out and then overwritten).
BUCKET = 64


def top_k_logits(logits, k, xla=False):
    """Keep the k largest logits of each row, set the rest to -1e10. logits [B, V] -> [B, V].

    k = 0 keeps everything. Logits equal to the k-th largest are kept, so ties can keep more than k.
    The k-th largest comes from tf.math.top_k, or, when `xla` (which sorts slowly on a CPU), from a
    bisection: the same value either way.
    """
    if k == 0:
        return logits
    if not xla:
        kth = tf.math.top_k(logits, tf.minimum(k, tf.shape(logits)[-1])).values[:, -1:]
        return tf.where(logits >= kth, logits, tf.cast(-1e10, logits.dtype))
    keys = _order_keys(logits)
    # The k-th largest key of each row: the largest t with at least k keys >= t.
    kth = _bisect(lambda t: tf.reduce_sum(tf.cast(keys >= t, tf.int32), axis=-1, keepdims=True) >= k,
                  lo=_wide(tf.reduce_min(keys, axis=-1, keepdims=True)),
                  hi=_wide(tf.reduce_max(keys, axis=-1, keepdims=True)) + 1)
    return tf.where(keys >= kth, logits, tf.cast(-1e10, logits.dtype))


def top_p_logits(logits, p):
    """Nucleus filter: keep the most likely tokens until their probability reaches p. [B, V] -> [B, V].

    Token i is kept when the probability of the tokens ranked above it is below p, so the token that
    crosses p is kept and at least one token always is. p >= 1 or p <= 0 keeps everything.
    """
    if p >= 1 or p <= 0:
        return logits
    keys = _order_keys(logits)
    probs = softmax(tf.cast(logits, tf.float32))
    # Keep the keys above t*, the largest t such that the tokens above t hold at least p.
    above = _bisect(lambda t: tf.reduce_sum(tf.where(keys > t, probs, 0.0), axis=-1, keepdims=True) >= p,
                    lo=_wide(tf.reduce_min(keys, axis=-1, keepdims=True)) - 1,
                    hi=_wide(tf.reduce_max(keys, axis=-1, keepdims=True)))
    return tf.where(keys > above, logits, tf.cast(-1e10, logits.dtype))


def _order_keys(logits):
    """int32 keys in the order of the float logits [B, V]: the float bits, negatives' magnitude bits
    flipped.

    Thresholds are found by bisection on these keys rather than by sorting the vocabulary, which
    XLA does slowly on a CPU; the result is the same.
    """
    bits = tf.bitcast(tf.cast(logits, tf.float32), tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits)


def _wide(keys):
    """Keys as int64, so that bounds one beyond them and midpoints cannot overflow."""
    return tf.cast(keys, tf.int64)


def _bisect(ok, lo, hi):
    """The largest t in [lo, hi) with ok(t), per row, for ok true up to some t and false above.

    lo, hi: [B, 1] int64 with ok(lo) true and ok(hi) false; ok takes t as int32 (a key).
    33 halvings cover any int32 range. Returns t, [B, 1] int32.
    """
    for _ in range(33):
        mid = (lo + hi) // 2
        good = ok(tf.cast(mid, tf.int32))
        lo = tf.where(good, mid, lo)
        hi = tf.where(good, hi, mid)
    return tf.cast(lo, tf.int32)


def choose(logits, temperature, top_k, top_p, seed, xla=False):
    """Draw one token per row from logits [B, V] float32 -> [B] int32. `seed` is a [2] int32 tensor.

    Drawn with the Gumbel-max trick (the argmax of the logits plus Gumbel noise follows the softmax
    distribution exactly), which needs no sort or cumulative sum. `xla` says the caller compiles
    with XLA. The random numbers then come from Threefry, which only XLA has and which is several
    times faster there than Philox on a CPU (0.8 against 6.8 ms per draw of 8 x 50,257 numbers);
    otherwise from TensorFlow's Philox kernels.
    """
    if temperature == 0:
        return argmax(logits)
    logits = top_p_logits(top_k_logits(logits / temperature, top_k, xla), top_p)
    rng = "threefry" if xla else "philox"
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed, minval=1e-20, maxval=1.0, alg=rng)
    return argmax(logits - tf.math.log(-tf.math.log(uniform)))


def argmax(x):
    """The index of the largest value of each row, the first one on ties: x [B, V] -> [B] int32.

    tf.argmax's result, as two plain reductions (the max, then the smallest index holding it). XLA
    compiles tf.argmax to a slow two-value reduction on a CPU: over 50,257 logits, drawing a token
    took 1.4 ms per decoding step with it and 0.8 ms this way (TF profiler).
    """
    largest = x == tf.reduce_max(x, axis=-1, keepdims=True)
    return tf.reduce_min(tf.where(largest, tf.range(tf.shape(x)[-1]), tf.int32.max), axis=-1)


def default_jit_compile(dtype="float32"):
    """Whether to compile the decoding loop with XLA (measured with bench/sample.py).

    Yes on GPU and TPU, and for float32 on CPU (fused kernels and a cache updated in place: 87 and
    313 tokens/s at batch 1 and 8 against 70 and 250 as a TensorFlow graph). Not for bfloat16 on CPU,
    where XLA's matrix-vector products are several times slower than oneDNN's.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return True
    return dtype != "bfloat16"


class Generator:
    """Generates tokens from one model, reusing its compiled functions across calls.

    Usage: `state = generator.start(context, total, ...)` runs the prompt and draws the first token;
    `generator.extend(state, n)` draws n more. The cache holds S positions and `state.tokens` is
    [B, S + 1], of which the first `state.length` are valid.

    The decoding loop is one function, compiled with XLA when `jit_compile` is on. The prompt step
    (large matrix products, run once per sample) is a TensorFlow graph, which compiles faster.
    """

    def __init__(self, model, jit_compile=None):
        self.model = model
        self.hparams = model.hparams
        if jit_compile is None:
            jit_compile = default_jit_compile(model.compute_dtype)
        self.jit_compile = jit_compile
        self._functions = {}

    def _function(self, kind, temperature, top_k, top_p):
        key = (kind, float(temperature), int(top_k), float(top_p))
        if key not in self._functions:
            xla = self.jit_compile and kind == "extend"
            options = dict(temperature=temperature, top_k=top_k, top_p=top_p, xla=xla)
            step = _prompt_step if kind == "start" else _decode_steps
            self._functions[key] = tf.function(lambda *args: step(self.model, *args, **options),
                                               jit_compile=xla)
        return self._functions[key]

    def cache_size(self, positions):
        """The cache length for `positions` model inputs: rounded up to BUCKET, at most n_ctx."""
        return min(-(-positions // BUCKET) * BUCKET, self.hparams.n_ctx)

    def start(self, context, total, temperature=1.0, top_k=0, top_p=1.0, seed=None):
        """Run the prompt and draw the first new token.

        context: [B, T] token ids (a prompt, or the start token). total: T plus the new tokens wanted.
        The last token drawn is never fed back, so total may be n_ctx + 1 (the original unconditional
        sampler draws n_ctx tokens after its start token). Returns a GenerationState.
        """
        context = np.asarray(context, np.int32)
        batch, prompt_length = context.shape
        if prompt_length < 1:
            raise ValueError("the context must hold at least one token")
        if total - 1 > self.hparams.n_ctx or total <= prompt_length:
            raise ValueError(f"cannot draw {total - prompt_length} tokens after {prompt_length}: the "
                             f"model sees at most n_ctx = {self.hparams.n_ctx} positions")
        size = self.cache_size(total - 1)
        padded = np.zeros([batch, min(self.cache_size(prompt_length), size)], np.int32)
        padded[:, :prompt_length] = context
        seed = np.random.randint(2**31) if seed is None else seed
        state = GenerationState(seed=int(seed), options=(temperature, top_k, top_p))
        run = self._function("start", temperature, top_k, top_p)
        state.tokens, state.cache = run(tf.constant(padded), tf.constant(prompt_length),
                                        tf.constant(size), state.seed_tensor())
        state.length = prompt_length + 1
        return state

    def extend(self, state, n):
        """Draw n more tokens for every row (state.length + n <= the cache size)."""
        if n <= 0:
            return state
        if state.length + n > state.tokens.shape[1]:
            raise ValueError(f"cannot extend to {state.length + n} tokens: the cache holds "
                             f"{state.tokens.shape[1]}")
        run = self._function("extend", *state.options)
        state.tokens, state.cache = run(state.tokens, state.cache, tf.constant(state.length),
                                        tf.constant(n), state.seed_tensor())
        state.length += n
        return state


_generators = weakref.WeakKeyDictionary()


def generator_for(model):
    """The Generator kept for this model (made on first use), so its compiled functions are reused."""
    if model not in _generators:
        _generators[model] = Generator(model)
    return _generators[model]


class GenerationState:
    """What a Generator needs to go on: the token buffer, the cache, and the random seed."""

    def __init__(self, seed, options):
        self.seed = seed
        self.options = options
        self.tokens = None
        self.cache = None
        self.length = 0

    def seed_tensor(self):
        return tf.constant(self.seed, tf.int32)

    def numpy(self):
        """The valid tokens, [B, length]."""
        return self.tokens[:, :self.length].numpy()


def _prompt_step(model, padded, prompt_length, size, seed, temperature, top_k, top_p, xla):
    """Fill a new cache of `size` positions with the (padded) prompt and draw the token after it.

    padded [B, P] (P <= size) -> (tokens [B, size + 1], cache: L pairs (keys, values) of [B * H, size, D]).
    """
    hp = model.hparams
    batch = tf.shape(padded)[0]
    cache_shape = [batch * hp.n_head, size, hp.n_embd // hp.n_head]
    cache = [(tf.zeros(cache_shape, model.compute_dtype),) * 2 for _ in range(hp.n_layer)]
    out = model(padded, past=cache, past_length=tf.constant(0))
    logits = out["logits"][:, prompt_length - 1]
    token = choose(logits, temperature, top_k, top_p, tf.stack([seed, prompt_length]), xla)
    tokens = tf.concat([padded[:, :prompt_length], tf.zeros([batch, size + 1 - prompt_length], tf.int32)], 1)
    tokens = _write(tokens, token, prompt_length)
    return tokens, out["present"]


def _decode_steps(model, tokens, cache, length, n, seed, temperature, top_k, top_p, xla):
    """Draw n tokens one at a time after the first `length` tokens of tokens [B, S + 1].

    Each step feeds the last known token at its position and writes its keys and values into the
    cache in place. Returns (tokens, cache).
    """

    def body(i, tokens, cache):
        position = length + i - 1  # the last known token, not yet in the cache
        out = model(tokens[:, position, tf.newaxis], past=cache, past_length=position)
        token = choose(out["logits"][:, 0], temperature, top_k, top_p, tf.stack([seed, position + 1]), xla)
        return i + 1, _write(tokens, token, position + 1), out["present"]

    _, tokens, cache = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), tokens, cache))
    return tokens, cache


def _write(tokens, token, position):
    """tokens[:, position] = token. tokens [B, S], token [B]."""
    column = tf.one_hot(position, tf.shape(tokens)[1], on_value=True, off_value=False)
    return tf.where(column[tf.newaxis], token[:, tf.newaxis], tokens)


def sample_sequence(model, length, start_token=None, batch_size=None, context=None, temperature=1.0,
                    top_k=0, top_p=1.0, seed=None, generator=None):
    """Sample `length` new tokens after a context, as the original `sample_sequence` does.

    Give exactly one of `start_token` (with batch_size: every row starts from that token) or
    `context` ([B, T] token ids). Returns a numpy array [B, T + length] that includes the context.
    Same seed and arguments give the same tokens. The compiled functions are kept with the model
    (or pass a Generator), so later calls reuse them.
    """
    if (start_token is None) == (context is None):
        raise ValueError("Specify exactly one of start_token and context!")
    if context is None:
        context = np.full([batch_size or 1, 1], start_token, np.int32)
    context = np.asarray(context, np.int32)
    generator = generator or generator_for(model)
    state = generator.start(context, context.shape[1] + length, temperature, top_k, top_p, seed)
    generator.extend(state, length - 1)
    return state.numpy()[:, :context.shape[1] + length]
