"""The attention weights: `model(tokens, return_attention=True)` against a float64 NumPy oracle, and
attention.py's tables and files."""

import html.parser
import json
import os

import numpy as np
import pytest
from cli_checks import TF_LOG, assert_refused, run_tool, snapshot
from numpy_gpt2 import forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_weights_are_the_oracles_masked_softmax_at_every_layer_head_and_position(tiny):
    model, hparams, weights = tiny
    tokens = np.random.default_rng(0).integers(0, hparams.n_vocab, (2, 11))
    out = model(tokens, return_attention=True)
    logits, _, expected = forward(weights, hparams.to_dict(), tokens, return_attention=True)
    got = out["attention"].numpy()
    assert got.shape == (2, hparams.n_layer, hparams.n_head, 11, 11) == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.all(np.triu(got, k=1) == 0)  # no query looks ahead
    # The other outputs are those of the normal path, which never forms the weights.
    plain = model(tokens)
    np.testing.assert_allclose(out["logits"], plain["logits"], atol=1e-5)
    np.testing.assert_allclose(out["present"], plain["present"], atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4)


def test_weights_with_past_are_the_rows_of_the_new_positions(tiny):
    model, hparams, weights = tiny
    tokens = np.random.default_rng(1).integers(0, hparams.n_vocab, (1, 9))
    first = model(tokens[:, :6])
    later = model(tokens[:, 6:], past=first["present"], return_attention=True)["attention"].numpy()
    expected = forward(weights, hparams.to_dict(), tokens, return_attention=True)[2]
    np.testing.assert_allclose(later, expected[:, :, :, 6:], atol=2e-6)


# ---------------------------------------------------------------------------------------------------
# attention.py


def run_attention(*argv):
    return run_tool("attention.py", *argv)


class Page(html.parser.HTMLParser):
    """The tags and attributes of an HTML page, and the text of its JSON data block."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.data, self._in_data = [], [], "", False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self._in_data = ("id", "data") in attrs

    def handle_data(self, data):
        if self._in_data:
            self.data += data

    def handle_endtag(self, tag):
        self._in_data = False


@pytest.mark.slow
def test_attention_script_writes_tables_and_files_with_chinese_text(tiny, tiny_model, tmp_path):
    model, hparams, _ = tiny
    models_dir, name, _ = tiny_model
    prompt = "这是一个测试 😀"
    files = {kind: str(tmp_path / f"a.{kind}") for kind in ("json", "html", "png")}
    out = run_attention("--models_dir", models_dir, "--model_name", name, "--prompt", prompt,
                        "--prefix", "eot", "--layer", "1", "--head", "3",
                        *(a for kind, path in files.items() for a in (f"--{kind}", path)))
    assert out.returncode == 0, out.stderr
    assert not TF_LOG.search(out.stderr) and "Traceback" not in out.stderr and "Glyph" not in out.stderr
    assert len(out.stderr.splitlines()) <= 1  # at most the note that no installed font has the characters
    assert "\ufffd" not in out.stdout and "Where position 12 ('\\x80' ( 😀)) looks" in out.stdout
    assert f"layer {hparams.n_layer - 1:<2} head {hparams.n_head - 1:<2}" in out.stdout

    data = json.load(open(files["json"], encoding="utf-8"))
    assert data["tokens"][0] == 50256 and data["prompt"] == prompt
    assert "".join(text for _, _, text in data["spans"]) == "<|endoftext|>" + prompt
    expected = model(np.array([data["tokens"]]), return_attention=True)["attention"][0].numpy()
    np.testing.assert_allclose(data["attention"], expected, atol=1e-6)
    # The grid of previous-token shares: the mean over queries t >= 1 of the weight on key t - 1.
    lines = out.stdout.splitlines()
    grid = [line.split()[1:] for line in lines[2:2 + hparams.n_layer]]
    length = len(data["tokens"])
    for layer in range(hparams.n_layer):
        for head in range(hparams.n_head):
            share = np.mean([expected[layer, head, t, t - 1] for t in range(1, length)])
            assert grid[layer][head] == f"{100 * share:.0f}%"

    page = Page()
    text = open(files["html"], encoding="utf-8").read()
    page.feed(text)
    assert "script" in page.tags and not {"src", "href"} & set(page.attributes)
    assert "http" not in text and "url(" not in text
    shown = json.loads(page.data)
    assert shown["text"] == [text for _, _, text in data["spans"]]
    spans = data["spans"]
    # A piece looks from its last token; its weight on a key piece is the sum over that piece's tokens.
    q, k = spans[3], spans[1]
    want = expected[1, 3, q[1] - 1, k[0]:k[1]].sum()
    assert shown["weights"][1][3][3][1] == pytest.approx(want, abs=1e-4)
    with open(files["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "hi", "--layer", "2"], "--layer 2: the model has layers 0 to 1"),
    (["--prompt", "hi", "--head", "4"], "--head 4: each layer has heads 0 to 3"),
    (["--prompt", "hello world", "--position", "2"], "--position 2 is outside the prompt's 2 tokens"),
    (["--prompt", " word" * 70], "the prompt has 70 tokens: at most n_ctx = 64"),
    (["--prompt", "hi", "--png", "{tmp}/missing/a.png"], "missing does not exist"),
    (["--prompt", "hi", "--model_name", "nothing"], "nothing"),
])
def test_attention_script_refuses_bad_input_in_one_line(tiny_model, tmp_path, argv, message):
    models_dir, name, _ = tiny_model
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = snapshot(tmp_path)
    out = run_attention("--models_dir", models_dir, "--model_name", name, "--json", str(tmp_path / "x.json"),
                        *argv)
    assert_refused(out, "attention.py", tmp_path, before, message)


@pytest.mark.slow
def test_the_demo_model_has_a_head_that_looks_at_the_starts_of_lines(demo_run):
    """Trained on real text (the demo's Python), a head of a middle layer looks at the tokens that start
    a line (a newline and its indent) several times as much as attending evenly would, where the first
    layer's heads do not. (Its 400 steps are too few for a previous-token head: wpe has barely moved.)"""
    from gpt2_tf.checkpoint import load_model
    from gpt2_tf.encoder import get_encoder

    work, run = demo_run
    model, _ = load_model(run)
    enc = get_encoder("demo", os.path.dirname(run))
    text = open(os.path.join(os.path.dirname(os.__file__), "shlex.py"), encoding="utf-8").read()[2000:8000]
    tokens = enc.encode(text)[:128]
    weights = model(np.array([tokens]), return_attention=True)["attention"][0].numpy()
    line_start = np.array(["\n" in enc.decode([t]) for t in tokens])
    length = len(tokens)
    even = np.tril(np.ones((length, length))) / np.arange(1, length + 1)[:, None]  # every visible key alike
    ratio = (weights @ line_start)[..., 16:].mean(-1) / (even @ line_start)[16:].mean()  # [L, H]
    assert ratio.max() > 4, np.round(ratio, 1)
    assert ratio[0].max() < 2, np.round(ratio, 1)
