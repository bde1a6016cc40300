"""The logit lens (gpt2_tf/lens.py, lens.py) against an independent float64 NumPy lens."""

import html.parser
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from cli_checks import TF_LOG, assert_refused, run_tool, snapshot
from numpy_gpt2 import forward, layer_norm

from gpt2_tf.checkpoint import load_model
from gpt2_tf.lens import logit_lens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def loaded(tiny_model):
    models_dir, name, weights = tiny_model
    model, hparams = load_model(f"{models_dir}/{name}")
    return model, hparams.to_dict(), weights


def numpy_lens(weights, hparams, tokens, final_norm=True):
    """Per layer: logits z [L + 1, T, V] and log-probabilities, float64, from numpy_gpt2's residual stream."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    _, _, hidden = forward(weights, hparams, np.asarray(tokens)[None], return_hidden=True)
    hidden = hidden[0]
    n_layer = hparams["n_layer"]
    z = np.stack([(layer_norm(h, w["model/ln_f/g"], w["model/ln_f/b"]) if final_norm or i == n_layer else h)
                  @ w["model/wte"].T for i, h in enumerate(hidden)])
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return z, log_p


def assert_rank(rank, z, t, tol=1e-4):
    """rank is 1 + #{v: z[v] > z[t]}, up to tokens within tol of z[t] (float32 cannot order those)."""
    low, high = 1 + np.sum(z > z[t] + tol), 1 + np.sum(z > z[t] - tol)
    assert low <= rank <= high, (rank, low, high)


@pytest.mark.parametrize("final_norm", [True, False])
def test_lens_agrees_with_an_independent_numpy_lens(loaded, final_norm):
    model, hparams, weights = loaded
    tokens = np.random.default_rng(5).integers(0, hparams["n_vocab"], size=12)
    watch = [int(tokens[3]), 464, 50256]
    lens = logit_lens(model, tokens, position=7, top_k=5, watch_ids=watch, final_norm=final_norm)
    z, log_p = numpy_lens(weights, hparams, tokens, final_norm)
    p = np.exp(log_p)
    n_layers = hparams["n_layer"] + 1
    assert lens.layers == ["emb"] + [str(i) for i in range(1, n_layers)]
    assert lens.top_ids.shape == (n_layers, 12, 5) and lens.rank_of_next.shape == (n_layers, 12)
    for layer in range(n_layers):
        for i in range(12):
            expected = np.argsort(-z[layer, i], kind="stable")[:5]
            np.testing.assert_allclose(lens.top_probs[layer, i], p[layer, i, expected], rtol=1e-4, atol=1e-9)
            gaps = -np.diff(z[layer, i, expected])
            for j in range(5):  # the same token, unless a neighbour is too close for float32 to order
                if (j == 0 or gaps[j - 1] > 1e-4) and (j == 4 or gaps[j] > 1e-4):
                    assert lens.top_ids[layer, i, j] == expected[j]
            if i < 11:
                assert_rank(lens.rank_of_next[layer, i], z[layer, i], tokens[i + 1])
        for j, t in enumerate(watch):
            assert_rank(lens.watch_rank[layer, j], z[layer, 7], t)
            np.testing.assert_allclose(lens.watch_prob[layer, j], p[layer, 7, t], rtol=1e-4, atol=1e-9)
    assert (lens.rank_of_next[:, -1] == 0).all()
    entropy = -(p * log_p).sum(-1)
    kl = (p[-1] * (log_p[-1] - log_p)).sum(-1)
    np.testing.assert_allclose(lens.entropy, entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lens.kl_to_final, kl, rtol=1e-3, atol=1e-5)
    assert np.abs(lens.kl_to_final[-1]).max() < 1e-5


def test_last_row_is_the_models_own_logits(loaded):
    model, hparams, _ = loaded
    tokens = tf.constant(np.random.default_rng(6).integers(0, hparams["n_vocab"], size=(1, 9)), tf.int32)
    out = model(tokens, return_hidden=True)
    plain = model(tokens)
    assert set(plain) == {"logits", "present"}
    assert out["hidden"].shape == (1, hparams["n_layer"] + 1, 9, hparams["n_embd"])
    np.testing.assert_array_equal(model.unembed(out["hidden"][:, -1]).numpy(), out["logits"].numpy())
    np.testing.assert_array_equal(plain["logits"].numpy(), out["logits"].numpy())
    lens = logit_lens(model, tokens[0].numpy(), top_k=3)
    expected = tf.math.top_k(tf.nn.softmax(out["logits"][0]), k=3)
    np.testing.assert_array_equal(lens.top_ids[-1], expected.indices.numpy())
    np.testing.assert_allclose(lens.top_probs[-1], expected.values.numpy(), rtol=1e-5)


def test_position_outside_the_tokens_is_refused(loaded):
    model, _, _ = loaded
    with pytest.raises(ValueError, match="outside the 4 tokens"):
        logit_lens(model, [1, 2, 3, 4], position=4)


# ---------------------------------------------------------------------------------------------------
# lens.py


def run_lens(*argv):
    return run_tool("lens.py", *argv)


class Page(html.parser.HTMLParser):
    """The tags, attributes and cell titles of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.titles = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self.titles += [value for name, value in attrs if name == "title"]


@pytest.mark.slow
def test_lens_script_writes_the_tables_and_files(loaded, tiny_model, tmp_path):
    model, hparams, _ = loaded
    models_dir, name, _ = tiny_model
    files = {kind: str(tmp_path / f"lens.{kind}") for kind in ("json", "html", "png")}
    out = run_lens("--models_dir", models_dir, "--model_name", name, "--prompt", "The keys to the cabinet",
                   "--watch", " is", " are", " Zyzzyva", "--generate", "4", "--top_k", "3",
                   *(a for kind, path in files.items() for a in (f"--{kind}", path)))
    assert out.returncode == 0, out.stderr
    assert not TF_LOG.search(out.stderr) and "Traceback" not in out.stderr
    assert out.stderr.count("warning: --watch ' Zyzzyva' is") == 1 and len(out.stderr.splitlines()) == 1
    rows = [line.split()[0] for line in out.stdout.splitlines() if line.split()[:1]]
    layers = ["emb"] + [str(i) for i in range(1, hparams["n_layer"] + 1)]
    assert rows.count("emb") == 2 and all(rows.count(layer) == 2 for layer in layers[1:])

    data = json.load(open(files["json"], encoding="utf-8"))
    prompt = data["prompt_length"]
    assert len(data["tokens"]) == prompt + 4 and data["position"] == prompt - 1 and data["layers"] == layers
    assert "".join(data["text"][:prompt]) == "The keys to the cabinet"
    # Greedy: every generated token is the last layer's top prediction.
    assert [data["rank_of_next"][-1][i] for i in range(prompt - 1, prompt + 3)] == [1, 1, 1, 1]
    assert all(row[-1] is None for row in data["rank_of_next"])
    lens = logit_lens(model, data["tokens"], data["position"], 3, data["watch"]["ids"])
    assert data["top_k"] == [[[[int(t), pytest.approx(float(p), rel=1e-5)] for t, p in zip(ids, probs)]
                              for ids, probs in zip(a, b)] for a, b in zip(lens.top_ids, lens.top_probs)]
    assert data["watch"]["rank"] == lens.watch_rank.tolist() and len(data["watch"]["ids"]) == 3
    np.testing.assert_allclose(data["entropy"], lens.entropy, rtol=1e-5)

    page = Page()
    text = open(files["html"], encoding="utf-8").read()
    page.feed(text)
    assert "table" in page.tags and "script" not in page.tags and "link" not in page.tags
    assert not {"src", "href"} & set(page.attributes) and "http" not in text and "url(" not in text
    # Every position's cell (the last one too), every watched one, and each piece of the text above.
    assert len(page.titles) == len(layers) * (prompt + 4 + 3) + len(data["spans"])
    with open(files["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(files["png"]).shape[0] > 100


@pytest.mark.slow
def test_lens_script_shows_split_characters_as_text(tiny_model, tmp_path):
    """Chinese, an emoji and a combining mark: every view shows characters, or a token's bytes beside
    the character it is part of, never U+FFFD; --prefix eot starts with the document token."""
    models_dir, name, _ = tiny_model
    prompt = "这是一个测试 😀 e\u0301"
    files = {kind: str(tmp_path / f"lens.{kind}") for kind in ("json", "html", "png")}
    out = run_lens("--models_dir", models_dir, "--model_name", name, "--prompt", prompt, "--prefix", "eot",
                   "--position", "2", "--watch", " 测",
                   *(a for kind, path in files.items() for a in (f"--{kind}", path)))
    assert out.returncode == 0, out.stderr
    assert "Glyph" not in out.stderr and len(out.stderr.splitlines()) <= 2  # the --watch and font notes
    assert "\ufffd" not in out.stdout
    assert out.stdout.startswith("Position 2: '\\x99' (这), followed by '是'\n")
    data = json.load(open(files["json"], encoding="utf-8"))
    assert data["tokens"][0] == 50256 and data["prompt_length"] == len(data["tokens"])
    assert "".join(text for _, _, text in data["spans"]) == "<|endoftext|>" + prompt
    assert data["text"][1:3] == ["\\xe8\\xbf", "\\x99"]
    page = open(files["html"], encoding="utf-8").read()
    assert "\ufffd" not in page and '<th colspan="2" title="token 1: id' in page and ">这</th>" in page


@pytest.mark.slow  # over 10 s: the default suite stays near 10 minutes
def test_ecco_preset_is_no_final_ln_in_eccos_numbering(tiny_model, tmp_path):
    models_dir, name, _ = tiny_model
    base = ["--models_dir", models_dir, "--model_name", name, "--prompt", "The keys to the cabinet",
            "--watch", " is", "--quiet"]
    ours = run_lens(*base, "--no_final_ln", "--position", "3", "--json", str(tmp_path / "ours.json"))
    ecco = run_lens(*base, "--ecco", "--position", "4", "--json", str(tmp_path / "ecco.json"))
    assert ours.returncode == 0 and ecco.returncode == 0, ours.stderr + ecco.stderr
    ours, ecco = (json.load(open(tmp_path / f"{n}.json", encoding="utf-8")) for n in ("ours", "ecco"))
    assert ecco["layers"] == [str(i) for i in range(len(ours["layers"]) - 1)] and ecco["position"] == 3
    for key in ("top_k", "rank_of_next", "entropy", "kl_to_final"):
        assert ecco[key] == ours[key][1:], key
    assert ecco["watch"]["rank"] == ours["watch"]["rank"][1:] and ecco["final_ln"] is False
    refused = run_lens(*base, "--ecco", "--position", "0")
    assert refused.returncode == 2 and "counts the token predicted: 1 to 5" in refused.stderr


def test_lens_png_of_a_one_token_prompt_has_its_column(tiny_model, tmp_path):
    models_dir, name, _ = tiny_model
    out = run_lens("--models_dir", models_dir, "--model_name", name, "--prompt", "Hi", "--png",
                   str(tmp_path / "one.png"), "--quiet")
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "hello world", "--position", "2"], "--position 2 is outside the prompt's 2 tokens"),
    (["--prompt", " word" * 70], "the prompt has 70 tokens: at most n_ctx = 64"),
    (["--prompt", " word" * 60, "--generate", "5"], "--generate adds 5"),
    (["--prompt", "hi", "--watch", ""], "--watch '' is empty"),
    (["--prompt", "hi", "--png", "{tmp}/missing/lens.png"], "missing does not exist"),
    (["--prompt", "hi", "--model_name", "nothing"], "nothing"),
    (["--prompt", "hi", "--top_k", "0"], "--top_k"),
])
def test_lens_script_refuses_bad_input_in_one_line(tiny_model, tmp_path, argv, message):
    models_dir, name, _ = tiny_model
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = snapshot(tmp_path)
    out = run_lens("--models_dir", models_dir, "--model_name", name, "--json", str(tmp_path / "x.json"),
                   *argv)
    assert_refused(out, "lens.py", tmp_path, before, message)
