"""The encoder gives GPT-2's token ids: checked against tiktoken's GPT-2 encoding built from the same
local vocabulary files (never from the network)."""

import glob
import os
import random
import subprocess
import sys
import sysconfig
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_tf.encoder import PAT, Encoder, bytes_to_unicode, get_encoder, load_encoder_files

tiktoken = pytest.importorskip("tiktoken")

# tiktoken's own spelling of GPT-2's pre-tokenizer (same matches, contractions grouped differently).
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def enc(vocab_dir):
    return Encoder(*load_encoder_files(vocab_dir))


@pytest.fixture(scope="module")
def oracle(vocab_dir):
    """tiktoken's GPT-2 encoding, from vocab_dir: each symbol's bytes ranked by its id."""
    import json

    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        symbols = json.load(f)
    # Invert GPT-2's byte table independently: printable bytes are themselves, the rest count up from 256.
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable}
    char_to_byte.update({chr(256 + i): b for i, b in enumerate(others)})
    ranks = {bytes(char_to_byte[c] for c in s): i for s, i in symbols.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-local", pat_str=TIKTOKEN_GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


MULTILINGUAL = """\
English: The quick brown fox jumps over the lazy dog. It's 2019; we've won't they'll I'm he'd.
SHOUTING: DON'T YOU'LL WE'VE I'M SHE'D IT'S They'Re wE'lL
Deutsch: Größenwahn, Übermaß und Straße — „Anführungszeichen“.
Français: L'été où l'œil s'émerveille… « guillemets » à côté.
Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.
Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.
עברית: דג סקרן שט בים מאוכזב ולפתע מצא חברה.
العربية: نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر.
हिन्दी: ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले।
ไทย: เป็นมนุษย์สุดประเสริฐเลิศคุณค่า
中文：我能吞下玻璃而不伤身体。繁體中文：我能吞下玻璃而不傷身體。
日本語：いろはにほへと ちりぬるを　カタカナ、ｶﾀｶﾅ。
한국어: 다람쥐 헌 쳇바퀴에 타고파.
Emoji: 👩‍👩‍👧‍👦 👍🏽 🏳️‍🌈 🇺🇳 ❤️‍🔥 🧑🏿‍💻 a👨‍⚕️b
Digits: 0 1 12 123 1234 3.14159 1,000,000 ٣٤٥ १२३ ①②③ ²³
Whitespace: a  b   c    d\t\te\u3000f\u00a0g\u2028h\u200bi
"""


def machine_corpus():
    """Varied text found on this machine: Python sources, CJK sample texts, Unicode character names."""
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = [MULTILINGUAL]
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:60]:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    for path in sorted(glob.glob(os.path.join(stdlib, "test", "cjkencodings", "*-utf8.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    rng = random.Random(1)
    chars = [chr(c) for c in range(0x20, 0x30000) if unicodedata.category(chr(c))[0] in "LMNPSZ"]
    for _ in range(40):
        texts.append("".join(rng.choice(chars) + (" " if rng.random() < 0.2 else "") for _ in range(300)))
    return texts


def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[0x00] == "\u0100" and table[0x20] == "\u0120" and table[0x0A] == "\u010a"
    assert table[0x7F] == "\u0121" and table[0xA0] == "\u0142" and table[0xAD] == "\u0143"
    assert table[ord("A")] == "A" and table[0xFF] == "\u00ff"


def test_pre_tokenizer_matches_original_examples():
    assert PAT.findall("Hello world!  It's 2019.\n\nNew   line") == [
        "Hello", " world", "!", " ", " It", "'s", " 2019", ".", "\n", "\n", "New", "  ", " line"]
    assert PAT.findall("DON'T don't") == ["DON", "'", "T", " don", "'t"]
    assert PAT.findall("<|endoftext|> hi.") == ["<|", "endoftext", "|>", " hi", "."]


def test_known_ids(enc):
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode_with_eot("a<|endoftext|>b") == enc.encode("a") + [50256] + enc.encode("b")
    assert enc.decode([50256]) == "<|endoftext|>"


def test_same_ids_as_tiktoken_on_machine_corpus(enc, oracle):
    for text in machine_corpus():
        assert enc.encode(text) == oracle.encode_ordinary(text)


@pytest.mark.parametrize("text", [
    "line one\r\nline two\r\n\r\nthree\rfour\r\r\n",
    " " * 3000 + "x" + "\n" * 500 + "\t \n " * 300 + "end   ",
    "'s'S'll'LL'd'D're'RE've'VE'm'M't'T 's 'S",
    "12345678901234567890 x1y22z333 ٠١٢٣٤٥",
    "a\u0301e\u0301 \u0915\u094d\u0937 \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\x00\x01\x7f\x80\x9f\xad\ufeff\U0010fffd",
])
def test_same_ids_as_tiktoken_on_edge_cases(enc, oracle, text):
    assert enc.encode(text) == oracle.encode_ordinary(text)
    assert enc.decode(enc.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(enc, text):
    assert enc.decode(enc.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("aeinrst TH'é中\n"), min_size=2, max_size=400))
def test_long_piece_merge_equals_original_loop(enc, text):
    token = "".join(enc.byte_encoder[b] for b in text.encode("utf-8"))
    assert enc._merge_long(token) == enc._merge_short(token)


def test_decode_replaces_invalid_utf8(enc):
    euro = enc.encode("🤖")  # four UTF-8 bytes, three tokens
    assert len(euro) > 1
    assert enc.decode(euro) == "🤖"
    assert enc.decode(euro[:1]) == "\ufffd"


@pytest.mark.parametrize("text", ["a" * 200_000, " " * 1_000_000, "!?.,;:" * 16_667 + "!!"])
def test_pathological_inputs_are_fast(enc, oracle, text):
    start = time.perf_counter()
    tokens = enc.encode(text)
    assert time.perf_counter() - start < 5
    if len(text) < 1_000_000:  # tiktoken's own regex overflows its stack on a 1 MB run of spaces
        assert tokens == oracle.encode_ordinary(text)
    else:
        assert tokens == [220] * len(text)
    assert enc.decode(tokens) == text


def test_cache_is_bounded(vocab_dir):
    enc = Encoder(*load_encoder_files(vocab_dir), cache_size=100)
    enc.encode(" ".join(f"w{i}" for i in range(5000)))
    assert enc._piece_tokens.cache_info().currsize <= 100


def test_get_encoder_reads_model_folder_and_aliases(tmp_path, vocab_dir):
    import shutil

    (tmp_path / "124M").mkdir()
    for name in ("encoder.json", "vocab.bpe"):  # not the whole folder: it may be a downloaded model
        shutil.copy(os.path.join(vocab_dir, name), tmp_path / "124M")
    assert get_encoder("124M", str(tmp_path)).encode("Hello") == [15496]
    assert get_encoder("117M", str(tmp_path)).encode("Hello") == [15496]


def test_encoder_module_does_not_import_tensorflow():
    code = "import sys, gpt2_tf, gpt2_tf.encoder, gpt2_tf.hparams; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
