"""Sampling from GPT-2: top-k and top-p filters, and the decoding loop with a preallocated cache.

The first step runs the whole prompt through the model; each later step feeds one token and writes
its keys and values into a cache that was allocated once at its final size. The loop runs inside one
compiled TensorFlow function, compiled once per shape and reused by later calls.

Filters, as in the originals: temperature first, then top-k, then top-p (nucleus). Masked logits
become -1e10. Nucleus sampling keeps the smallest set of most likely tokens whose probability
reaches p, the token that crosses p included (the nshepperd sampler's definition). Temperature 0
means greedy decoding. The settings are Python numbers (a traced function per setting, with what is
switched off left out) or scalar tensors (one function for all settings, as a SavedModel's signature
needs: gpt2_tf/serving.py).
"""

import weakref

import numpy as np
import tensorflow as tf

from gpt2_tf.model import softmax
from gpt2_tf.ops import in_xla

# Prompts are padded up to a multiple of this, so that prompts of different lengths share one
# compiled function (the padding positions are masked out and then overwritten).
BUCKET = 64


def bucketed(positions, n_ctx):
    """The cache or prompt length for `positions` model inputs: rounded up to a multiple of BUCKET, at
    most n_ctx. `positions` is an int or an int32 tensor (then so is the result)."""
    rounded = -(-positions // BUCKET) * BUCKET
    return tf.minimum(rounded, n_ctx) if tf.is_tensor(rounded) else min(rounded, n_ctx)


def top_k_logits(logits, k, xla=False):
    """Keep the k largest logits of each row, set the rest to -1e10. logits [B, V] -> [B, V].

    k = 0 keeps everything. Logits equal to the k-th largest are kept, so ties can keep more than k.
    The k-th largest comes from tf.math.top_k, or, when `xla` (which sorts slowly on a CPU), from a
    bisection: the same value either way.
    """
    if tf.is_tensor(k):  # the filter runs only when k > 0
        return tf.cond(k > 0, lambda: _top_k(logits, k, xla), lambda: logits)
    return logits if k == 0 else _top_k(logits, k, xla)


def _top_k(logits, k, xla):
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
    if tf.is_tensor(p):  # the filter runs only when 0 < p < 1
        return tf.cond((p > 0) & (p < 1), lambda: _top_p(logits, p), lambda: logits)
    return logits if p >= 1 or p <= 0 else _top_p(logits, p)


def _top_p(logits, p):
    # Outside XLA the keys are int64: TensorFlow's GPU kernels keep int32 tensors in host memory, and
    # the [B, V] keys would be copied there and back at each of the bisection's comparisons.
    wide = not in_xla()
    keys = _order_keys(logits, wide)
    probs = softmax(tf.cast(logits, tf.float32))
    # Keep the keys above t*, the largest t such that the tokens above t hold at least p. The bounds
    # come from the keys of the smallest and largest logits (the keys keep their order), one wider
    # each way for -0.0 and +0.0, which compare equal and have keys -1 and 0.
    above = _bisect(lambda t: tf.reduce_sum(tf.where(keys > t, probs, 0.0), axis=-1, keepdims=True) >= p,
                    lo=_wide(_order_keys(tf.reduce_min(logits, axis=-1, keepdims=True))) - 2,
                    hi=_wide(_order_keys(tf.reduce_max(logits, axis=-1, keepdims=True))) + 1,
                    dtype=keys.dtype)
    return tf.where(keys > above, logits, tf.cast(-1e10, logits.dtype))


def _order_keys(logits, wide=False):
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


def _bisect(ok, lo, hi, dtype=tf.int32):
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


def choose(logits, temperature, top_k, top_p, keys, step, xla=False):
    """Draw one token per row from logits [B, V] float32 -> [B] int32.

    keys [B] int32 name each row's random stream (see `row_keys`) and `step` (a scalar) the draw within
    it: row b's draw depends on its logits, keys[b] and step alone, never on the other rows, so a
    sample is the same whatever shares its batch.

    Drawn with the Gumbel-max trick (the argmax of the logits plus Gumbel noise follows the softmax
    distribution exactly), which needs no sort or cumulative sum. `xla` says the caller compiles
    with XLA (top-k then finds its threshold by bisection).
    """
    if tf.is_tensor(temperature):  # drawn only when temperature > 0
        return tf.cond(temperature > 0, lambda: _draw(logits, temperature, top_k, top_p, keys, step, xla),
                       lambda: argmax(logits))
    return argmax(logits) if temperature == 0 else _draw(logits, temperature, top_k, top_p, keys, step, xla)


def _draw(logits, temperature, top_k, top_p, keys, step, xla):
    logits = top_p_logits(top_k_logits(logits / temperature, top_k, xla), top_p)
    uniform = uniform_noise(keys, step, tf.shape(logits)[1])
    return argmax(logits - tf.math.log(-tf.math.log(uniform)))


def uniform_noise(keys, step, size):
    """Uniform numbers in (0, 1), float32 [B, size]: row b is a function of keys[b], step and the column
    alone. A counter-based generator: each (row key, step) pair gives a 32-bit row seed, and column j's
    number is murmur3's 32-bit finalizer applied twice to that seed plus j times the golden ratio; its
    top 24 bits make the float. Integer arithmetic only, so XLA and TensorFlow's own kernels, on any
    device, give the same numbers (TensorFlow's stateless random ops use Threefry under XLA and Philox
    elsewhere); under XLA on a CPU it draws 8 x 50,257 numbers in 0.5 ms against Threefry's 0.85, one
    row after another included.
    """
    golden = tf.constant(0x9E3779B9, tf.uint32)
    step = tf.bitcast(tf.cast(step, tf.int32), tf.uint32)
    row = _fmix32(tf.bitcast(tf.cast(keys, tf.int32), tf.uint32) ^ _fmix32(step + golden))[:, None]
    column = tf.bitcast(tf.range(size), tf.uint32)[None]
    bits = _fmix32(_fmix32(row + column * golden) ^ row)
    # (n + 0.5) / 2^24 for the top 24 bits n: the largest n rounds to exactly 1.0 in float32, whose
    # Gumbel noise would be infinite (that token drawn whatever its probability, once in about 334
    # draws over 50,257 tokens), so it takes the largest float below 1 instead.
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) * 2.0**-24
    return tf.minimum(uniform, 1 - 2.0**-24)


def _fmix32(h):
    """murmur3's finalizer: a bijection of uint32 in which every input bit changes each output bit with
    probability about 1/2."""
    h ^= tf.bitwise.right_shift(h, 16)
    h *= tf.constant(0x85EBCA6B, tf.uint32)
    h ^= tf.bitwise.right_shift(h, 13)
    h *= tf.constant(0xC2B2AE35, tf.uint32)
    return h ^ tf.bitwise.right_shift(h, 16)


def row_keys(seed, rows):
    """The random stream of each row, int32 [B]: from `seed` and the row's (prompt number, sample
    number) in `rows`, mixed by NumPy's SeedSequence. Sample s of prompt p is drawn from the same
    stream in any batch, at any batch size."""
    return np.array([np.random.SeedSequence([seed, p, s]).generate_state(1)[0] for p, s in rows],
                    np.uint32).view(np.int32)


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

    Usage: `state = generator.start(prompts, length, ...)` runs the prompts and draws the first token
    of each row; `generator.extend(state, n)` draws n more. Prompts may differ in length: each row is
    right-padded, keeps its own positions, and writes its keys and values at its own place in the
    cache (rows of equal length take the one-position path, which XLA updates in place). The cache
    holds S positions and `state.tokens` is [B, S + 1].

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

    def _function(self, kind, ragged, temperature, top_k, top_p):
        key = (kind, ragged, float(temperature), int(top_k), float(top_p))
        if key not in self._functions:
            xla = self.jit_compile and kind == "extend"
            options = dict(temperature=temperature, top_k=top_k, top_p=top_p, xla=xla)
            if kind == "extend":
                options["ragged"] = ragged
            step = _prompt_step if kind == "start" else _decode_steps
            # Without autograph (the steps hold no Python control flow on tensors): tracing the 124M
            # model's prompt step took 1.1 s less (bench/cold_start.py).
            self._functions[key] = tf.function(lambda *args: step(self.model, *args, **options),
                                               jit_compile=xla, autograph=False)
        return self._functions[key]

    def start(self, prompts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None, rows=None, keys=None,
              step=0):
        """Run the prompts and draw the first new token of each.

        prompts: B token lists of any lengths (at least one token each), or a [B, T] array. `length`:
        the new tokens wanted per row (the cache is sized for them). The last token drawn is never fed
        back, so a prompt and its new tokens may make n_ctx + 1 (the original unconditional sampler
        draws n_ctx tokens after its start token). `rows`: each row's (prompt number, sample number),
        which choose its random stream with `seed` (default (0, b)), unless the streams' `keys` are
        given; `step`: the draws made before (after a window slid). Returns a GenerationState.
        """
        prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
        lengths = np.array([len(p) for p in prompts], np.int32)
        if not len(prompts) or lengths.min() < 1:
            raise ValueError("every prompt must hold at least one token")
        if lengths.max() + length - 1 > self.hparams.n_ctx or length < 1:
            raise ValueError(f"cannot draw {length} tokens after {lengths.max()}: the model sees at most "
                             f"n_ctx = {self.hparams.n_ctx} positions")
        size = bucketed(int(lengths.max()) + length - 1, self.hparams.n_ctx)
        padded = np.zeros([len(prompts), bucketed(int(lengths.max()), self.hparams.n_ctx)], np.int32)
        for b, p in enumerate(prompts):
            padded[b, :len(p)] = p
        if keys is None:
            seed = np.random.randint(2**31) if seed is None else seed
            keys = row_keys(seed, [(0, b) for b in range(len(prompts))] if rows is None else rows)
        state = GenerationState(keys, lengths, (temperature, top_k, top_p))
        run = self._function("start", None, temperature, top_k, top_p)
        state.tokens, state.cache = run(tf.constant(padded), tf.constant(lengths), tf.constant(size),
                                        tf.constant(state.keys), tf.constant(step, tf.int32))
        state.step = step
        state.drawn = 1
        return state

    def extend(self, state, n):
        """Draw n more tokens for every row (each row's prompt + drawn tokens + n within the cache)."""
        if n <= 0:
            return state
        if state.lengths.max() + state.drawn + n > state.tokens.shape[1]:
            raise ValueError(f"cannot extend to {state.lengths.max() + state.drawn + n} tokens: the cache "
                             f"holds {state.tokens.shape[1]}")
        ragged = bool((state.lengths != state.lengths[0]).any())
        run = self._function("extend", ragged, *state.options)
        state.tokens, state.cache = run(state.tokens, state.cache, tf.constant(state.lengths),
                                        tf.constant(state.drawn), tf.constant(n), tf.constant(state.keys),
                                        tf.constant(state.step + state.drawn, tf.int32))
        state.drawn += n
        return state

    def draws(self, prompts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None, rows=None,
              window_shift=None, chunk=None):
        """Draw `length` tokens after each prompt; yields the GenerationState after the first token and
        after each further `chunk` tokens (default: all the rest at once). The caller may stop early.

        Without window_shift, each prompt and its new tokens fit the model: at most n_ctx + 1 tokens
        (the last is never fed back). With it, `length` may be anything: when a row's next position
        would pass n_ctx, its context becomes its last n_ctx - window_shift tokens (prompt and drawn
        alike), which take positions 0 onwards; the cache is rebuilt and drawing goes on (`slide`).
        """
        n_ctx = self.hparams.n_ctx
        longest = max(len(p) for p in prompts)
        if window_shift is not None and not 0 < window_shift < n_ctx:
            raise ValueError(f"the window shift must be 1 to n_ctx - 1 = {n_ctx - 1}, not {window_shift}")
        if longest > n_ctx or (window_shift is None and longest + length - 1 > n_ctx):
            raise ValueError(f"cannot draw {length} tokens after {longest}: the model sees at most "
                             f"n_ctx = {n_ctx} positions")
        segment = min(length, n_ctx + 1 - longest)
        state = self.start(prompts, segment, temperature, top_k, top_p, seed, rows)
        done = 1
        yield state
        while done < length:
            if state.drawn == segment:
                state, segment = self.slide(state, window_shift, length - done)
                done += 1
            else:
                n = min(chunk or length, length - done, segment - state.drawn)
                self.extend(state, n)
                done += n
            yield state

    def slide(self, state, window_shift, remaining):
        """Go on past the context: every row whose next position would pass n_ctx keeps its last n_ctx -
        window_shift tokens; each row's context (slid or not) is run again from position 0, rebuilding
        the cache, and the next token is drawn from the same random streams. `remaining`: the tokens
        still wanted. Returns (the new state, the tokens its cache is sized for)."""
        n_ctx = self.hparams.n_ctx
        contexts, earlier = [], []
        for before, row in zip(state.earlier, state.window()):
            if len(row) > n_ctx:
                cut = len(row) - (n_ctx - window_shift)
                before, row = np.concatenate([before, row[:cut]]), row[cut:]
            contexts.append(row)
            earlier.append(before)
        segment = min(remaining, n_ctx + 1 - max(len(c) for c in contexts))
        new = self.start(contexts, segment, *state.options, keys=state.keys, step=state.step + state.drawn)
        new.prompt_lengths, new.earlier = state.prompt_lengths, earlier
        return new, segment


_generators = weakref.WeakKeyDictionary()


def generator_for(model):
    """The Generator kept for this model (made on first use), so its compiled functions are reused."""
    if model not in _generators:
        _generators[model] = Generator(model)
    return _generators[model]


class GenerationState:
    """What a Generator needs to go on: the token buffer, the cache, each row's prompt length and
    random stream, and how many tokens each row has drawn (the same for every row)."""

    def __init__(self, keys, lengths, options):
        self.keys = keys
        self.lengths = lengths  # of each row's prompt in the buffer (its window, once it slid)
        self.options = options
        self.tokens = None
        self.cache = None
        self.step = 0  # tokens drawn before the window slid
        self.drawn = 0  # tokens drawn into this buffer
        self.prompt_lengths = lengths  # of the prompts first given
        self.earlier = [np.zeros(0, np.int32)] * len(lengths)  # each row's tokens that slid out

    def window(self):
        """Each row's tokens in the buffer (its prompt or window, then what it drew): B arrays."""
        tokens = self.tokens.numpy()
        return [tokens[b, :n + self.drawn] for b, n in enumerate(self.lengths)]

    def rows(self):
        """Each row's whole text so far, prompt and every token drawn: B arrays."""
        return [np.concatenate([before, row]) for before, row in zip(self.earlier, self.window())]

    def new_tokens(self):
        """The tokens drawn so far, [B, drawn in all]."""
        return np.stack([row[n:] for row, n in zip(self.rows(), self.prompt_lengths)])

    def numpy(self):
        """The prompts and drawn tokens, [B, T + drawn], when all prompts have the same length T."""
        return np.stack(self.rows())


def _prompt_step(model, padded, lengths, size, keys, step, temperature, top_k, top_p, xla):
    """Fill a new cache of `size` positions with the (right-padded) prompts and draw the token after
    each: padded [B, P] (P <= size), lengths [B] -> (tokens [B, size + 1], cache: L pairs (keys, values)
    of [B * H, size, D]). The padding is masked from every real token and later overwritten.
    """
    hp = model.hparams
    batch = tf.shape(padded)[0]
    cache_shape = [batch * hp.n_head, size, hp.n_embd // hp.n_head]
    cache = [(tf.zeros(cache_shape, model.compute_dtype),) * 2 for _ in range(hp.n_layer)]
    out = model(padded, past=cache, past_length=tf.constant(0))
    logits = tf.gather(out["logits"], lengths[:, None] - 1, batch_dims=1)[:, 0]
    token = choose(logits, temperature, top_k, top_p, keys, step, xla)
    tokens = tf.concat([padded, tf.zeros([batch, size + 1 - tf.shape(padded)[1]], tf.int32)], 1)
    return _write(tokens, token, lengths), out["present"]


def _decode_steps(model, tokens, cache, lengths, drawn, n, keys, step, temperature, top_k, top_p, xla,
                  ragged, end=None):
    """Draw n tokens one at a time for every row of tokens [B, S + 1], whose row b holds lengths[b]
    prompt tokens and `drawn` drawn ones.

    Each step feeds each row's last known token at its position and writes its keys and values into
    the cache (in place). Without `ragged` the rows share one position. The loop is bounded by n
    (`maximum_iterations`); with `end` (a token id), it stops early once every row has drawn it (the
    positions not reached stay 0). Returns (tokens, cache).
    """

    def body(i, tokens, cache, ended):
        positions = lengths + drawn + i - 1  # [B]: each row's last known token, not yet in the cache
        fed = tf.gather(tokens, positions[:, None], batch_dims=1)
        out = model(fed, past=cache, past_length=positions if ragged else positions[0])
        token = choose(out["logits"][:, 0], temperature, top_k, top_p, keys, step + i, xla)
        ended = ended if end is None else ended | (token == end)
        return i + 1, _write(tokens, token, positions + 1), out["present"], ended

    def more(i, tokens, cache, ended):
        return ~tf.reduce_all(ended)

    last = tf.gather(tokens, (lengths + drawn - 1)[:, None], batch_dims=1)[:, 0]  # [B]
    ended = tf.zeros_like(last, tf.bool) if end is None else last == end
    _, tokens, cache, _ = tf.while_loop(more, body, (tf.constant(0), tokens, cache, ended),
                                        maximum_iterations=n)
    return tokens, cache


def _write(tokens, token, positions):
    """tokens[b, positions[b]] = token[b]. tokens [B, S], token [B], positions [B]."""
    column = tf.range(tf.shape(tokens)[1])[None] == positions[:, None]
    return tf.where(column, token[:, None], tokens)


def sample_sequence(model, length, start_token=None, batch_size=None, context=None, temperature=1.0,
                    top_k=0, top_p=1.0, seed=None, generator=None, window_shift=None):
    """Sample `length` new tokens after a context, as the original `sample_sequence` does.

    Give exactly one of `start_token` (with batch_size: every row starts from that token) or
    `context`: a [B, T] array of token ids, or a list of B token lists of different lengths. Returns
    the context with the new tokens: a numpy array [B, T + length], or for a list, a list of arrays.
    Same seed and arguments give the same tokens; row b is sample b of prompt 0 (`row_keys`), whatever
    the batch. `window_shift` lets `length` pass the context (`Generator.draws`). The compiled
    functions are kept with the model (or pass a Generator), so later calls reuse them.
    """
    if (start_token is None) == (context is None):
        raise ValueError("Specify exactly one of start_token and context!")
    if context is None:
        context = np.full([batch_size or 1, 1], start_token, np.int32)
    generator = generator or generator_for(model)
    *_, state = generator.draws(list(context), length, temperature, top_k, top_p, seed,
                                window_shift=window_shift)
    rows = state.rows()
    return rows if isinstance(context, list) and len({len(r) for r in rows}) > 1 else np.stack(rows)
