"""LoRA (gpt2_tf/lora.py): step 0 is the base model, the update is the float64 oracle's, the merged weights
give the same logits, and peft itself loads our adapter on our Hugging Face export with our logits."""

import importlib.util
import json

import numpy as np
import pytest
from numpy_gpt2 import forward
from tf1_model import TINY_HPARAMS

from gpt2_tf.checkpoint import load_model
from gpt2_tf.lora import TARGETS, LoraConfig, enable_lora, merged, to_peft

TOKENS = np.array([[464, 3290, 318, 257, 1332, 286, 262, 1080], [40, 588, 340, 13, 383, 3290, 18, 11]])


@pytest.fixture
def lora_model(tiny_model):
    """(base weights, model with LoRA on every target, config, adapter {name: array}) with lora_b random,
    so that the update is not zero."""
    models_dir, name, weights = tiny_model
    model, _ = load_model(f"{models_dir}/{name}")
    config = LoraConfig(rank=4, alpha=8.0, targets=TARGETS)
    variables = enable_lora(model, config, seed=1)
    rng = np.random.default_rng(0)
    for variable_name, variable in variables.items():
        if variable_name.endswith("lora_b"):
            variable.assign(rng.normal(0, 0.2, variable.shape).astype(np.float32))
    return weights, model, config, {n: v.numpy() for n, v in variables.items()}


def test_step_zero_is_the_base_model(tiny_model):
    models_dir, name, _ = tiny_model
    model, _ = load_model(f"{models_dir}/{name}")
    before = model(TOKENS)["logits"].numpy()
    variables = enable_lora(model, LoraConfig(rank=2, alpha=16.0), seed=0)
    np.testing.assert_array_equal(model(TOKENS)["logits"].numpy(), before)
    assert sorted(v.name for v in model.trainable_variables) == sorted(v.name for v in variables.values())
    assert len(variables) == 2 * TINY_HPARAMS["n_layer"]


def test_the_update_is_the_oracles_and_merging_keeps_the_logits(lora_model):
    weights, model, config, adapter = lora_model
    # The oracle: each targeted w + alpha / r * lora_a lora_b, in float64, then the NumPy forward pass.
    oracle = {name: np.asarray(w, np.float64) for name, w in weights.items()}
    for name in [n for n in adapter if n.endswith("lora_a")]:
        layer = name[:-len("/lora_a")]
        oracle[f"{layer}/w"] = oracle[f"{layer}/w"] + (adapter[name] @ adapter[f"{layer}/lora_b"])[None] * 2.0
    expected = forward(oracle, TINY_HPARAMS, TOKENS)[0]
    np.testing.assert_allclose(model(TOKENS)["logits"].numpy(), expected, atol=2e-4)
    assert np.abs(expected - forward(weights, TINY_HPARAMS, TOKENS)[0]).max() > 0.01  # the update counts
    merged_weights = merged(weights, adapter, config)
    np.testing.assert_allclose(forward(merged_weights, TINY_HPARAMS, TOKENS)[0], expected, atol=1e-5)


def test_dropout_is_on_in_the_training_loss_alone(tiny_model):
    import tensorflow as tf

    from gpt2_tf.score import loss_sum

    models_dir, name, _ = tiny_model
    model, _ = load_model(f"{models_dir}/{name}")
    for variable_name, variable in enable_lora(model, LoraConfig(4, 8.0, dropout=0.5), seed=1).items():
        if variable_name.endswith("lora_b"):
            variable.assign(np.full(variable.shape, 0.3, np.float32))
    tokens = tf.constant(TOKENS)
    scored = [float(loss_sum(model, tokens, tokens)) for _ in range(2)]
    trained = [float(loss_sum(model, tokens, tokens, training=True)) for _ in range(2)]
    assert scored[0] == scored[1] and len({*trained, scored[0]}) == 3  # new masks at each training call


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_peft_loads_our_adapter_on_our_export_with_our_logits(lora_model, tiny_model, tmp_path):
    import peft
    import torch
    import transformers

    from gpt2_tf import convert, safetensors_file

    models_dir, name, _ = tiny_model
    _, model, config, adapter = lora_model
    convert.convert(f"{models_dir}/{name}", str(tmp_path / "hf"), to="hf", progress=False)
    settings, tensors = to_peft(adapter, config, str(tmp_path / "hf"))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    safetensors_file.write(str(tmp_path / "adapter" / "adapter_model.safetensors"), tensors, {"format": "pt"})
    base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    tuned = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        logits = tuned(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(logits, model(TOKENS)["logits"].numpy(), atol=2e-4)


def test_one_update_follows_the_finite_difference_gradient_of_the_factors(lora_model):
    """One SGD update of the factors (base frozen) against central differences of the float64 NumPy loss
    of the base weights plus alpha / r * lora_a lora_b."""
    import tensorflow as tf
    from numpy_gpt2 import next_token_loss

    from gpt2_tf.lora import layers
    from gpt2_tf.optim import make_optimizer
    from gpt2_tf.train_step import TrainStep

    weights, model, config, before = lora_model
    variables = {name: v for name, layer in layers(model, config.targets).items()
                 for name, v in ((f"{name}/lora_a", layer.lora["a"]), (f"{name}/lora_b", layer.lora["b"]))}
    base = {name: v.numpy() for name, v in model.variables_by_name().items()}
    optimizer = make_optimizer("sgd", 1.0)
    optimizer.build(list(variables.values()))
    step = TrainStep(model, optimizer, variables.values(), tf.distribute.get_strategy(), 2, 1, 24)
    tokens = np.random.default_rng(4).integers(0, 50257, size=(1, 2, 24)).astype(np.int32)
    step(tokens, tokens)
    for name, variable in model.variables_by_name().items():
        np.testing.assert_array_equal(variable.numpy(), base[name])  # the base weights, bit for bit

    def loss(adapter):
        return next_token_loss(merged(weights, adapter, config), TINY_HPARAMS, tokens[0])

    start = {name: a.astype(np.float64) for name, a in before.items()}
    rng, eps = np.random.default_rng(5), 1e-4
    for name in ["model/h0/attn/c_attn/lora_a", "model/h1/mlp/c_fc/lora_b", "model/h1/attn/c_proj/lora_a",
                 "model/h0/mlp/c_proj/lora_b"]:
        direction = rng.normal(size=start[name].shape)
        losses = [loss({**start, name: start[name] + sign * eps * direction}) for sign in (1, -1)]
        numeric = (losses[0] - losses[1]) / (2 * eps)
        analytic = float(np.sum((before[name] - variables[name].numpy()) * direction))  # -(update) / lr
        assert abs(analytic - numeric) < 2e-3 * abs(numeric) + 1e-5, (name, analytic, numeric)


@pytest.mark.slow
def test_a_lora_run_saves_its_factors_alone_resumes_exactly_and_loads_merged(tiny_model, tmp_path):
    import tensorflow as tf
    from cli_checks import snapshot

    import train as train_script
    from gpt2_tf import convert
    from gpt2_tf.checkpoint import read
    from gpt2_tf.cli.train_loop import run
    from gpt2_tf.model_files import find_model, load

    models_dir, name, weights = tiny_model
    base_files = snapshot(f"{models_dir}/{name}")
    (tmp_path / "train.txt").write_text("The dog runs in the garden with a red ball. " * 40, encoding="utf-8")

    def train(run_name, steps):
        run(train_script.parse_args([
            "--dataset", str(tmp_path / "train.txt"), "--model_name", name, "--models_dir", models_dir,
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", run_name, "--steps", str(steps),
            "--sample_every", "0", "--save_every", "0", "--batch_size", "2", "--seed", "3", "--learning_rate",
            "0.01", "--lora_rank", "2", "--lora_alpha", "4", "--lora_targets", "c_attn", "mlp/c_proj"]))

    train("straight", 4)
    train("resumed", 2)
    train("resumed", 2)
    straight, resumed = (read(str(tmp_path / "ckpt" / r / "model-4")) for r in ("straight", "resumed"))
    assert sorted(straight) == sorted(f"model/h{i}/{t}/lora_{f}" for i in range(2)
                                      for t in ("attn/c_attn", "mlp/c_proj") for f in "ab")
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])
    assert np.abs(straight["model/h0/attn/c_attn/lora_b"]).max() > 0  # it trained
    assert snapshot(f"{models_dir}/{name}") == base_files
    config = LoraConfig(rank=2, alpha=4.0, targets=("attn/c_attn", "mlp/c_proj"))
    expected = forward(merged(weights, straight, config), TINY_HPARAMS, TOKENS)[0]
    files = find_model(name, models_dir, "straight", str(tmp_path / "ckpt"))
    np.testing.assert_allclose(load(files)[0](tf.constant(TOKENS))["logits"].numpy(), expected, atol=2e-4)
    convert.convert(str(tmp_path / "ckpt" / "straight"), str(tmp_path / "merged"), to="tf1", progress=False,
                    merge=True)
    np.testing.assert_allclose(forward(read(str(tmp_path / "merged")), TINY_HPARAMS, TOKENS)[0], expected,
                               atol=1e-5)
    if importlib.util.find_spec("peft") is None:
        return
    import peft
    import torch
    import transformers

    # convert.py RUN --to hf: the adapter alone, which peft loads on our export of the base model.
    convert.convert(str(tmp_path / "ckpt" / "straight"), str(tmp_path / "adapter"), to="hf", progress=False)
    convert.convert(f"{models_dir}/{name}", str(tmp_path / "hf"), to="hf", progress=False)
    base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    tuned = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(tuned(torch.tensor(TOKENS)).logits.numpy(), expected, atol=2e-4)


@pytest.mark.slow
def test_the_saved_model_and_litert_exports_of_a_lora_run_are_its_merged_model(lora_model, tiny_model,
                                                                              tmp_path):
    import shutil

    import tensorflow as tf

    from gpt2_tf import convert
    from gpt2_tf.checkpoint import save_tensors
    from gpt2_tf.litert_runtime import LiteRTScorer
    from gpt2_tf.lora import write_record

    weights, _, config, adapter = lora_model
    models_dir, name, _ = tiny_model
    run_dir = tmp_path / "ckpt" / "tuned"  # a LoRA run, as train.py leaves one: its factors alone
    run_dir.mkdir(parents=True)
    for file in ("hparams.json", "encoder.json", "vocab.bpe"):
        shutil.copy(f"{models_dir}/{name}/{file}", run_dir)
    save_tensors(adapter, str(run_dir / "model-1"))
    write_record(str(run_dir), f"{models_dir}/{name}/model.ckpt", config)
    tokens = np.concatenate([np.full([len(TOKENS), 1], 50256), TOKENS], axis=1)  # after <|endoftext|>
    logits = forward(merged(weights, adapter, config), TINY_HPARAMS, tokens)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_p[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]  # [B, T]

    convert.convert(str(run_dir), str(tmp_path / "served"), to="saved_model", progress=False)
    score = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures["score"]
    found = score(input_ids=tf.constant(TOKENS, tf.int32), lengths=tf.constant([TOKENS.shape[1]] * 2))
    np.testing.assert_allclose(found["log_probs"].numpy(), expected, atol=1e-4)

    convert.write(convert.read(str(run_dir)), str(tmp_path / "litert"), "litert", progress=False,
                  quantize="float32")
    scorer = LiteRTScorer(str(tmp_path / "litert" / "score.tflite"))
    found = scorer(tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32))
    np.testing.assert_allclose(-found["loss"], expected, atol=1e-4)


@pytest.mark.parametrize("script, flags, message", [
    ("train.py", ["--lora_rank", "2", "--init", "scratch"], "--lora_rank fine-tunes a trained model"),
    ("train.py", ["--lora_rank", "2", "--only_train_transformer_layers"], "leave out --only_train"),
    ("train.py", ["--lora_rank", "2", "--lora_targets", "wte"], "invalid choice"),
    ("train.py", ["--lora_rank", "2", "--lora_dropout", "0.1", "--memory_saving_gradients"], "other dropout"),
    ("convert.py", ["--to", "hf", "--merge"], "--merge is for a LoRA run"),
])
def test_lora_flags_that_cannot_work_are_refused_in_one_line(tiny_model, tmp_path, script, flags, message):
    from cli_checks import assert_refused, run_tool, snapshot

    models_dir, name, _ = tiny_model
    (tmp_path / "train.txt").write_text("Some text. " * 50, encoding="utf-8")
    before = snapshot(tmp_path)
    if script == "train.py":
        argv = ["--dataset", str(tmp_path / "train.txt"), "--models_dir", models_dir, "--model_name", name,
                "--checkpoint_dir", str(tmp_path / "ckpt"), *flags]
    else:
        argv = [f"{models_dir}/{name}", str(tmp_path / "out"), *flags]
    assert_refused(run_tool(script, *argv), script, tmp_path, before, message)


def test_a_lora_run_with_dropout_is_not_resumed_with_memory_saving(tiny_model, tmp_path):
    import shutil

    import train as train_script
    from gpt2_tf.cli import UsageError
    from gpt2_tf.cli.train_checks import check_args
    from gpt2_tf.lora import write_record

    models_dir, name, _ = tiny_model
    run_dir = tmp_path / "ckpt" / "tuned"  # a LoRA run with dropout, as lora.json records it
    shutil.copytree(f"{models_dir}/{name}", run_dir)
    write_record(str(run_dir), f"{models_dir}/{name}/model.ckpt", LoraConfig(2, 2.0, dropout=0.1))
    (tmp_path / "train.txt").write_text("Some text. " * 50, encoding="utf-8")
    argv = ["--dataset", str(tmp_path / "train.txt"), "--models_dir", models_dir, "--model_name", name,
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", "tuned", "--memory_saving_gradients"]
    with pytest.raises(UsageError, match="has LoRA dropout 0.1, and with --memory_saving"):
        check_args(train_script.parse_args(argv))  # no --lora_* flag: the run's own settings


def test_the_memory_estimate_counts_the_factors_alone():
    import train as train_script
    from gpt2_tf.cli.train_checks import memory_warning
    from gpt2_tf.hparams import released
    from gpt2_tf.lora import LoraConfig, factor_count

    gib = 1 << 30
    hp = released("1558M")
    assert factor_count(hp, 16, ["attn/c_attn"]) == 48 * 16 * (1600 + 4800)  # 4.9 M numbers
    args = train_script.parse_args(["--dataset", "x", "--model_name", "1558M", "--lora_rank", "16"])
    lora = LoraConfig(16, 16.0)
    assert "gradients 5.8" in memory_warning(hp, args, available=24 * gib)  # Adam on all weights: 23.2 GiB
    assert memory_warning(hp, args, available=24 * gib, lora=lora) is None
    warning = memory_warning(hp, args, available=6 * gib, lora=lora)
    assert "weights 5.8" in warning and "optimizer state 0.0" in warning and "gradients 0.0" in warning
