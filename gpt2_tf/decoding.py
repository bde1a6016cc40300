"""The decoding loop's bookkeeping, shared by every generator (TensorFlow's in sample.py, LiteRT's in
litert_runtime.py): prompts checked and padded, cache sizes, each row's random stream, and the slide
of a window past the context. No TensorFlow here.

A generator subclasses `Drawing` and gives `hparams`, `start(prompts, length, ...)` (runs the
prompts and draws the first token of each row) and `extend(state, n)` (draws n more); `draws`
and `slide` are the loop over them.
"""

from typing import NamedTuple

import numpy as np

# Prompts are padded up to a multiple of this, so that prompts of different lengths share one
# compiled function (the padding positions are masked out and then overwritten).
BUCKET = 64


def bucketed(positions, n_ctx, minimum=min):
    """The cache or prompt length for `positions` model inputs: rounded up to a multiple of BUCKET, at
    most n_ctx. `positions` is an int, or a tensor with `minimum` its minimum (tf.minimum)."""
    return minimum(-(-positions // BUCKET) * BUCKET, n_ctx)


def sample_keys(seed, rows):
    """The random stream of each row, int32 [B]: from `seed` and the row's (prompt number, sample
    number) in `rows`, mixed by NumPy's SeedSequence. Sample s of prompt p is drawn from the same
    stream in any batch, at any batch size."""
    return np.array([np.random.SeedSequence([seed, p, s]).generate_state(1)[0] for p, s in rows],
                    np.uint32).view(np.int32)


class Controls(NamedTuple):
    """The generation controls besides temperature, top-k and top-p, each off by default (controls.py
    applies them, in the order its docstring gives). Hashable: a compiled loop is made per value."""

    repetition_penalty: float = 1.0  # CTRL's, over the context (prompt and drawn tokens)
    frequency_penalty: float = 0.0  # OpenAI's, per time a token was drawn
    presence_penalty: float = 0.0  # OpenAI's, once for a token drawn at all
    no_repeat_ngram_size: int = 0  # no n-gram of the context drawn again
    min_p: float = 0.0  # keep tokens at least this times as likely as the most likely one
    logit_bias: tuple = ()  # ((token id, value), ...) added to the logits
    banned: tuple = ()  # token sequences (tuples of ids) never completed
    logprobs: int = None  # with a number n: each drawn token's log-probability and the n most likely


def padded_sequences(banned):
    """Controls.banned (tuples of ids) as the signatures take it: [K, M] int32, each sequence padded
    on the right with -1; no sequence is [[-1]] (one empty sequence, which bans nothing)."""
    table = np.full([max(1, len(banned)), max([1, *map(len, banned)])], -1, np.int32)
    for k, sequence in enumerate(banned):
        table[k, :len(sequence)] = sequence
    return table


class Drawing:
    """`draws` and `slide` over a subclass's `start` and `extend` (see the module's docstring)."""

    def prepared(self, prompts, length, seed=None, rows=None, keys=None):
        """What `start` begins with: (prompts as B int32 arrays, their lengths [B], the cache size S
        for `length` new tokens, the rows' random streams [B] int32). Raises ValueError for prompts
        that are empty or leave no room for `length` tokens. `rows` and `keys` as in `start`."""
        prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
        lengths = np.array([len(p) for p in prompts], np.int32)
        if not len(prompts) or lengths.min() < 1:
            raise ValueError("every prompt must hold at least one token")
        if lengths.max() + length - 1 > self.hparams.n_ctx or length < 1:
            raise ValueError(f"cannot draw {length} tokens after {lengths.max()}: the model sees at most "
                             f"n_ctx = {self.hparams.n_ctx} positions")
        size = bucketed(int(lengths.max()) + length - 1, self.hparams.n_ctx)
        if keys is None:
            seed = np.random.randint(2**31) if seed is None else seed
            keys = sample_keys(seed, [(0, b) for b in range(len(prompts))] if rows is None else rows)
        return prompts, lengths, size, keys

    def draws(self, prompts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None, rows=None,
              window_shift=None, chunk=None, controls=None):
        """Draw `length` tokens after each prompt; yields the GenerationState after the first token and
        after each further `chunk` tokens (default: all the rest at once). The caller may stop early.
        `controls`: a Controls (default: none on).

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
        state = self.start(prompts, segment, temperature, top_k, top_p, seed, rows, controls=controls)
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
        contexts, earlier, drawn_from = [], [], []
        for before, row, first in zip(state.earlier, state.window(), state.drawn_from):
            cut = len(row) - (n_ctx - window_shift) if len(row) > n_ctx else 0
            before, row = np.concatenate([before, row[:cut]]), row[cut:]
            contexts.append(row)
            earlier.append(before)
            drawn_from.append(max(0, first - cut))
        segment = min(remaining, n_ctx + 1 - max(len(c) for c in contexts))
        new = self.start(contexts, segment, *state.options, keys=state.keys, step=state.step + state.drawn,
                         controls=state.controls, drawn_from=np.array(drawn_from, np.int32))
        new.prompt_lengths, new.earlier = state.prompt_lengths, earlier
        new.earlier_scores = state.drawn_scores() if state.scores else None
        return new, segment




class GenerationState:
    """What a Generator needs to go on: the token buffer, the cache, each row's prompt length and
    random stream, and how many tokens each row has drawn (the same for every row). With
    controls.logprobs, `scores` holds the log-probabilities of the tokens in the buffer."""

    def __init__(self, keys, lengths, options, controls=None, drawn_from=None):
        self.keys = keys
        self.lengths = lengths  # of each row's prompt in the buffer (its window, once it slid)
        self.options = options
        self.controls = controls or Controls()
        # where each row's drawn tokens begin in the buffer (before `lengths` once the window slid)
        self.drawn_from = lengths if drawn_from is None else drawn_from
        self.tokens = None
        self.cache = None
        self.scores = ()  # (token's [B, S + 1], the n largest [B, S + 1, n], their ids), at each token
        self.earlier_scores = None  # drawn_scores() of the tokens drawn before the window slid
        self.step = 0  # tokens drawn before the window slid
        self.drawn = 0  # tokens drawn into this buffer
        self.prompt_lengths = lengths  # of the prompts first given
        self.earlier = [np.zeros(0, np.int32)] * len(lengths)  # each row's tokens that slid out

    def window(self):
        """Each row's tokens in the buffer (its prompt or window, then what it drew): B arrays."""
        tokens = np.asarray(self.tokens)
        return [tokens[b, :n + self.drawn] for b, n in enumerate(self.lengths)]

    def rows(self):
        """Each row's whole text so far, prompt and every token drawn: B arrays."""
        return [np.concatenate([before, row]) for before, row in zip(self.earlier, self.window())]

    def new_tokens(self):
        """The tokens drawn so far, [B, drawn in all]."""
        return np.stack([row[n:] for row, n in zip(self.rows(), self.prompt_lengths)])

    def drawn_scores(self):
        """With controls.logprobs: each row's (log-probability of each token drawn so far [drawn in
        all], the n largest at each [drawn in all, n], their ids [drawn in all, n])."""
        chosen, values, ids = (np.asarray(t) for t in self.scores)
        rows = []
        for b, n in enumerate(self.lengths):
            now = [t[b, n:n + self.drawn] for t in (chosen, values, ids)]
            if self.earlier_scores is not None:
                now = [np.concatenate([before, t]) for before, t in zip(self.earlier_scores[b], now)]
            rows.append(now)
        return rows

    def numpy(self):
        """The prompts and drawn tokens, [B, T + drawn], when all prompts have the same length T."""
        return np.stack(self.rows())


