"""The generation controls applied to the next token's logits before temperature and the filters:
logit bias, repetition penalty, frequency and presence penalties, no repeated n-grams, banned token
sequences (settings in decoding.Controls). Each row sees only its own context, so a row's draws do
not depend on the rest of its batch.

Applied in this order, transformers' where it has the setting (its sequence bias, repetition
penalty, no-repeat n-grams, bad words), OpenAI's penalties after its repetition penalty:
1. `logit_bias`: each listed token's logit + its value.
2. `repetition_penalty` P (CTRL's): the logit of every token in the context (prompt and drawn) is
   divided by P if positive, multiplied by P if negative.
3. `frequency_penalty` F, `presence_penalty` R (OpenAI's): logit - F x count - R x [count > 0], with
   count the times the token was drawn (the prompt does not count).
4. `no_repeat_ngram_size` N: no token that would end an N-gram already in the context.
5. `banned`: no token that would complete a banned sequence.
Masked tokens get -1e10 added (the filters set -1e10). The context is each row's window of the
token buffer: after a window slid (sample.py --sliding_window) the tokens that left it count no more.

A setting is a Python value (left out when off) or a tensor (a SavedModel's or a LiteRT file's:
applied when any is on; each is the identity at its off value): the numbers as scalars,
`logit_bias` as a pair (ids [N] int32, values [N] float32), `banned` as sequences [K, M] int32, each
padded on the right with -1.
"""

import tensorflow as tf

from gpt2_tf.decoding import Controls, padded_sequences

MASKED = -1e10


def controlled(logits, controls, tokens, length, drawn_from):
    """logits [B, V] float32 of the token after each row's context -> [B, V], the controls applied.

    tokens [B, S]: row b's context is tokens[b, :length[b]], of which tokens[b, drawn_from[b]:length[b]]
    were drawn (the rest is the prompt). `controls`: a decoding.Controls. With tensor settings, the
    controls run only when one of them is on (a tf.cond).
    """
    if tf.is_tensor(controls.repetition_penalty):
        return tf.cond(any_on(controls), lambda: _controlled(logits, controls, tokens, length, drawn_from),
                       lambda: logits)
    return _controlled(logits, controls, tokens, length, drawn_from)


def any_on(c):
    """Whether any of the tensor settings of Controls `c` is on: a bool scalar."""
    return ((c.repetition_penalty != 1) | (c.frequency_penalty != 0) | (c.presence_penalty != 0)
            | (c.no_repeat_ngram_size > 0) | tf.reduce_any(c.logit_bias[1] != 0)
            | tf.reduce_any(c.banned >= 0))


def _controlled(logits, c, tokens, length, drawn_from):
    n_vocab = tf.shape(logits)[1]
    if c.logit_bias:
        ids, values = c.logit_bias if tf.is_tensor(c.logit_bias[0]) else zip(*c.logit_bias)
        ids, values = tf.convert_to_tensor(ids, tf.int32), tf.convert_to_tensor(values, tf.float32)
        logits += tf.scatter_nd(ids[:, None], values, [n_vocab])[None]
    # The rest changes the logits of the context's tokens and of a few more only: each control says
    # what to add at which ids ([B, N] each), and one scatter adds it all, so that a step does a few
    # passes over [B, V] whatever is on (LiteRT's kernels for [B, V] selects are slow).
    positions = tf.range(tf.shape(tokens)[1])[None]  # [1, S]
    in_context = positions < length[:, None]
    ids, amounts = [], []
    if on(c.repetition_penalty, 1.0) or on(c.frequency_penalty, 0.0) or on(c.presence_penalty, 0.0):
        ids.append(tokens)
        amounts.append(penalties(logits, c, tokens, in_context, positions >= drawn_from[:, None], n_vocab))
    if on(c.no_repeat_ngram_size, 0):
        follows, repeats = repeated_ngram_ends(tokens, length, c.no_repeat_ngram_size)
        ids.append(follows)
        amounts.append(tf.where(repeats, MASKED, 0.0))
    if tf.is_tensor(c.banned) or c.banned:
        ends, match = banned_ends(tokens, length, c.banned)
        ids.append(ends)
        amounts.append(tf.where(match, MASKED, 0.0))
    if not ids:
        return logits
    return logits + scatter_rows(tf.concat(ids, 1), tf.concat(amounts, 1), n_vocab)


def penalties(logits, c, tokens, in_context, drawn, n_vocab):
    """What the repetition, frequency and presence penalties add to the logit of each context
    position's token: [B, S], divided by the times the token is in the context, so that summed over
    its positions it is added once. drawn [B, S] bool: the positions drawn."""
    seen = tf.gather(logits, tokens, batch_dims=1)  # [B, S]: each position's token's logit
    change = tf.zeros_like(seen)
    if on(c.repetition_penalty, 1.0):
        p = c.repetition_penalty
        change += tf.where(seen < 0, seen * p, seen / p) - seen
    if on(c.frequency_penalty, 0.0) or on(c.presence_penalty, 0.0):
        n = tf.gather(counts(tokens, in_context & drawn, n_vocab), tokens, batch_dims=1)  # times drawn
        change -= c.frequency_penalty * n + c.presence_penalty * tf.cast(n > 0, tf.float32)
    times = tf.gather(counts(tokens, in_context, n_vocab), tokens, batch_dims=1)
    return tf.where(in_context, change / tf.maximum(times, 1.0), 0.0)


def on(setting, off):
    """Whether a setting is to be applied: a tensor always, a Python number when not `off`."""
    return tf.is_tensor(setting) or setting != off


def counts(tokens, where, n_vocab):
    """How many times each token id appears in each row where `where` holds: tokens [B, S], where
    [B, S] bool -> [B, V] float32."""
    return scatter_rows(tokens, tf.cast(where, tf.float32), n_vocab)


def scatter_rows(ids, weights, n_vocab):
    """Sum of weights [B, N] at ids [B, N] in each row: -> [B, V] float32. (A scatter that adds what
    falls on one place, in XLA, TensorFlow and LiteRT alike; LiteRT's segment sum took 5 ms more per
    step at batch 8.)"""
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    return tf.scatter_nd(tf.stack([rows, ids], -1), weights, [tf.shape(ids)[0], n_vocab])


def repeated_ngram_ends(tokens, length, n):
    """The tokens that would repeat an n-gram of the context: (tokens [B, S], whether each would
    [B, S]): tokens[b, j + n - 1] wherever tokens[b, j : j + n - 1] equals the context's last n - 1
    tokens (all n-grams of tokens[b, :length[b]], n-grams over the prompt included, as
    transformers' NoRepeatNGram)."""
    width = tf.shape(tokens)[1]
    start = tf.range(width)  # [S]: where an n-gram of the context may start
    offsets = tf.range(tf.maximum(n - 1, 0))  # [n - 1]
    grams = tf.gather(tokens, tf.minimum(start[:, None] + offsets, width - 1), axis=1)  # [B, S, n - 1]
    last = tf.gather(tokens, tf.maximum(length[:, None] - (n - 1) + offsets, 0), batch_dims=1)  # [B, n - 1]
    follows = tf.gather(tokens, tf.clip_by_value(start + n - 1, 0, width - 1), axis=1)  # [B, S]
    inside = (start[None] + n - 1 < length[:, None]) & (n > 0)
    return follows, tf.reduce_all(grams == last[:, None], axis=-1) & inside


def banned_ends(tokens, length, banned):
    """The tokens that would complete one of the `banned` sequences (tuples of ids, or a tensor [K, M]
    padded with -1): (each sequence's last token [B, K], whether the context ends with the rest of it
    [B, K]; always, for one-token ones)."""
    prefixes, ends = banned_table(banned if tf.is_tensor(banned) else tf.constant(padded_sequences(banned)))
    width = tf.shape(prefixes)[1]
    at = length[:, None] - width + tf.range(width)  # [B, M]: the context's last M positions
    last = tf.where(at >= 0, tf.gather(tokens, tf.maximum(at, 0), batch_dims=1), -2)  # -2: before the start
    match = tf.reduce_all((prefixes[None] < 0) | (last[:, None] == prefixes[None]), axis=-1)  # [B, K]
    match &= ends[None] >= 0
    return tf.broadcast_to(tf.maximum(ends, 0)[None], tf.shape(match)), match


def banned_table(sequences):
    """Banned sequences [K, M] int32 padded on the right with -1 (decoding.padded_sequences) ->
    (prefixes [K, M - 1] right-aligned and padded on the left with -1, ends [K]; an empty sequence's
    end is -1, which no token is)."""
    sizes = tf.reduce_sum(tf.cast(sequences >= 0, tf.int32), axis=1)  # [K]
    width = tf.shape(sequences)[1] - 1
    at = sizes[:, None] - 1 - width + tf.range(width)[None]  # [K, M - 1]: where each prefix slot reads
    prefixes = tf.where(at >= 0, tf.gather(sequences, tf.maximum(at, 0), batch_dims=1), -1)
    ends = tf.where(sizes > 0, tf.gather(sequences, tf.maximum(sizes - 1, 0), batch_dims=1), -1)
    return prefixes, ends


def min_p_logits(logits, m):
    """Keep the tokens whose probability is at least m times the most likely one's (transformers'
    MinP: p >= m x p_max, that is logit >= max logit + log m); the rest -> -1e10. [B, V] -> [B, V].
    m = 0 keeps everything."""
    if not tf.is_tensor(m) and m == 0:
        return logits
    floor = tf.reduce_max(logits, axis=-1, keepdims=True) + tf.math.log(tf.cast(m, logits.dtype))
    return tf.where(logits < floor, tf.cast(MASKED, logits.dtype), logits)


def top_logprobs(logits, token, n):
    """The model's log-probabilities (log-softmax of its logits, before any control or filter):
    logits [B, V], token [B] -> (token's [B], the n largest [B, n], their ids [B, n] int32)."""
    logprobs = tf.nn.log_softmax(logits)
    values, ids = tf.math.top_k(logprobs, n)
    return tf.gather(logprobs, token[:, None], batch_dims=1)[:, 0], values, ids


# The controls as a signature's inputs (a SavedModel's, a LiteRT file's): (name, shape, dtype), in the
# order `from_inputs` takes them. Off: 1, 0, 0, 0, 0, no bias (or a bias of 0), banned [[-1]] (one
# empty sequence, or none), logprobs 0.
INPUTS = (("repetition_penalty", [], tf.float32), ("frequency_penalty", [], tf.float32),
          ("presence_penalty", [], tf.float32), ("no_repeat_ngram_size", [], tf.int32),
          ("min_p", [], tf.float32),
          ("logit_bias_ids", [None], tf.int32), ("logit_bias_values", [None], tf.float32),
          ("banned", [None, None], tf.int32), ("logprobs", [], tf.int32))


def input_specs():
    """The TensorSpecs of INPUTS, named."""
    return [tf.TensorSpec(shape, dtype, name) for name, shape, dtype in INPUTS]


def from_inputs(repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size, min_p,
                logit_bias_ids, logit_bias_values, banned, logprobs):
    """The INPUTS tensors as a decoding.Controls."""
    return Controls(repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size, min_p,
                    (logit_bias_ids, logit_bias_values), banned, logprobs)
