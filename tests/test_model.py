"""The Keras model computes what GPT-2 computes: checked against a float64 NumPy forward pass."""

import json

import numpy as np
import pytest
import tensorflow as tf
from numpy_gpt2 import forward, next_token_loss

from gpt2_tf.checkpoint import load_model
from gpt2_tf.hparams import RELEASED, HParams, load_hparams, model_dir, released
from gpt2_tf.model import GPT2, Attention, Conv1D, Norm, attention_mask
from gpt2_tf.score import loss_sum


@pytest.fixture(scope="module")
def loaded(tiny_model):
    models_dir, name, weights = tiny_model
    model, hparams = load_model(f"{models_dir}/{name}")
    return model, hparams.to_dict(), weights


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(1).integers(0, 50257, size=(3, 24))


def test_logits_and_present_match_numpy(loaded, tokens):
    model, hparams, weights = loaded
    out = model(tf.constant(tokens))
    logits, kv = forward(weights, hparams, tokens)
    assert out["logits"].dtype == tf.float32
    assert out["logits"].shape == (3, 24, 50257)
    assert np.abs(out["logits"].numpy() - logits).mean() < 1e-4
    assert np.abs(out["logits"].numpy() - logits).max() < 1e-3
    assert out["present"].shape == (3, 2, 2, 4, 24, 8)
    np.testing.assert_allclose(out["present"].numpy(), kv, atol=1e-4)


def test_two_steps_with_past_equal_one_pass(loaded, tokens):
    model, hparams, weights = loaded
    full = model(tf.constant(tokens))
    first = model(tf.constant(tokens[:, :10]))
    second = model(tf.constant(tokens[:, 10:]), past=first["present"])
    np.testing.assert_allclose(second["logits"].numpy(), full["logits"].numpy()[:, 10:], atol=1e-4)
    np.testing.assert_allclose(second["present"].numpy(), full["present"].numpy()[..., 10:, :], atol=1e-4)
    # One token at a time, growing the past, as the sampler does.
    past = first["present"]
    for t in range(10, 13):
        step = model(tf.constant(tokens[:, t:t + 1]), past=past)
        np.testing.assert_allclose(step["logits"].numpy()[:, 0], full["logits"].numpy()[:, t], atol=1e-4)
        past = tf.concat([past, step["present"]], axis=-2)


def test_rows_of_a_batch_are_independent(loaded, tokens):
    model, _, _ = loaded
    batch = model(tf.constant(tokens))["logits"].numpy()
    for row in range(3):
        alone = model(tf.constant(tokens[row:row + 1]))["logits"].numpy()
        np.testing.assert_allclose(alone[0], batch[row], atol=1e-4)


def test_too_many_positions_is_a_clear_error(loaded):
    model, hparams, _ = loaded
    with pytest.raises(ValueError, match="sequence too long"):
        model(tf.zeros([1, hparams["n_ctx"] + 1], tf.int32))
    past = model(tf.zeros([1, hparams["n_ctx"] - 1], tf.int32))["present"]
    model(tf.zeros([1, 1], tf.int32), past=past)  # exactly n_ctx positions is fine
    with pytest.raises(ValueError, match="sequence too long"):
        model(tf.zeros([1, 2], tf.int32), past=past)


def test_too_many_positions_in_a_compiled_function(loaded):
    model, hparams, _ = loaded
    run = tf.function(lambda x: model(x)["logits"],
                      input_signature=[tf.TensorSpec([1, None], tf.int32)])
    run(tf.zeros([1, 4], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence too long"):
        run(tf.zeros([1, hparams["n_ctx"] + 1], tf.int32))


def test_pieces_have_the_original_numerics():
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 8)) * 3 + 1, tf.float32)
    norm = Norm(8)
    y = norm(x).numpy()
    xn = x.numpy().astype(np.float64)
    expect = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expect, atol=1e-5)
    conv = Conv1D(8, 6)
    assert conv.w.shape == (8, 6) and conv.b.shape == (6,)
    conv.b.assign(np.arange(6, dtype=np.float32) - 2.5)
    expect = xn @ conv.w.numpy() + conv.b.numpy()
    np.testing.assert_allclose(conv(x).numpy(), expect, atol=1e-4)
    for jit in (False, True):  # one row takes its own path
        one_row = tf.function(conv, jit_compile=jit)(x[:1, :1]).numpy()
        np.testing.assert_allclose(one_row, expect[:1, :1], atol=1e-4)
    np.testing.assert_array_equal(attention_mask(2, 4, tf.float32).numpy(), [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_half_precision_attention_mask_is_safe():
    attn = Attention(8, 2, dtype="float16")
    a, _ = attn(tf.random.normal([1, 6, 8], dtype=tf.float16))
    assert np.isfinite(a.numpy()).all()


def test_layers_round_trip_their_config():
    for layer in (Norm(8, name="ln_1"), Conv1D(8, 24, name="c_attn"), Attention(8, 2, name="attn")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    model = GPT2(HParams(n_vocab=10, n_ctx=8, n_embd=8, n_head=2, n_layer=1))
    assert GPT2.from_config(model.get_config()).hparams == model.hparams


def test_new_model_is_initialised_as_gpt2():
    hp = HParams(n_vocab=2000, n_ctx=512, n_embd=64, n_head=4, n_layer=8)
    model = GPT2(hp, residual_scaling=True)
    w = {k: v.numpy() for k, v in model.variables_by_name().items()}
    assert abs(w["model/wte"].std() - 0.02) < 0.001
    assert abs(w["model/wpe"].std() - 0.01) < 0.0005
    assert abs(w["model/h0/attn/c_attn/w"].std() - 0.02) < 0.001
    assert abs(w["model/h3/mlp/c_proj/w"].std() - 0.02 / 4) < 0.0005
    assert (w["model/h0/ln_1/g"] == 1).all() and (w["model/h0/mlp/c_fc/b"] == 0).all()


# n_embd, n_head, n_layer in OpenAI's hparams.json of each released model; all have n_vocab 50257, n_ctx 1024.
RELEASED_SIZES = {"124M": (768, 12, 12), "355M": (1024, 16, 24), "774M": (1280, 20, 36),
                  "1558M": (1600, 25, 48)}


def test_hparams_sizes_and_aliases(tmp_path):
    assert list(RELEASED) == list(RELEASED_SIZES)
    for name, (n_embd, n_head, n_layer) in RELEASED_SIZES.items():
        path = tmp_path / f"hparams-{name}.json"
        sizes = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer}
        path.write_text(json.dumps(sizes, indent=2) + "\n")  # byte for byte the released file
        hp = load_hparams(str(path))
        assert hp == released(name)
        assert len(hp.variable_shapes()) == 4 + 12 * hp.n_layer
    assert released("117M") == released("124M") and released("345M") == released("355M")
    assert released("124M").n_params() == 124_439_808
    assert released("1558M").n_params() == 1_557_611_200
    with pytest.raises(ValueError, match="released models are 124M"):
        released("744M")
    with pytest.raises(ValueError, match="unknown keys"):
        HParams.from_dict({"n_vocab": 1, "n_embed": 3})
    (tmp_path / "124M").mkdir()
    assert model_dir("117M", str(tmp_path)) == str(tmp_path / "124M")


def test_gradients_match_numpy_finite_differences():
    """The backward pass (custom gradients of gelu, norm and attention, the attention in halves for
    long sequences, the tied embedding) against central differences of the float64 NumPy loss."""
    hp = HParams(n_vocab=300, n_ctx=256, n_embd=32, n_head=4, n_layer=2)
    model = GPT2(hp)
    names = model.variables_by_name()
    for name, variable in names.items():  # non-trivial gains and biases
        if name.endswith(("/g", "/b")):
            variable.assign(variable + tf.random.normal(variable.shape, stddev=0.1, seed=1))
    tokens = np.random.default_rng(2).integers(0, hp.n_vocab, size=(2, 256))
    with tf.GradientTape() as tape:
        loss = loss_sum(model, tf.constant(tokens), tf.constant(tokens)) / (2 * 255)
    grads = dict(zip(names, tape.gradient(loss, list(names.values()))))
    shapes = hp.variable_shapes()  # the original's, as numpy_gpt2 reads them
    weights = {name: v.numpy().astype(np.float64).reshape(shapes[name]) for name, v in names.items()}
    assert abs(float(loss) - next_token_loss(weights, hp.to_dict(), tokens)) < 1e-5
    rng = np.random.default_rng(3)
    eps = 1e-4
    for name in ["model/wte", "model/wpe", "model/h0/ln_1/g", "model/h0/attn/c_attn/w", "model/h0/mlp/c_fc/w",
                 "model/h1/ln_2/b", "model/h1/attn/c_proj/w", "model/h1/mlp/c_proj/b", "model/ln_f/g"]:
        direction = rng.normal(size=weights[name].shape)
        moved = [{**weights, name: weights[name] + sign * eps * direction} for sign in (1, -1)]
        losses = [next_token_loss(w, hp.to_dict(), tokens) for w in moved]
        numeric = (losses[0] - losses[1]) / (2 * eps)
        analytic = float(np.sum(tf.convert_to_tensor(grads[name]).numpy().reshape(shapes[name]) * direction))
        assert abs(analytic - numeric) < 1e-4 * abs(numeric) + 1e-6, (name, analytic, numeric)
