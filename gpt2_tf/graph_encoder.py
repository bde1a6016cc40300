"""GPT-2's byte-level BPE as TensorFlow graph operations, for a SavedModel that takes text.

`GraphEncoder.encode` gives encoder.py's ids; `decode` gives its text. Only core TensorFlow ops are used,
so that a plain TensorFlow (TF Serving, `tf.saved_model.load`) runs them. Three steps:

1. The pre-tokenizer. GPT-2's pattern (encoder.PAT) has a lookahead, `\\s+(?!\\S)`, which TensorFlow's
   RE2 regular expressions lack. It only matters for a run of two or more whitespace characters
   followed by something else: the run's last character then starts the next piece (" world"), and
   the rest is a piece of its own. So the text is first cut before the last character of every such
   run, and the pattern without the lookahead (`\\s+` alone) then splits each part as GPT-2's splits
   it. The classes \\s, \\p{L} and \\p{N} are spelled out as the code point ranges the `regex` module
   gives them (the module encoder.py uses), so that RE2's own Unicode tables play no part.
2. Each piece's UTF-8 bytes become GPT-2's printable symbols (encoder.bytes_to_unicode).
3. The merges, all words of the batch at once: each round, every word merges every occurrence, left
   to right, of its best-ranked pair (as encoder.py's loop), until no word has a pair in the merge list.

Shapes: B texts, W words (pieces), S symbols, T tokens.
"""

import functools

import numpy as np
import regex
import tensorflow as tf

from gpt2_tf.encoder import bytes_to_unicode

CUT = b"\xff"  # marks a cut: a byte that valid UTF-8 never holds
NO_RANK = np.iinfo(np.int32).max


@functools.lru_cache
def _classes():
    """RE2 character classes for the `regex` module's \\s, \\p{L} and \\p{N} (no surrogates)."""
    space, letter, number = regex.compile(r"\s"), regex.compile(r"\p{L}"), regex.compile(r"\p{N}")
    found = {"s": [], "L": [], "N": []}
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        c = chr(code)
        for name, pattern in (("s", space), ("L", letter), ("N", number)):
            if pattern.match(c):
                found[name].append(code)
    return {name: _ranges(codes) for name, codes in found.items()}


def _ranges(codes):
    """The inside of an RE2 class holding these code points: `\\x{41}-\\x{5A}\\x{61}-...`."""
    parts, start = [], None
    for i, code in enumerate(codes):
        if start is None:
            start = code
        if i + 1 == len(codes) or codes[i + 1] != code + 1:
            parts.append(f"\\x{{{start:X}}}" + (f"-\\x{{{code:X}}}" if code != start else ""))
            start = None
    return "".join(parts)


@functools.lru_cache
def patterns():
    """(the cut pattern and its rewrite, the piece pattern) in RE2 syntax."""
    c = _classes()
    space, letter, number = f"[{c['s']}]", f"[{c['L']}]", f"[{c['N']}]"
    other = f"[^{c['s']}{c['L']}{c['N']}]"
    # A run of 2+ whitespace characters and the non-space after it: cut before the run's last one.
    cut = (f"({space}+)({space})([^{c['s']}])".encode(), b"\\1" + CUT + b"\\2\\3")
    piece = f"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+|{space}+"
    return cut, piece.encode()


class GraphEncoder(tf.Module):
    """encoder.py's `Encoder` in graph operations: its vocabulary as lookup tables.

    Args:
        encoder: the contents of encoder.json (symbol -> id).
        merges: vocab.bpe's pairs, earliest first.
    """

    def __init__(self, encoder, merges, name=None):
        super().__init__(name=name)
        byte_encoder = bytes_to_unicode()
        self.bytes_table = _table([bytes([b]) for b in range(256)],
                                  [byte_encoder[b].encode("utf-8") for b in range(256)], tf.string, b"")
        self.rank_table = _table([f"{a} {b}".encode() for a, b in merges], list(range(len(merges))),
                                 tf.int32, NO_RANK)
        symbols = list(encoder)
        self.id_table = _table([s.encode() for s in symbols], [encoder[s] for s in symbols], tf.int32, -1)
        byte_decoder = {v: k for k, v in byte_encoder.items()}
        token_bytes = [b""] * (max(encoder.values()) + 1)
        for symbol, token in encoder.items():
            token_bytes[token] = bytes(byte_decoder[ch] for ch in symbol)
        self.token_bytes = tf.constant(token_bytes, tf.string)
        self.cut, self.piece = patterns()

    def pieces(self, text):
        """The pre-tokenizer's pieces: text tf.string [B] -> RaggedTensor [B, (W)] of tf.string."""
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
        text = tf.strings.regex_replace(text, *self.cut)
        parts = tf.strings.split(text, CUT)  # [B, (P)]
        marked = tf.strings.regex_replace(parts.flat_values, self.piece, CUT + b"\\0")
        words = tf.strings.split(marked, CUT)  # [P, (W + 1)]: an empty string before the first cut
        words = tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)
        return tf.RaggedTensor.from_row_splits(words.flat_values,
                                               tf.gather(words.row_splits, parts.row_splits))

    def encode(self, text):
        """Token ids of each text: tf.string [B] -> RaggedTensor [B, (T)] int32."""
        words = self.pieces(text)  # [B, (W)]
        symbols = self.bytes_table.lookup(tf.strings.bytes_split(words.flat_values))  # [N, (S)]
        merged = self.merge(symbols.flat_values, symbols.row_splits)
        ids = self.id_table.lookup(merged.flat_values)
        tokens = tf.RaggedTensor.from_row_splits(ids, merged.row_splits)  # [N, (T)]
        return tf.RaggedTensor.from_row_splits(tokens, words.row_splits).merge_dims(1, 2)

    def merge(self, values, splits):
        """BPE merges of N words given as symbols `values` [M] in rows `splits` [N + 1]; returns the
        merged words as a RaggedTensor [N, (S)]."""

        def body(values, splits, _):
            rows = tf.ragged.row_splits_to_segment_ids(splits)  # [M]
            n = tf.shape(splits)[0] - 1
            same = rows[:-1] == rows[1:]  # [M - 1]: pair i is values[i], values[i + 1] of one word
            ranks = tf.where(same, self.rank_table.lookup(values[:-1] + " " + values[1:]), NO_RANK)
            best = tf.math.unsorted_segment_min(ranks, rows[:-1], n)  # [N]
            chosen = (ranks == tf.gather(best, rows[:-1])) & (ranks < NO_RANK)
            # Left to right: in a run of overlapping occurrences (x x x of the pair x x), every other one.
            extended = tf.concat([[False], chosen], 0)  # [M]
            run = tf.cumsum(tf.cast(~extended, tf.int32)) - 1  # [M]: which run of chosen pairs
            place = tf.range(tf.shape(extended)[0])
            first = tf.math.unsorted_segment_min(place, run, tf.shape(extended)[0])
            chosen = extended & ((place - tf.gather(first, run)) % 2 == 1)  # [M]: pair i - 1 is merged
            merged_here = tf.concat([chosen[1:], [False]], 0)  # [M]: values[i] takes values[i + 1]
            following = tf.concat([values[1:], [""]], 0)
            values = tf.boolean_mask(tf.where(merged_here, values + following, values), ~chosen)
            lengths = splits[1:] - splits[:-1] - tf.math.unsorted_segment_sum(
                tf.cast(chosen[1:], tf.int32), rows[:-1], n)
            splits = tf.concat([[0], tf.cumsum(lengths)], 0)
            return values, splits, tf.reduce_any(chosen)

        start = (values, tf.cast(splits, tf.int32), tf.size(values) > 0)
        values, splits, _ = tf.while_loop(
            lambda values, splits, changed: changed, body, start,
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])))
        return tf.RaggedTensor.from_row_splits(values, tf.cast(splits, tf.int64))

    def decode(self, ids):
        """Text of token ids: int32 [B, T] (a RaggedTensor or a tensor) -> tf.string [B]. Bytes that are
        not valid UTF-8 become U+FFFD, as encoder.py's decode gives them."""
        joined = tf.strings.reduce_join(tf.gather(self.token_bytes, ids), axis=-1)
        return tf.strings.unicode_transcode(joined, "UTF-8", "UTF-8", errors="replace")


def _table(keys, values, dtype, default):
    keys, values = tf.constant(keys, tf.string), tf.constant(values, dtype)
    initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
    return tf.lookup.StaticHashTable(initializer, default_value=tf.constant(default, dtype))
