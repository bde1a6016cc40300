"""GPT-2's byte-level BPE tokenizer.

Text is cut into pieces by a regular expression, each piece is UTF-8 encoded, every byte is mapped to a
printable unicode character, and the characters of a piece are merged pairwise in the order of the merge
list `vocab.bpe`. The resulting symbols are looked up in `encoder.json`.

Token ids are the same as the original GPT-2 encoder's for every input. The merge loop is rewritten so
that it is not quadratic in the length of a piece (the original took minutes for one 200,000-character
word), and the piece cache is bounded. This module does not import TensorFlow.
"""

import functools
import heapq
import json
import os

import regex

from gpt2_tf.hparams import model_dir

# The pre-tokenizer of GPT-2, unchanged. It is case-sensitive: "DON'T" does not split off "'T"
# (changing it would change the tokenization the released models were trained on).
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

ENDOFTEXT = "<|endoftext|>"

# Pieces up to this many characters are merged with the original's simple loop; longer pieces use a
# heap, whose set-up cost only pays off on long input. Both give the same symbols.
_SHORT_PIECE = 64


@functools.lru_cache
def bytes_to_unicode():
    """Map each byte 0..255 to a printable character.

    The 188 printable bytes map to themselves; the other 68 bytes, in ascending order, map to
    U+0100, U+0101, ... so that no byte becomes whitespace or a control character.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def get_pairs(word):
    """The set of adjacent symbol pairs of a tuple of symbols."""
    return set(zip(word, word[1:]))


class Encoder:
    """Byte-level BPE encoder and decoder.

    Args:
        encoder: dict from symbol string to token id (the contents of encoder.json).
        bpe_merges: list of (first, second) symbol pairs, earliest merge first (vocab.bpe).
        errors: how `decode` treats bytes that are not valid UTF-8 ('replace' gives U+FFFD).
        cache_size: how many distinct pieces to remember; the cache never grows past it.
    """

    def __init__(self, encoder, bpe_merges, errors="replace", cache_size=200_000):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = {tuple(pair): i for i, pair in enumerate(bpe_merges)}
        self.eot_token = encoder.get(ENDOFTEXT)
        self._piece_tokens = functools.lru_cache(maxsize=cache_size)(self._encode_piece)

    def bpe(self, token):
        """Merge the characters of one byte-mapped piece; returns the symbols joined by single spaces."""
        if len(token) <= _SHORT_PIECE:
            return " ".join(self._merge_short(token))
        return " ".join(self._merge_long(token))

    def _merge_short(self, token, steps=None):
        """The original merge loop: merge every occurrence of the best-ranked pair, then repeat. Returns
        the symbols of the piece; `steps`, a list, gets (the pair merged, its rank, the symbols after
        the merge) for each merge (`merges`)."""
        word = tuple(token)
        pairs = get_pairs(word)
        while pairs:
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if steps is not None:
                steps.append((best, self.bpe_ranks[best], word))
            pairs = get_pairs(word)
        return word

    def merges(self, token):
        """The original merge loop, one merge at a time, for reading it: [(the pair merged, its rank in
        vocab.bpe, the symbols after the merge)] of one byte-mapped piece."""
        steps = []
        self._merge_short(token, steps)
        return steps

    def _merge_long(self, token):
        """The same merges in O(n log n): a linked list of symbols and a heap of candidate pairs.

        Each round takes the best rank in the heap and merges all of that pair's occurrences left to
        right, as the original does, before any pair made by those merges is considered.
        """
        ranks = self.bpe_ranks
        symbols = list(token)
        nxt = list(range(1, len(symbols) + 1))
        prv = list(range(-1, len(symbols) - 1))
        heap = []

        def push(left):
            if left < 0 or nxt[left] >= len(symbols):
                return
            right = nxt[left]
            rank = ranks.get((symbols[left], symbols[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, symbols[left], symbols[right]))

        for i in range(len(symbols) - 1):
            push(i)
        while heap:
            rank = heap[0][0]
            occurrences = []
            while heap and heap[0][0] == rank:
                occurrences.append(heapq.heappop(heap))
            occurrences.sort(key=lambda entry: entry[1])
            merged = []
            for _, left, first, second in occurrences:
                right = nxt[left]
                # Skip occurrences that an earlier merge of this round consumed or changed.
                if symbols[left] != first or right >= len(symbols) or symbols[right] != second:
                    continue
                symbols[left] = first + second
                symbols[right] = None
                nxt[left] = nxt[right]
                if nxt[right] < len(symbols):
                    prv[nxt[right]] = left
                merged.append(left)
            for left in merged:
                if symbols[left] is not None:
                    push(prv[left])
                    push(left)
        return tuple(s for s in symbols if s is not None)

    def _encode_piece(self, piece):
        token = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
        return tuple(self.encoder[symbol] for symbol in self.bpe(token).split(" "))

    def encode(self, text):
        """Encode text to a list of token ids. `<|endoftext|>` in the text is ordinary text here."""
        tokens = []
        for piece in PAT.findall(text):
            # Long pieces are rare and would make the cache's memory unbounded: they are not cached.
            if len(piece) <= _SHORT_PIECE:
                tokens.extend(self._piece_tokens(piece))
            else:
                tokens.extend(self._encode_piece(piece))
        return tokens

    def encode_with_eot(self, text):
        """Encode text, turning each literal `<|endoftext|>` into the single id 50256.

        This is how GPT-2's training data separated documents; use it for datasets.
        """
        return encode_with_eot(self.encode, text, self.eot_token)

    def decode(self, tokens):
        """Decode token ids to text; bytes that are not valid UTF-8 become U+FFFD."""
        text = "".join(self.decoder[int(token)] for token in tokens)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors=self.errors)


def encode_with_eot(encode, text, eot):
    """encode(text) -> ids, with each literal `<|endoftext|>` in text turned into the single id eot."""
    parts = text.split(ENDOFTEXT)
    tokens = list(encode(parts[0]))
    for part in parts[1:]:
        tokens.append(eot)
        tokens.extend(encode(part))
    return tokens


def load_encoder_files(directory):
    """Read encoder.json and vocab.bpe from a directory; returns (encoder dict, merges list)."""
    with open(os.path.join(directory, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(directory, "vocab.bpe"), encoding="utf-8") as f:
        bpe_data = f.read()
    # The first line is the "#version" header; the split leaves an empty string after the last newline.
    merges = [tuple(line.split()) for line in bpe_data.split("\n")[1:-1]]
    return encoder, merges


def get_encoder(model_name, models_dir="models"):
    """The encoder of `models_dir/model_name` (old aliases accepted), from its encoder.json and vocab.bpe."""
    encoder, merges = load_encoder_files(model_dir(model_name, models_dir))
    return Encoder(encoder, merges)
