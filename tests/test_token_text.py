"""Byte-level tokens shown as text: spans of whole characters, escapes for the bytes of part of one."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_tf import lens_report
from gpt2_tf.encoder import Encoder, load_encoder_files
from gpt2_tf.score_report import escaped_token
from gpt2_tf.token_text import Labels, pad, quoted, spans, token_bytes, token_text, width


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return Encoder(*load_encoder_files(vocab_dir))


# Chinese, Japanese, an emoji with a skin tone, a flag, combining marks (a decomposed é, Devanagari).
TEXTS = ["这是一个测试", "第一章 / 很久很久以前，有一个小女孩。", "日本語のテキストです", "emoji 😀👍🏽 🇨🇳!",
         "cafe\u0301 nai\u0308ve", "नमस्ते दुनिया", "plain English, no surprises"]


@pytest.mark.parametrize("text", TEXTS)
def test_spans_are_the_fewest_tokens_that_form_whole_characters(enc, text):
    tokens = enc.encode(text)
    found = spans(enc, tokens)
    assert [s.start for s in found] == [0] + [s.stop for s in found[:-1]] and found[-1].stop == len(tokens)
    assert "".join(s.text for s in found) == text and "\ufffd" not in "".join(s.text for s in found)
    for s in found:
        data = b"".join(token_bytes(enc, t) for t in tokens[s.start:s.stop])
        assert data.decode("utf-8") == s.text
        for cut in range(s.start + 1, s.stop):  # no shorter run of its tokens ends on a whole character
            with pytest.raises(UnicodeDecodeError):
                b"".join(token_bytes(enc, t) for t in tokens[s.start:cut]).decode("utf-8")


def test_a_split_character_is_shown_by_its_bytes_and_its_span(enc):
    tokens = enc.encode("这是")
    labels = Labels(enc, tokens)
    assert [labels.text(i) for i in range(3)] == ["\\xe8\\xbf", "\\x99", "是"]
    assert [labels.at(i) for i in range(3)] == ["'\\xe8\\xbf' (这)", "'\\x99' (这)", "'是'"]
    assert token_text(enc, tokens[0]) == repr(token_bytes(enc, tokens[0]))[2:-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50256), max_size=12))
def test_spans_of_any_tokens_read_as_their_bytes_do(enc, tokens):
    """Any ids, whole characters or not: the spans' texts join to the bytes' text, invalid bytes
    escaped as Python escapes them."""
    data = b"".join(token_bytes(enc, t) for t in tokens)
    assert "".join(s.text for s in spans(enc, tokens)) == data.decode("utf-8", errors="backslashreplace")


def test_tables_quote_and_align_wide_text():
    assert quoted("it's\n") == "'it\\'s\\n'" and quoted("\u0301") == "'\u25cc\u0301'"
    assert width("这是a") == 5 and width("e\u0301") == 1
    assert pad("这", 4) == "  这" and width(pad("测试", 7, right=False)) == 7


def test_a_tsv_cell_keeps_text_escapes_and_byte_escapes_apart(enc):
    [backslash] = enc.encode("\\")
    assert escaped_token(enc, backslash) == "\\\\"
    first = enc.encode("这")[0]
    assert escaped_token(enc, first) == "\\xe8\\xbf"


def test_probabilities_and_nats_read_the_same_way():
    assert [lens_report.percent(p) for p in (0.5, 0.001, 0.00099, 2e-5, 1e-7)] == [
        "50.0%", "0.1%", "0.099%", "0.002%", "<0.001%"]
    assert lens_report.nats(-1e-9) == "0.00" and lens_report.nats(1.234) == "1.23"
