"""Encoding long texts: cutting them into pieces safely, and a fast path through tiktoken.

`Splitter` cuts a stream of text into pieces that can be encoded separately (in parallel, or as they are
read) with exactly the tokens of the whole text.

`FastEncoder` gives the same tokens as `gpt2_tf.encoder.Encoder.encode`, several times faster, using
tiktoken with a vocabulary built from the model's own encoder.json and vocab.bpe (nothing is downloaded).
tiktoken is optional: without it `FastEncoder.build` returns None and callers use the reference encoder.
Where tiktoken's regex could split text differently from the reference's, that part of the text is split
by the reference's regex (and its pieces merged by tiktoken's BPE, which is the same as GPT-2's):
  * characters whose Unicode class (letter, number, space) differs between the `regex` module and
    tiktoken's regex engine, because they were built with different Unicode versions;
  * runs of more than MAX_SPACE_RUN whitespace characters: tiktoken 0.14 aborts with a Rust
    "StackOverflow" panic on a run of about a million spaces.
This module does not import TensorFlow.
"""

import functools

import numpy as np
import regex

from gpt2_tf.encoder import ENDOFTEXT, PAT

try:
    import tiktoken
except ImportError:
    tiktoken = None

# Whitespace runs longer than this are kept from tiktoken's regex (it fails at about 1,000,000).
MAX_SPACE_RUN = 100_000

# When a text holds something tiktoken's regex must not see, it is cut into pieces of about this many
# characters, and only the pieces that hold it are split by the reference's regex.
SMALL_PIECE = 4096

# PAT with its contractions in one group, as tiktoken writes it: the same matches (the contractions
# differ in their second character, so their order does not matter), and tiktoken runs it 15% faster.
TIKTOKEN_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# A non-space character followed by a space: a cut between the two is always safe (see Splitter).
_CUT = regex.compile(r"\S\s")
_SPACE = regex.compile(r"\s")


def _pattern_cut(text, start):
    """The first place from `start` on where PAT ends a piece that is not whitespace, or None.

    Pieces that end within one character of the end of `text` are not used: PAT's decision for them
    may depend on characters that come after `text`.
    """
    for match in PAT.finditer(text):
        end = match.end()
        if end + 1 >= len(text):
            return None
        if end >= start and not _SPACE.match(text, end - 1):
            return end
    return None


class Splitter:
    """Cuts a stream of text into pieces whose tokens, put together, are the tokens of the whole text.

    Why this is safe: PAT splits text into pieces, and every piece that holds a whitespace character
    after its first character is made of whitespace only. So where a non-space character is followed by a
    space, a piece ends between them. Nothing PAT decides before that point looks past it, except to
    find the end of a run of letters, digits or symbols, where the end of the text stops the run just
    as the space does; its one lookahead, `(?!\\S)`, only follows whitespace. And PAT has no lookbehind,
    so the text after the cut is split as it would be in the whole. The same holds at any end of a PAT
    piece that is not preceded by whitespace; that is used for text with no space for a long stretch.

    Pieces are at least `size` characters, except the last; call `feed` with text as it comes and
    `finish` at the end of the stream.
    """

    def __init__(self, size):
        self.size = max(1, size)
        self.text = ""
        self._scan_from = 0
        self._limit = 4 * self.size

    def feed(self, text):
        """Add text to the stream; returns the list of pieces that are now complete."""
        self.text += text
        pieces = []
        while len(self.text) > self.size:
            cut = self._find_cut()
            if cut is None:
                break
            pieces.append(self.text[:cut])
            self.text = self.text[cut:]
            self._scan_from = 0
            self._limit = 4 * self.size
        return pieces

    def finish(self):
        """The rest of the stream as the last piece ('' if there is none); the splitter is then empty."""
        rest, self.text = self.text, ""
        self._scan_from = 0
        self._limit = 4 * self.size
        return rest

    def _find_cut(self):
        match = _CUT.search(self.text, max(self._scan_from, self.size - 1))
        if match:
            return match.start() + 1
        self._scan_from = len(self.text) - 1
        if len(self.text) < self._limit:
            return None
        # No space for a long stretch: ask the pre-tokenizer, and if it finds nothing either (one
        # enormous piece), wait until the text has doubled before asking again.
        cut = _pattern_cut(self.text, self.size)
        if cut is None:
            self._limit = 2 * len(self.text)
        return cut


def split_text(text, size):
    """Cut `text` into pieces of at least `size` characters (the last may be shorter), as Splitter does."""
    splitter = Splitter(size)
    pieces = splitter.feed(text)
    rest = splitter.finish()
    return pieces + [rest] if rest else pieces


def _has_space_run(text):
    """True if `text` may hold a run of MAX_SPACE_RUN or more whitespace characters.

    Such a run contains a whole aligned block of MAX_SPACE_RUN // 2 characters, and `str.isspace` is true
    for every character that PAT's `\\s` matches, so no run is missed. Most blocks fail at their first
    character.
    """
    half = max(1, MAX_SPACE_RUN // 2)
    return any(text[i:i + half].isspace() for i in range(0, len(text) - half + 1, half))


@functools.lru_cache
def unsure_characters():
    """Code points that PAT (the `regex` module) and tiktoken's regex engine classify differently.

    They are found by asking tiktoken itself: an encoding whose pattern is just `\\p{L}` (or `\\p{N}`, `\\s`),
    with one token per byte, returns the bytes of exactly the characters that its engine matches.
    Surrogates are added: the reference encoder refuses them, and tiktoken would replace them.
    Returns a sorted numpy array of code points.
    """
    codes = np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)]).astype("<u4")
    every = codes.tobytes().decode("utf-32-le")
    byte_ranks = {bytes([b]): b for b in range(256)}
    unsure = set(range(0xD800, 0xE000))
    for name, cls in [("letters", r"\p{L}"), ("numbers", r"\p{N}"), ("spaces", r"\s")]:
        probe = tiktoken.Encoding(f"probe-{name}", pat_str=cls, mergeable_ranks=byte_ranks, special_tokens={})
        theirs = set(bytes(probe.encode_ordinary(every)).decode("utf-8"))
        ours = set(regex.findall(cls, every))
        unsure.update(ord(c) for c in theirs ^ ours)
    return np.array(sorted(unsure), dtype=np.int64)


def mergeable_ranks(encoder, merges, byte_decoder):
    """tiktoken's `mergeable_ranks` for a byte-level BPE vocabulary, or None if it cannot represent it.

    tiktoken repeatedly merges the adjacent pair whose joined bytes have the lowest rank (token id); GPT-2
    merges the pair that comes first in vocab.bpe. For a vocabulary learned by BPE whose ids follow the
    order of its merges, as GPT-2's do, the two give the same tokens (tiktoken's own GPT-2 encoding
    relies on this); a vocabulary whose ids do not follow that order is refused here. Ids that are
    neither a byte nor a merge (`<|endoftext|>`) are left out.
    """
    def to_bytes(symbol):
        return bytes(byte_decoder[c] for c in symbol)

    ranks = {}
    for symbol in byte_decoder:
        if symbol not in encoder:
            return None
        ranks[to_bytes(symbol)] = encoder[symbol]
    previous = -1
    for first, second in merges:
        symbol = first + second
        if symbol not in encoder or encoder[symbol] <= previous or not set(symbol) <= byte_decoder.keys():
            return None
        previous = encoder[symbol]
        ranks[to_bytes(symbol)] = previous
    if len(set(ranks.values())) != len(ranks):
        return None
    return ranks


class FastEncoder:
    """GPT-2's tokenizer through tiktoken, with the same tokens as the reference `Encoder`.

    Build it with `FastEncoder.build(encoder)`, which returns None when tiktoken is not installed or
    cannot represent the vocabulary.
    """

    def __init__(self, reference, encoding, unsure=None):
        self.reference = reference
        self.encoding = encoding
        self.unsure = np.zeros(0x110000, dtype=bool)
        self.unsure[unsure_characters() if unsure is None else unsure] = True

    @classmethod
    def build(cls, reference, unsure=None):
        """A FastEncoder for the reference encoder `reference`, or None if there can be none."""
        if tiktoken is None:
            return None
        merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.get)
        ranks = mergeable_ranks(reference.encoder, merges, reference.byte_decoder)
        if ranks is None:
            return None
        # The special token is never used (encode_array treats `<|endoftext|>` as text, as the reference
        # does), but tiktoken 0.14's encode_to_numpy takes 60% longer on an encoding without one.
        special = {} if reference.eot_token is None else {ENDOFTEXT: reference.eot_token}
        encoding = tiktoken.Encoding("gpt2-local", pat_str=TIKTOKEN_PAT, mergeable_ranks=ranks,
                                     special_tokens=special)
        return cls(reference, encoding, unsure)

    def encode(self, text):
        """Encode text to a list of token ids, as `Encoder.encode` does."""
        return self.encode_array(text).tolist()

    def encode_array(self, text):
        """Encode text to a 1-D numpy array of token ids (unsigned 32-bit integers)."""
        tokens = self._try_tiktoken(text)
        if tokens is not None:
            return tokens
        parts = []
        for piece in split_text(text, SMALL_PIECE):
            tokens = self._try_tiktoken(piece) if len(piece) < len(text) else None
            if tokens is None:
                tokens = self._encode_with_reference_pieces(piece)
            parts.append(tokens)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)

    def _try_tiktoken(self, text):
        """tiktoken's tokens for text, or None if they could differ from the reference's."""
        if not self._tiktoken_can_encode(text):
            return None
        try:
            return self._tiktoken(text)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # a Rust panic is not an Exception; the reference encoder is always right
            return None

    def _tiktoken(self, text):
        # No list of Python ints: a fifth faster than encode_ordinary.
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def _encode_with_reference_pieces(self, text):
        """Split text with PAT (the reference's regex) and merge each piece with tiktoken's BPE."""
        bpe = getattr(self.encoding, "_encode_single_piece", None)
        if bpe is None:  # not in every tiktoken version
            return np.array(self.reference.encode(text), dtype=np.uint32)
        return np.array([token for piece in PAT.findall(text) for token in bpe(piece.encode("utf-8"))],
                        dtype=np.uint32)

    def _tiktoken_can_encode(self, text):
        if not text.isascii():
            codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            if self.unsure[codes].any():
                return False
        return not _has_space_run(text)


def fastest_encode(reference):
    """The quickest function from text to a list of token ids of the reference encoder `reference`:
    a FastEncoder's `encode` when one can be built (tiktoken installed), else `reference.encode`."""
    fast = FastEncoder.build(reference)
    return fast.encode if fast is not None else reference.encode
