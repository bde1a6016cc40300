"""Sampling from GPT-2: top-k and top-p filters, and the decoding loop with a preallocated cache.

The first step runs the whole prompt through the model; each later step feeds one token and writes
its keys and values into a cache that was allocated once at its final size. The loop runs inside one
compiled TensorFlow function, compiled once per shape and reused by later calls.

Filters, as in the originals: temperature first, then top-k, then top-p (nucleus). Masked logits
become -1e10. Nucleus sampling keeps the smallest set of most likely tokens whose probability
reaches p, the token that crosses p included (the nshepperd sampler's definition). Temperature 0
means greedy decoding. The settings are Python numbers (a traced function per setting, with what is
switched off left out) or scalar tensors (one function for all settings, as a SavedModel's signature
needs: gpt2_tf/serving.py). Each filter is written as the originals wrote it; the kernels that find
the same thresholds without sorting (XLA sorts slowly on a CPU), and argmax, are in ops.py, and the
random streams in streams.py. Within `model.plain_formulas()` the formulas are computed.
"""

import weakref

import numpy as np
import tensorflow as tf

from gpt2_tf import ops
from gpt2_tf.controls import controlled, min_p_logits, top_logprobs
from gpt2_tf.decoding import Controls, Drawing, GenerationState, bucketed
from gpt2_tf.model import kernels_on, softmax
from gpt2_tf.streams import uniform_noise, uniform_noise_at


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
    if xla and kernels_on():
        return ops.top_k_logits(logits, k)
    values, _ = tf.math.top_k(logits, k=tf.minimum(k, tf.shape(logits)[-1]))
    min_values = values[:, -1:]
    return tf.where(logits < min_values, tf.cast(-1e10, logits.dtype), logits)


def top_p_logits(logits, p):
    """Nucleus filter: keep the most likely tokens until their probability reaches p. [B, V] -> [B, V].

    Token i is kept when the probability of the tokens ranked above it is below p, so the token that
    crosses p is kept and at least one token always is. p >= 1 or p <= 0 keeps everything. Tokens
    whose logit equals the smallest one kept are kept too (ties are kept, as the original's
    `logits < min_logits` does), by the formula and by ops.top_p_logits alike.
    """
    if tf.is_tensor(p):  # the filter runs only when 0 < p < 1
        return tf.cond((p > 0) & (p < 1), lambda: _top_p(logits, p), lambda: logits)
    return logits if p >= 1 or p <= 0 else _top_p(logits, p)


def _top_p(logits, p):
    if kernels_on():
        return ops.top_p_logits(logits, p)
    # The original's: sort, cumulative sum, and the smallest logit still kept.
    logits_sort = tf.sort(logits, direction="DESCENDING")
    probs_sort = softmax(tf.cast(logits_sort, tf.float32))
    probs_sums = tf.cumsum(probs_sort, axis=1, exclusive=True)
    logits_masked = tf.where(probs_sums < p, logits_sort, tf.ones_like(logits_sort) * 1000)
    min_logits = tf.reduce_min(logits_masked, axis=1, keepdims=True)
    return tf.where(logits < min_logits, tf.cast(-1e10, logits.dtype), logits)


def choose(logits, temperature, top_k, top_p, keys, step, xla=False, min_p=0.0):
    """Draw one token per row from logits [B, V] float32 -> [B] int32.

    keys [B] int32 name each row's random stream (see streams.py) and `step` (a scalar) the draw within
    it: row b's draw depends on its logits, keys[b] and step alone, never on the other rows, so a
    sample is the same whatever shares its batch.

    Drawn with the Gumbel-max trick (the argmax of the logits plus Gumbel noise follows the softmax
    distribution exactly), which needs no sort or cumulative sum. `xla` says the caller compiles
    with XLA (top-k then finds its threshold by bisection). `min_p` filters after top-p
    (controls.min_p_logits), as transformers' MinP comes after its TopP; greedy draws ignore it.
    """
    if tf.is_tensor(temperature):  # drawn only when temperature > 0
        return tf.cond(temperature > 0,
                       lambda: _draw(logits, temperature, top_k, top_p, min_p, keys, step, xla),
                       lambda: ops.argmax(logits))
    if temperature == 0:
        return ops.argmax(logits)
    return _draw(logits, temperature, top_k, top_p, min_p, keys, step, xla)


def _draw(logits, temperature, top_k, top_p, min_p, keys, step, xla):
    logits = logits / temperature
    if not xla and (tf.is_tensor(top_k) or top_k > 0):
        return _draw_top_k(logits, top_k, top_p, min_p, keys, step)
    return _draw_all(logits, top_k, top_p, min_p, keys, step, xla)


def _draw_all(logits, top_k, top_p, min_p, keys, step, xla):
    logits = min_p_logits(top_p_logits(top_k_logits(logits, top_k, xla), top_p), min_p)
    uniform = uniform_noise(keys, step, tf.shape(logits)[1])
    return ops.argmax(logits - tf.math.log(-tf.math.log(uniform)))


# How many tokens past the k-th `_draw_top_k` takes, to keep the ties of the k-th.
TIES = 8


def _draw_top_k(logits, k, top_p, min_p, keys, step):
    """_draw_all's token for top-k, drawn among the k largest logits (with up to TIES more that tie
    with the k-th): the noise of those tokens only. The same token as over the whole vocabulary
    (the others' logits are -1e10 there, and never drawn), where the noise, drawn with TensorFlow's
    or LiteRT's integer kernels, was most of a decoding step's sampling time (2.7 of 3 ms, LiteRT
    int8, 124M, batch 1). Rows with more ties, and k = 0, take _draw_all."""
    n_vocab = tf.shape(logits)[1]
    k = tf.convert_to_tensor(k)
    values, ids = tf.math.top_k(logits, tf.minimum(k + TIES, n_vocab))  # [B, k + TIES], largest first
    kth = tf.gather(values, tf.clip_by_value(k, 1, n_vocab) - 1, axis=1)[:, None]
    more_ties = (values[:, -1:] == kth) & (k + TIES < n_vocab)  # the last one taken ties with the k-th

    def among_largest():
        kept = tf.where(values >= kth, values, tf.cast(-1e10, values.dtype))
        kept = min_p_logits(top_p_logits(kept, top_p), min_p)
        noise = -tf.math.log(-tf.math.log(uniform_noise_at(keys, step, ids)))
        return tf.gather(ids, ops.argmax(kept + noise)[:, None], batch_dims=1)[:, 0]

    return tf.cond((k > 0) & ~tf.reduce_any(more_ties), among_largest,
                   lambda: _draw_all(logits, k, top_p, min_p, keys, step, xla=False))


def default_jit_compile(dtype="float32"):
    """Whether to compile the decoding loop with XLA (measured with bench/sample.py).

    Yes on GPU and TPU, and for float32 on CPU (fused kernels and a cache updated in place: 87 and
    313 tokens/s at batch 1 and 8 against 70 and 250 as a TensorFlow graph). Not for bfloat16 on CPU,
    where XLA's matrix-vector products are several times slower than oneDNN's.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return True
    return dtype != "bfloat16"


class Generator(Drawing):
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

    def _compiled(self, step, temperature, top_k, top_p, **options):
        """`step` (prompt_step or decode_steps) of this model with these settings, as a tf.function made
        once: the decoding steps with XLA when `jit_compile`, the prompt step as a TensorFlow graph."""
        key = (step, float(temperature), int(top_k), float(top_p), *sorted(options.items()))
        if key not in self._functions:
            xla = self.jit_compile and step is decode_steps
            settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, xla=xla, **options)
            # Without autograph (the steps hold no Python control flow on tensors): tracing the 124M
            # model's prompt step took 1.1 s less (bench/cold_start.py).
            self._functions[key] = tf.function(lambda *args, **kw: step(self.model, *args, **kw, **settings),
                                               jit_compile=xla, autograph=False)
        return self._functions[key]

    def start(self, prompts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None, rows=None, keys=None,
              step=0, controls=None, drawn_from=None):
        """Run the prompts and draw the first new token of each.

        prompts: B token lists of any lengths (at least one token each), or a [B, T] array. `length`:
        the new tokens wanted per row (the cache is sized for them). The last token drawn is never fed
        back, so a prompt and its new tokens may make n_ctx + 1 (the original unconditional sampler
        draws n_ctx tokens after its start token). `rows`: each row's (prompt number, sample number),
        which choose its random stream with `seed` (default (0, b)), unless the streams' `keys` are
        given; `step`: the draws made before (after a window slid). `controls`: a decoding.Controls;
        `drawn_from`: where each row's drawn tokens begin in its prompt (after a window slid; default
        its length). Returns a GenerationState.
        """
        prompts, lengths, size, keys = self.prepared(prompts, length, seed, rows, keys)
        padded = np.zeros([len(prompts), bucketed(int(lengths.max()), self.hparams.n_ctx)], np.int32)
        for b, p in enumerate(prompts):
            padded[b, :len(p)] = p
        state = GenerationState(keys, lengths, (temperature, top_k, top_p), controls, drawn_from)
        run = self._compiled(prompt_step, temperature, top_k, top_p, controls=state.controls)
        state.tokens, state.cache, state.scores = run(
            tf.constant(padded), tf.constant(lengths), tf.constant(size), tf.constant(state.keys),
            tf.constant(step, tf.int32), drawn_from=tf.constant(state.drawn_from, tf.int32))
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
        run = self._compiled(decode_steps, *state.options, ragged=ragged, controls=state.controls)
        state.tokens, state.cache, state.scores = run(
            state.tokens, state.cache, tf.constant(state.lengths), tf.constant(state.drawn), tf.constant(n),
            tf.constant(state.keys), tf.constant(state.step + state.drawn, tf.int32), scores=state.scores,
            drawn_from=tf.constant(state.drawn_from, tf.int32))
        state.drawn += n
        return state

_generators = weakref.WeakKeyDictionary()


def generator_for(model):
    """The Generator kept for this model (made on first use), so its compiled functions are reused."""
    if model not in _generators:
        _generators[model] = Generator(model)
    return _generators[model]


NO_CONTROLS = Controls()


def prompt_step(model, padded, lengths, size, keys, step, temperature, top_k, top_p, xla, drawn_from=None,
                controls=NO_CONTROLS):
    """Fill a new cache of `size` positions with the (right-padded) prompts and draw the token after
    each: padded [B, P] (P <= size), lengths [B] -> (tokens [B, size + 1], cache: L pairs (keys, values)
    of [B * H, size, D], scores). The padding is masked from every real token and later overwritten.

    `controls` (decoding.Controls) apply to the logits, `drawn_from` [B] (default `lengths`) saying
    where each prompt's drawn tokens begin. With controls.logprobs = n, scores are (log p of each
    token [B, size + 1], the n largest [B, size + 1, n], their ids), written at the position of the
    token drawn (`write_scores`); else ().
    """
    hp = model.hparams
    batch = tf.shape(padded)[0]
    cache_shape = [batch * hp.n_head, size, hp.n_embd // hp.n_head]
    cache = [(tf.zeros(cache_shape, model.compute_dtype),) * 2 for _ in range(hp.n_layer)]
    out = model.call_with_cache(padded, cache, tf.constant(0))
    logits = tf.gather(out["logits"], lengths[:, None] - 1, batch_dims=1)[:, 0]
    drawn_from = lengths if drawn_from is None else drawn_from
    token = choose(controlled(logits, controls, padded, lengths, drawn_from), temperature, top_k, top_p,
                   keys, step, xla, controls.min_p)
    tokens = tf.concat([padded, tf.zeros([batch, size + 1 - tf.shape(padded)[1]], tf.int32)], 1)
    scores = ()
    if controls.logprobs is not None:
        n = controls.logprobs
        empty = (tf.zeros([batch, size + 1]), tf.zeros([batch, size + 1, n]),
                 tf.zeros([batch, size + 1, n], tf.int32))
        scores = write_scores(empty, logits, token, lengths, n)
    return write_token(tokens, token, lengths), out["cache"], scores


def decode_steps(model, tokens, cache, lengths, drawn, n, keys, step, temperature, top_k, top_p, xla,
                 ragged, end=None, scores=(), drawn_from=None, controls=NO_CONTROLS):
    """Draw n tokens one at a time for every row of tokens [B, S + 1], whose row b holds lengths[b]
    prompt tokens and `drawn` drawn ones.

    Each step feeds each row's last known token at its position and writes its keys and values into
    the cache (in place). Without `ragged` the rows share one position. The loop is bounded by n
    (`maximum_iterations`); with `end` (a token id), it stops early once every row has drawn it (the
    positions not reached stay 0). `scores`, `drawn_from` and `controls` as prompt_step's. Returns
    (tokens, cache, scores).
    """
    drawn_from = lengths if drawn_from is None else drawn_from

    def body(i, tokens, cache, scores, ended):
        positions = lengths + drawn + i - 1  # [B]: each row's last known token, not yet in the cache
        fed = tf.gather(tokens, positions[:, None], batch_dims=1)
        out = model.call_with_cache(fed, cache, positions if ragged else positions[0])
        logits = out["logits"][:, 0]
        token = choose(controlled(logits, controls, tokens, positions + 1, drawn_from), temperature, top_k,
                       top_p, keys, step + i, xla, controls.min_p)
        ended = ended if end is None else ended | (token == end)
        scores = write_scores(scores, logits, token, positions + 1, controls.logprobs)
        return i + 1, write_token(tokens, token, positions + 1), out["cache"], scores, ended

    def more(i, tokens, cache, scores, ended):
        return ~tf.reduce_all(ended)

    last = tf.gather(tokens, (lengths + drawn - 1)[:, None], batch_dims=1)[:, 0]  # [B]
    ended = tf.zeros_like(last, tf.bool) if end is None else last == end
    _, tokens, cache, scores, _ = tf.while_loop(more, body, (tf.constant(0), tokens, cache, scores, ended),
                                                maximum_iterations=n)
    return tokens, cache, scores


def write_token(tokens, token, positions):
    """tokens[b, positions[b]] = token[b]. tokens [B, S], token [B], positions [B]."""
    column = tf.range(tf.shape(tokens)[1])[None] == positions[:, None]
    return tf.where(column, token[:, None], tokens)


def write_scores(scores, logits, token, positions, n):
    """The scores (see prompt_step) with the model's log-probabilities of the token drawn after logits
    [B, V] (controls.top_logprobs) written at positions [B]; () stays ()."""
    if not scores:
        return scores
    column = tf.range(tf.shape(scores[0])[1])[None] == positions[:, None]  # [B, S + 1]
    return tuple(tf.where(column if new.shape.rank == 1 else column[..., None], new[:, None], old)
                 for new, old in zip(top_logprobs(logits, token, n), scores))


def sample_sequence(model, length, start_token=None, batch_size=None, context=None, temperature=1.0,
                    top_k=0, top_p=1.0, seed=None, generator=None, window_shift=None, controls=None):
    """Sample `length` new tokens after a context, as the original `sample_sequence` does.

    Give exactly one of `start_token` (with batch_size: every row starts from that token) or
    `context`: a [B, T] array of token ids, or a list of B token lists of different lengths. Returns
    the context with the new tokens: a numpy array [B, T + length], or for a list, a list of arrays.
    Same seed and arguments give the same tokens; row b is sample b of prompt 0
    (`decoding.sample_keys`), whatever the batch. `window_shift` lets `length` pass the context
    (`Generator.draws`); `controls`, a decoding.Controls, sets the penalties, bans and min-p
    (controls.py). The compiled functions are kept with the model (or pass a Generator), so
    later calls reuse them.
    """
    if (start_token is None) == (context is None):
        raise ValueError("Specify exactly one of start_token and context!")
    if context is None:
        context = np.full([batch_size or 1, 1], start_token, np.int32)
    generator = generator or generator_for(model)
    *_, state = generator.draws(list(context), length, temperature, top_k, top_p, seed,
                                window_shift=window_shift, controls=controls)
    rows = state.rows()
    return rows if isinstance(context, list) and len({len(r) for r in rows}) > 1 else np.stack(rows)
