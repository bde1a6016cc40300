"""Tokens shown to a person: byte-level tokens as the characters they form.

A GPT-2 token is a sequence of bytes, and one token alone is not always text: a Chinese character is
three bytes of UTF-8 and often two or three tokens ("这" is b'\\xe8\\xbf\\x99', tokens b'\\xe8\\xbf' and
b'\\x99'), an emoji four bytes and up to four tokens. Decoded one at a time, such tokens are U+FFFD.
Every view of this project (lens.py's tables, HTML and PNG, score.py's TSV and HTML, attention.py)
shows tokens this way:

- The tokens of a text are cut into **spans**, each the fewest consecutive tokens whose bytes are
  whole characters (`spans`). Nearly every span is one token; a split character's span holds all of
  its tokens. Where a view can join cells (the HTML pages), a span is one cell showing its
  characters, and hovering shows each token's bytes.
- Where one token must be shown alone (a table's column, a PNG's tick, a TSV row, a top-k list),
  its bytes that are not whole characters are written as Python writes bytes, `\\xe8\\xbf`
  (`token_text`); in a table, a token that is part of a span is followed by the span's characters
  (`Labels.at`: `'\\xe8\\xbf' (这)`).

Bytes that are no UTF-8 anywhere end their span and are written the same way. Nothing here needs
TensorFlow.
"""

import codecs
import dataclasses
import unicodedata


@dataclasses.dataclass(frozen=True)
class Span:
    """Tokens [start, stop) of a sequence and the text their bytes form together."""

    start: int
    stop: int
    text: str


def token_bytes(enc, token):
    """The bytes of one token id of Encoder `enc`."""
    return bytes(enc.byte_decoder[c] for c in enc.decoder[int(token)])


def token_text(enc, token):
    """One token as text: its bytes decoded, those that are not whole characters written `\\xe8`."""
    return token_bytes(enc, token).decode("utf-8", errors="backslashreplace")


def spans(enc, tokens):
    """The Spans of a token sequence, in order and covering it: a span ends at the first token after
    which no character is left incomplete. tokens: a list of ids."""
    out, start, text = [], 0, ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    for i, token in enumerate(tokens):
        text += decoder.decode(token_bytes(enc, token))
        if not decoder.getstate()[0]:  # no bytes are waiting for the rest of their character
            out.append(Span(start, i + 1, text))
            start, text = i + 1, ""
    if start < len(tokens):  # the sequence ends inside a character
        out.append(Span(start, len(tokens), text + decoder.decode(b"", final=True)))
    return out


def quoted(text):
    """Text as a table shows it: in single quotes, with newlines, tabs and other controls escaped as
    Python escapes them (an escape `\\xe8` of token_text stays as it is), and a leading combining mark
    on a dotted circle."""
    body = ["\u25cc"] if text and unicodedata.combining(text[0]) else []
    for c in text:
        if c == "'":
            body.append("\\'")
        elif c.isprintable() or c == "\\":
            body.append(c)
        else:
            body.append(repr(c)[1:-1])
    return "'" + "".join(body) + "'"


class Labels:
    """How the tokens of one sequence, and any single token, are shown (the module's docstring).

    spans: its Spans; span_at[i]: the Span that holds token i.
    """

    def __init__(self, enc, tokens):
        self.enc = enc
        self.tokens = [int(t) for t in tokens]
        self.spans = spans(enc, self.tokens)
        self.span_at = [span for span in self.spans for _ in range(span.start, span.stop)]

    def text(self, i):
        """Token i's own text (token_text)."""
        return token_text(self.enc, self.tokens[i])

    def piece(self, i):
        """The characters of token i's span where the token is only part of them, else None."""
        span = self.span_at[i]
        return span.text if span.stop - span.start > 1 else None

    def at(self, i):
        """Token i as a table shows it: quoted, then its span's characters where it is only part of
        them: `'\\xe8\\xbf' (这)`."""
        label, piece = quoted(self.text(i)), self.piece(i)
        return label if piece is None else f"{label} ({piece})"

    def bytes(self, i):
        """Token i's bytes."""
        return token_bytes(self.enc, self.tokens[i])

    def token_text(self, token):
        """Any token id's own text (token_text)."""
        return token_text(self.enc, token)

    def token(self, token):
        """Any token id, alone and quoted (a top-k list's entries)."""
        return quoted(token_text(self.enc, token))


def width(text):
    """The columns text takes in a terminal: 2 for a wide (East Asian) character, 0 for a combining
    mark, else 1."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def pad(text, size, right=True):
    """Text padded with spaces to `size` terminal columns (`width`): on the left (right-aligned) or the
    right."""
    space = " " * max(size - width(text), 0)
    return space + text if right else text + space
