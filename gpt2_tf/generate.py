"""Text from a Generator: stop strings that end a row, and streaming row 0's text as it is made."""

from typing import NamedTuple

import numpy as np

from gpt2_tf.checkpoint_files import CheckpointError

# When text has to be checked (stop strings) or shown while it is made, tokens are drawn in chunks
# of this many steps, each chunk one call of the compiled loop.
CHUNK = 8


class GenerationError(CheckpointError):
    """The model drew a token that is not in its vocabulary: its weights are damaged."""


class Stops:
    """Finds the first stop string in a row's text."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]

    def cut(self, text):
        """(text before the first stop string, whether one was found)."""
        hits = [text.find(s) for s in self.stops]
        hits = [i for i in hits if i >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def hold_back(self):
        """How many trailing characters may still turn out to start a stop string."""
        return max((len(s) - 1 for s in self.stops), default=0)


def generate_texts(generator, enc, contexts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                   stops=(), stream=None, rows=None, window_shift=None, controls=None):
    """Draw `length` tokens after each context (token lists, of any lengths); returns the new text of
    each row (generate_samples' texts)."""
    return [s.text for s in generate_samples(generator, enc, contexts, length, temperature, top_k, top_p,
                                             seed, stops, stream, rows, window_shift, controls)]


class Sample(NamedTuple):
    """A row's new text, the tokens it is made of, and with controls.logprobs, their scores: (each
    token's log-probability [n], the most likely ones' [n, N], their ids [n, N])."""

    text: str
    tokens: list
    scores: tuple = None


def generate_samples(generator, enc, contexts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                     stops=(), stream=None, rows=None, window_shift=None, controls=None):
    """Draw `length` tokens after each context (token lists, of any lengths); returns a Sample per row.

    A row whose text contains one of `stops` ends there (the stop string and what follows are cut,
    and the tokens with them: a Sample keeps the tokens whose bytes lie wholly in its text), and
    drawing ends once every row has ended; until then an ended row is drawn with the others.
    `stream(piece)` receives row 0's text as it is made. `rows`, `window_shift` and `controls` (a
    decoding.Controls): see `Generator.draws`.
    """
    stops = Stops(stops)
    chunked = bool(stops.stops) or stream is not None
    shown = 0
    for state in generator.draws(contexts, length, temperature, top_k, top_p, seed, rows, window_shift,
                                 chunk=CHUNK if chunked else None, controls=controls):
        tokens = state.new_tokens()
        outside = tokens[(tokens < 0) | (tokens >= len(enc.decoder))]
        if outside.size:
            raise GenerationError(f"the model drew token id {outside[0]}, outside its vocabulary of "
                                  f"{len(enc.decoder)} tokens: its weights are damaged")
        texts, ended = zip(*(stops.cut(enc.decode(row)) for row in tokens))
        done = tokens.shape[1] >= length or all(ended)
        if stream is not None:
            text = texts[0]
            if not (done or ended[0]):
                # Hold back an unfinished UTF-8 character and a possible start of a stop string.
                text = text.rstrip("\ufffd")
                text = text[:max(shown, len(text) - stops.hold_back())]
            if len(text) > shown:
                stream(text[shown:])
                shown = len(text)
        if done:
            scores = state.drawn_scores() if state.scores else [None] * len(texts)
            samples = []
            for text, row, score, cut in zip(texts, tokens, scores, ended):
                kept = within(enc, row, text) if cut else len(row)
                samples.append(Sample(text, row[:kept].tolist(), score and tuple(t[:kept] for t in score)))
            return samples


def within(enc, tokens, text):
    """How many of `tokens` lie wholly within `text`, the start of their decoded text."""
    ends = np.cumsum([len(enc.decoder[t]) for t in tokens])  # a byte per character of a token's string
    return int(np.searchsorted(ends, len(text.encode("utf-8")), side="right"))
