"""convert.py and gpt2_tf/convert.py: our folders as transformers and keras-hub load them, theirs as we read
them, and round trips that change no bit.

The clients are the libraries themselves (transformers on PyTorch's CPU build, keras-hub, safetensors,
TensorFlow's TF1 API), installed by the `test` extra. A client that is not installed fails its tests,
unless GPT2_TF_ALLOW_MISSING_CLIENTS=1, which skips them with the reason in capitals.
"""

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from cli_checks import assert_refused, snapshot
from tf1_model import TINY_HPARAMS

from gpt2_tf import convert, safetensors_file
from gpt2_tf.checkpoint_files import read_bundle
from gpt2_tf.download import verify_model_dir
from gpt2_tf.encoder import Encoder, load_encoder_files
from gpt2_tf.hparams import HParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256
SHAPES = HParams(**TINY_HPARAMS).variable_shapes()
# Text that exercises the tokenizer: contractions, digits, Unicode letters and marks, emoji, CRLF, runs of
# spaces and of newlines, a leading space, and the end-of-text marker as plain text.
VARIED = ["Hello world", " It's 1234.5 o'clock, isn't it?", "naïve café — Ünïcödé 漢字 かな 한국어",
          "emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧", "line one\r\nline two\n\n\n  indented    spaces   ",
          "\t tabs\tand   trailing   ", "DON'T SHOUT'S we'll you've I'm", "x=3*4; y = [1, 2, 3]"]


def client(name):
    """Import a client library, or fail (skip loudly with GPT2_TF_ALLOW_MISSING_CLIENTS=1)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed, so the format is NOT TESTED against it: pip install -e '.[test]'"
        if os.environ.get("GPT2_TF_ALLOW_MISSING_CLIENTS") == "1":
            pytest.skip(message.upper())
        pytest.fail(message, pytrace=False)


def tf1_weights(folder):
    return read_bundle(os.path.join(folder, "model.ckpt"), SHAPES)


def assert_same_bits(a, b):
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32 and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def hf_tensors(weights):
    """{Hugging Face name: array} of TF1 weights, as save_pretrained names them (Conv1D [nx, nf])."""
    return {"transformer." + convert.hf_name(n): (w[0] if w.ndim == 3 else w) for n, w in weights.items()}


def file_bytes(*path):
    with open(os.path.join(*map(str, path)), "rb") as f:
        return f.read()


def our_logits(folder, tokens):
    from gpt2_tf.checkpoint import load_model

    model, _ = load_model(folder)
    return model(np.asarray(tokens, np.int32))["logits"].numpy()


@pytest.fixture(scope="module")
def source(tiny_model):
    """The original-layout fixture's folder and its weights."""
    models_dir, name, weights = tiny_model
    return os.path.join(models_dir, name), weights


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """The fixture written as a Hugging Face folder, and read back as a model folder."""
    root = tmp_path_factory.mktemp("exported")
    convert.convert(source[0], str(root / "hf"), to="hf", progress=False)
    convert.convert(str(root / "hf"), str(root / "models" / "back"), progress=False)
    return root


# ---------------------------------------------------------------------------------------------------
# Without the clients: round trips, the folders written, refusals.

def test_tf1_hf_tf1_round_trip_is_bit_identical(source, exported):
    assert_same_bits(tf1_weights(source[0]), tf1_weights(str(exported / "models" / "back")))
    for name in ("encoder.json", "vocab.bpe", "hparams.json"):
        assert file_bytes(source[0], name) == file_bytes(exported, "models", "back", name), name
    # vocab.json and merges.txt are the release's encoder.json and vocab.bpe, byte for byte
    for ours, theirs in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe")):
        assert file_bytes(exported, "hf", ours) == file_bytes(source[0], theirs)


def test_written_model_folder_passes_the_download_checks_and_tf1_reads_it(exported, source):
    import tensorflow as tf

    folder = str(exported / "models" / "back")
    assert verify_model_dir(folder) == HParams(**TINY_HPARAMS)
    # TF1 code that knows nothing of this project: the meta graph, a Saver, a Session
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        saver = tf.compat.v1.train.import_meta_graph(os.path.join(folder, "model.ckpt.meta"))
        saver.restore(session, tf.train.latest_checkpoint(folder))
        wte, c_attn = session.run(["model/wte:0", "model/h1/attn/c_attn/w:0"])
    np.testing.assert_array_equal(wte, source[1]["model/wte"])
    np.testing.assert_array_equal(c_attn, source[1]["model/h1/attn/c_attn/w"])


def test_a_training_runs_newest_checkpoint_and_a_prefix_are_read(source, tmp_path):
    """train.py's run folders: model-N checkpoints, a `checkpoint` state file, the tokenizer and
    hparams.json copied in; optimizer tensors beside the weights are left out."""
    from gpt2_tf import checkpoint

    run = tmp_path / "run1"
    run.mkdir()
    for name in ("hparams.json", "encoder.json", "vocab.bpe"):
        shutil.copyfile(os.path.join(source[0], name), run / name)
    older = {n: np.asarray(w) + np.float32(1) for n, w in source[1].items()}
    checkpoint.save_tensors(older, str(run / "model-5"))
    newest = {**{n: np.asarray(w) for n, w in source[1].items()}, "model/wte/Adam": older["model/wte"]}
    checkpoint.save_tensors(newest, str(run / "model-9"))
    assert_same_bits(convert.read(str(run)).weights, {n: np.asarray(w) for n, w in source[1].items()})
    assert_same_bits(convert.read(str(run / "model-5")).weights, older)
    convert.convert(str(run), str(tmp_path / "models" / "run1"), to="tf1", progress=False)
    assert verify_model_dir(str(tmp_path / "models" / "run1")) == HParams(**TINY_HPARAMS)


def test_safetensors_file_is_what_the_safetensors_package_reads(exported, source):
    st = client("safetensors.numpy")
    from safetensors import safe_open

    path = str(exported / "hf" / "model.safetensors")
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        names = set(f.keys())
        c_fc = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
    assert names == {"transformer." + convert.hf_name(n) for n in SHAPES}
    np.testing.assert_array_equal(c_fc, source[1]["model/h0/mlp/c_fc/w"][0])
    assert st.load_file(path)["transformer.wte.weight"].dtype == np.float32


def test_reads_the_hubs_bare_names_with_mask_buffers_and_a_tied_head(source, exported, tmp_path):
    """openai-community/gpt2's layout: no `transformer.` prefix, `h.I.attn.bias` buffers, written by the
    safetensors package; an lm_head.weight equal to wte is accepted."""
    st = client("safetensors.numpy")
    folder = tmp_path / "bare"
    shutil.copytree(exported / "hf", folder)
    tensors = {name.removeprefix("transformer."): w for name, w in hf_tensors(source[1]).items()}
    n_ctx = TINY_HPARAMS["n_ctx"]
    for i in range(TINY_HPARAMS["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, n_ctx, n_ctx), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = source[1]["model/wte"].copy()
    st.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = convert.read(str(folder))
    assert data.notes == []
    assert_same_bits(data.weights, {n: np.asarray(w) for n, w in source[1].items()})


def test_sharded_folder_is_read(source, exported, tmp_path):
    st = client("safetensors.numpy")
    folder = tmp_path / "sharded"
    shutil.copytree(exported / "hf", folder)
    os.remove(folder / "model.safetensors")
    tensors = hf_tensors(source[1])
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate((names[:7], names[7:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        st.save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_bits(convert.read(str(folder)).weights, {n: np.asarray(w) for n, w in source[1].items()})


@pytest.mark.parametrize("field, value, named", [
    ("n_inner", 100, "n_inner"),
    ("activation_function", "gelu", "activation_function"),
    ("activation_function", "relu", "activation_function"),
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
    ("reorder_and_upcast_attn", True, "reorder_and_upcast_attn"),
    ("scale_attn_weights", False, "scale_attn_weights"),
    ("tie_word_embeddings", False, "untied"),
    ("model_type", "gpt_neo", "model_type"),
])
def test_configurations_it_cannot_represent_are_refused(exported, tmp_path, field, value, named):
    folder = tmp_path / "odd"
    shutil.copytree(exported / "hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConvertError, match=named):
        convert.read(str(folder))


def test_an_untied_head_and_other_tokenizers_are_refused(exported, source, tmp_path):
    st = client("safetensors.numpy")
    folder = tmp_path / "untied"
    shutil.copytree(exported / "hf", folder)
    tensors = hf_tensors(source[1])
    tensors["lm_head.weight"] = source[1]["model/wte"] + np.float32(1e-3)
    st.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(convert.ConvertError, match="untied"):
        convert.read(str(folder))

    padded = tmp_path / "padded"  # nanoGPT pads the vocabulary to 50304 rows
    shutil.copytree(exported / "hf", padded)
    wte = np.pad(source[1]["model/wte"], [(0, 47), (0, 0)])
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] = wte
    st.save_file(tensors, str(padded / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((padded / "config.json").read_text())
    (padded / "config.json").write_text(json.dumps({**config, "vocab_size": 50304}))
    with pytest.raises(convert.ConvertError, match="has 50257 tokens, but the model's vocab_size"):
        convert.read(str(padded))

    wordpiece = tmp_path / "wordpiece"
    shutil.copytree(exported / "hf", wordpiece)
    os.remove(wordpiece / "vocab.json")
    os.remove(wordpiece / "merges.txt")
    (wordpiece / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(convert.ConvertError, match=r"vocab\.txt.*not GPT-2's byte-level BPE"):
        convert.read(str(wordpiece))
    (wordpiece / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(convert.ConvertError, match="WordPiece model, not GPT-2's byte-level BPE"):
        convert.read(str(wordpiece))


def test_tokenizer_json_alone_gives_the_same_vocabulary(exported, source, tmp_path):
    tokenizers = client("tokenizers")
    folder = tmp_path / "tokenizer_json"
    shutil.copytree(exported / "hf", folder)
    model = tokenizers.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    tokenizer.save(str(folder / "tokenizer.json"))
    os.remove(folder / "vocab.json")
    os.remove(folder / "merges.txt")
    data = convert.read(str(folder))
    assert (data.encoder, data.merges) == load_encoder_files(source[0])


def test_a_failed_write_leaves_nothing(source, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_file, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        convert.convert(source[0], str(tmp_path / "out"), to="hf", progress=False)
    assert os.listdir(tmp_path) == []


def run_convert(*argv, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), *argv], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow  # over 10 s: the default suite stays near 10 minutes
def test_cli_converts_and_refuses_in_one_line(source, exported, tmp_path):
    out = run_convert(str(exported / "hf"), str(tmp_path / "a"), "--quiet")
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stderr
    assert_same_bits(tf1_weights(str(tmp_path / "a")), tf1_weights(source[0]))

    before = snapshot(str(tmp_path))
    for argv, message in [
        ((source[0], str(tmp_path / "b")), "TF1 checkpoint already: say what to write with --to"),
        ((str(tmp_path / "nothing"), str(tmp_path / "b")), "does not exist"),
        ((str(exported / "hf"), str(tmp_path / "a")), "already exists and is not empty"),
        ((str(tmp_path), str(tmp_path / "b")), "is not a model folder"),
    ]:
        assert_refused(run_convert(*argv), "convert.py", str(tmp_path), before, message)

    truncated = tmp_path / "truncated"
    shutil.copytree(exported / "hf", truncated)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(truncated / "model.safetensors") - 100)
    out = run_convert(str(truncated), str(tmp_path / "c"))
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("convert.py: error: "), out.stderr
    assert "does not fit the file (truncated?)" in lines[0]
    assert not os.path.exists(tmp_path / "c")


# ---------------------------------------------------------------------------------------------------
# transformers (PyTorch, CPU) loads what we write; we read what it writes.

@pytest.fixture(scope="module")
def hf():
    client("torch")
    return client("transformers")


def load_hf(transformers, folder):
    """GPT2LMHeadModel.from_pretrained, asserting that nothing was missing, unexpected or mismatched."""
    model, info = transformers.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info
    return model.eval()


@pytest.mark.slow
def test_transformers_loads_our_export_with_our_logits_tokens_and_greedy_text(hf, exported, source, tmp_path,
                                                                             caplog):
    import torch

    hf.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"), warnings.catch_warnings():
            warnings.simplefilter("error")
            model = load_hf(hf, str(exported / "hf"))
            tokenizer = hf.AutoTokenizer.from_pretrained(str(exported / "hf"))
    finally:
        hf.logging.disable_propagation()
    assert [r.getMessage() for r in caplog.records] == []
    encoder = Encoder(*load_encoder_files(source[0]))
    for text in VARIED:
        assert tokenizer(text)["input_ids"] == encoder.encode(text), text
        assert tokenizer.decode(encoder.encode(text)) == text

    tokens = np.array([encoder.encode("The quick brown fox jumps over the lazy dog. " * 3)[:60]])
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, our_logits(source[0], tokens), atol=1e-4, rtol=0)

    prompt = "Hello there"
    model.generation_config.eos_token_id = None  # sample.py draws --length tokens, <|endoftext|> or not
    with torch.no_grad():
        greedy = model.generate(torch.tensor([encoder.encode(prompt)]), max_new_tokens=20, do_sample=False,
                                pad_token_id=EOT)[0, len(encoder.encode(prompt)):].tolist()
    assert len(greedy) == 20
    assert sample_top_k_1(exported, prompt, tmp_path) == encoder.decode(greedy)


def sample_top_k_1(exported, prompt, tmp_path):
    """sample.py --top_k 1's text for the model folder read back from the export."""
    output = tmp_path / "sample.txt"
    argv = ["--models_dir", str(exported / "models"), "--model_name", "back", "--prompt", prompt,
            "--top_k", "1", "--length", "20", "--output", str(output), "--seed", "1"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *argv], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = output.read_text(encoding="utf-8")
    return text.split("\n", 1)[1].rsplit("\n", 1)[0] if text.startswith("=") else text


def hf_random_model(hf, **config):
    import torch

    torch.manual_seed(0)
    settings = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = hf.GPT2LMHeadModel(hf.GPT2Config(**{**settings, **config})).eval()
    with torch.no_grad():  # gains and biases away from 1 and 0, so that a mistake in any of them shows
        for name, parameter in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                parameter.add_(0.2 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
    return model


def save_hf(hf, model, folder, vocab_dir, **kwargs):
    model.save_pretrained(folder, **kwargs)
    tokenizer = hf.GPT2Tokenizer(*(os.path.join(vocab_dir, name) for name in ("encoder.json", "vocab.bpe")))
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["unsharded", "sharded", "bare names"])
def test_we_read_what_transformers_writes(hf, vocab_dir, tmp_path, layout):
    import torch

    model = hf_random_model(hf)
    folder = str(tmp_path / "hf")
    if layout == "bare names":  # the Hub's openai-community/gpt2: GPT2Model's names and its mask buffers
        st = client("safetensors.torch")
        save_hf(hf, model, folder, vocab_dir)
        n_ctx = model.config.n_positions
        tensors = {k: v.contiguous() for k, v in model.transformer.state_dict().items()}
        for i in range(model.config.n_layer):
            tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, n_ctx, n_ctx))
            tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        st.save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        save_hf(hf, model, folder, vocab_dir, **({"max_shard_size": "100KB"} if layout == "sharded" else {}))
        assert os.path.exists(os.path.join(folder, "model.safetensors.index.json")) == (layout == "sharded")
    convert.convert(folder, str(tmp_path / "ours"), progress=False)
    tokens = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, EOT, 40, 1101]])
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(our_logits(str(tmp_path / "ours"), tokens), theirs, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_half_precision_sources_warn_and_untied_heads_are_refused(hf, vocab_dir, tmp_path):
    import torch

    model = hf_random_model(hf).to(torch.bfloat16)
    save_hf(hf, model, str(tmp_path / "bf16"), vocab_dir)
    data = convert.read(str(tmp_path / "bf16"))
    assert len(data.notes) == 1 and "bfloat16" in data.notes[0]
    np.testing.assert_array_equal(data.weights["model/h1/mlp/c_proj/w"][0],
                                  model.transformer.h[1].mlp.c_proj.weight.detach().float().numpy())
    out = run_convert(str(tmp_path / "bf16"), str(tmp_path / "converted"))
    assert out.returncode == 0 and "warning: " in out.stderr and "bfloat16" in out.stderr, out.stderr

    untied = hf_random_model(hf, tie_word_embeddings=False)
    save_hf(hf, untied, str(tmp_path / "untied"), vocab_dir)
    with pytest.raises(convert.ConvertError, match="untied"):
        convert.read(str(tmp_path / "untied"))


# ---------------------------------------------------------------------------------------------------
# keras-hub loads what we write; we read it back.

@pytest.mark.slow
def test_keras_hub_loads_our_preset_with_our_logits_and_greedy_tokens(source, tmp_path):
    keras_hub = client("keras_hub")
    preset = str(tmp_path / "preset")
    convert.convert(source[0], preset, to="keras_hub", progress=False)
    causal_lm = keras_hub.models.GPT2CausalLM.from_preset(preset)
    encoder = Encoder(*load_encoder_files(source[0]))
    tokens = np.array([encoder.encode("The quick brown fox jumps over the lazy dog. " * 3)[:60]], np.int32)
    theirs = np.asarray(causal_lm({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}))
    np.testing.assert_allclose(theirs, our_logits(source[0], tokens), atol=1e-4, rtol=0)

    prompt = encoder.encode("Hello there")
    causal_lm.preprocessor = None
    causal_lm.compile(sampler="greedy")
    length = len(prompt) + 12
    padded = np.zeros((1, length), np.int32)
    padded[0, :len(prompt)] = prompt
    mask = np.zeros_like(padded)
    mask[0, :len(prompt)] = 1
    generated = causal_lm.generate({"token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    theirs = np.asarray(generated["token_ids"])[0, len(prompt):].tolist()

    from gpt2_tf.checkpoint import load_model
    from gpt2_tf.sample import sample_sequence

    model, _ = load_model(source[0])
    ours = sample_sequence(model, 12, context=[prompt], top_k=1, seed=1)[0, len(prompt):].tolist()
    assert theirs == ours

    back = str(tmp_path / "back")
    convert.convert(preset, back, progress=False)
    assert_same_bits(tf1_weights(back), tf1_weights(source[0]))
    for name in ("encoder.json", "vocab.bpe", "hparams.json"):
        assert file_bytes(back, name) == file_bytes(source[0], name), name
