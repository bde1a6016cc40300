"""train.py: flags, console lines, checkpoint layout, exact resume, atomic saves, signals, numerics."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy_gpt2 import forward
from tf1_model import TINY_HPARAMS

import train as train_script
from gpt2_tf import checkpoint, checkpoint_files
from gpt2_tf.cli.train_checks import parse_memlimit
from gpt2_tf.cli.train_loop import run
from gpt2_tf.hparams import HParams
from gpt2_tf.ops import cross_entropy as fused_cross_entropy
from gpt2_tf.optim import FactoredAdafactor, make_optimizer, optimizer_state
from gpt2_tf.run_checkpoints import RunCheckpoints, load_train_state, read_counter, restore_optimizer
from gpt2_tf.score import loss_sum
from gpt2_tf.token_files import save_tokens
from gpt2_tf.train_step import Evaluator, TrainStep, build_model, randomize, trained_variables

STEP_LINE = re.compile(r"^\[(\d+) \| \d+\.\d\d\] loss=(\d+\.\d\d) avg=(\d+\.\d\d)$")
VAL_LINE = re.compile(r"^\[(\d+) \| \d+\.\d\d\] validation loss = \d+\.\d\d$")
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A pre-encoded dataset: three chunks of 2,000 random tokens."""
    path = tmp_path_factory.mktemp("data") / "data.npz"
    rs = np.random.RandomState(0)
    np.savez(path, *[rs.randint(0, 50257, 2000).astype(np.uint16) for _ in range(3)])
    return str(path)


def flags(tmp_path, tiny_model, data, *extra):
    models_dir, name, _ = tiny_model
    return ["--dataset", data, "--model_name", name, "--models_dir", models_dir,
            "--checkpoint_dir", str(tmp_path / "checkpoint"), "--sample_dir", str(tmp_path / "samples"),
            "--sample_every", "0", "--save_every", "0", "--seed", "1", "--batch_size", "2",
            "--sample_length", "8", *extra]


def train(argv, capsys):
    """Run the trainer in this process; returns its stdout lines."""
    capsys.readouterr()
    run(train_script.parse_args(argv))
    return capsys.readouterr().out.splitlines()


def step_losses(lines):
    return {int(m[1]): float(m[2]) for m in map(STEP_LINE.match, lines) if m}


def weights(prefix):
    return checkpoint.read(prefix)


def assert_same_weights(a, b, atol=0.0):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


# ---------------------------------------------------------------------------------------------------
# Flags and errors.


def test_flag_defaults_are_the_originals():
    args = train_script.parse_args(["--dataset", "data.npz"])
    expected = dict(dataset="data.npz", model_name="124M", models_dir="models", combine=50000,
                    encoding="utf-8", batch_size=1, learning_rate=0.00002, accumulate_gradients=1,
                    memory_saving_gradients=False, twremat=False, twremat_memlimit="12G",
                    only_train_transformer_layers=False, optimizer="adam", noise=0.0, top_k=40, top_p=0.0,
                    restore_from="latest", run_name="run1", sample_every=100, sample_length=None,
                    sample_num=1, save_every=1000, val_dataset=None, val_batch_size=2, val_batch_count=40,
                    val_every=0)
    # sample_length None: n_ctx - 1 (1023 for the released models), filled in once hparams are read
    assert {k: getattr(args, k) for k in expected} == expected
    new = dict(steps=None, seed=None, checkpoint_dir="checkpoint", sample_dir="samples", max_to_keep=5,
               compile="auto", mixed_precision=None, distribute="auto", literal_endoftext=False,
               val_full=False)
    assert {k: getattr(args, k) for k in new} == new


def test_help_describes_the_trainer(capsys):
    with pytest.raises(SystemExit):
        train_script.main(["--help"])
    out = capsys.readouterr().out
    assert "Fine-tune GPT-2 on your custom dataset." in out
    assert "(default: 0.0)" in out  # ArgumentDefaultsHelpFormatter


@pytest.mark.parametrize("extra, message", [
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--sample_length", "64", "--sample_every", "1"], "Can't get samples longer than window size: 64"),
    (["--model_name", "nowhere"], "no model nowhere in"),
    (["--twremat_memlimit", "lots"], "--twremat_memlimit"),
    (["--accumulate_gradients", "0"], "--accumulate_gradients: must be at least 1"),
    (["--no_such_flag"], "unrecognized arguments"),
    (["--val_full"], "--val_full needs --val_every"),
])
def test_bad_flags_are_one_line_errors(tmp_path, tiny_model, data, capsys, extra, message):
    with pytest.raises(SystemExit) as exit:
        train_script.main(flags(tmp_path, tiny_model, data, *extra))
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and message in err[0], err
    assert not os.path.exists(tmp_path / "checkpoint")


def test_small_dataset_and_missing_data_are_one_line_errors(tmp_path, tiny_model, capsys):
    small = tmp_path / "small.npz"
    np.savez(small, np.arange(60, dtype=np.uint16))  # fewer tokens than one 64-token window
    for path, message in ((str(small), "too small"), (str(tmp_path / "missing*.txt"), "")):
        with pytest.raises(SystemExit) as exit:
            train_script.main(flags(tmp_path, tiny_model, path))
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("train.py: error: ")]
        assert len(errors) == 1 and path in errors[0] and message in errors[0], err
    assert not os.path.exists(tmp_path / "checkpoint")


def test_twremat_memlimit_parses_like_the_original():
    assert parse_memlimit("12G") == 12 * 10**9
    assert parse_memlimit("500M") == 500 * 10**6
    assert parse_memlimit("7k") == 7000
    assert parse_memlimit("1234") == 1234


# ---------------------------------------------------------------------------------------------------
# A run: console, files, numbering.


def test_console_lines_and_run_layout(tmp_path, tiny_model, data, capsys):
    lines = train(flags(tmp_path, tiny_model, data, "--steps", "6", "--save_every", "3",
                        "--sample_every", "3", "--sample_num", "3", "--val_every", "3",
                        "--val_batch_count", "2"), capsys)
    run_dir = tmp_path / "checkpoint" / "run1"
    models_dir, name, _ = tiny_model
    assert lines[:4] == [f"Loading checkpoint {models_dir}/{name}/model.ckpt", "Loading dataset...",
                         "dataset has 6000 tokens", "Training..."]
    assert sorted(step_losses(lines)) == [1, 2, 3, 4, 5, 6]
    assert [int(VAL_LINE.match(line)[1]) for line in lines if VAL_LINE.match(line)] == [0, 3, 6]
    assert lines.count("Generating samples...") == 2 and lines.count("Calculating validation loss...") == 3
    assert [line for line in lines if line.startswith("Saving")] == [
        f"Saving {run_dir}/model-3", f"Saving {run_dir}/model-6"]
    assert lines.index(f"Saving {run_dir}/model-3") > lines.index("Generating samples...")

    assert read_counter(run_dir) == 6
    assert (run_dir / "counter").read_text() == "6\n"
    assert checkpoint_files.read_state_file(run_dir) == ["model-3", "model-6"]
    for name_ in ("hparams.json", "encoder.json", "vocab.bpe", "model-6.index",
                  "model-6.data-00000-of-00001", "model-6.train/state.json"):
        assert (run_dir / name_).exists(), name_
    assert json.loads((run_dir / "hparams.json").read_text()) == TINY_HPARAMS
    model, _ = checkpoint.load_model(str(run_dir))  # self-contained, newest checkpoint
    assert load_train_state(str(run_dir / "model-6"))[0]["step"] == 6

    text = (tmp_path / "samples" / "run1" / "samples-6").read_text(encoding="utf-8")
    numbers = [m.group(1) for m in re.finditer(r"^======== SAMPLE (\d+) ========$", text, re.M)]
    assert numbers == ["1", "2", "3"]
    assert (tmp_path / "samples" / "run1" / "samples-3").exists()

    tags = set()
    for event_file in run_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "val_loss", "val_ppl", "val_accuracy"} <= tags


def test_model_n_holds_n_updates_and_fresh_restarts_the_count(tmp_path, tiny_model, data, capsys):
    base = flags(tmp_path, tiny_model, data, "--optimizer", "sgd", "--learning_rate", "0.1")
    train(base + ["--steps", "2", "--save_every", "1"], capsys)
    run_dir = tmp_path / "checkpoint" / "run1"
    one = weights(str(run_dir / "model-1"))
    assert not np.array_equal(one["model/wte"], tiny_model[2]["model/wte"])
    lines = train(base + ["--steps", "1", "--restore_from", "fresh"], capsys)
    assert lines[0].endswith("model.ckpt") and sorted(step_losses(lines)) == [1]
    assert read_counter(run_dir) == 1
    assert_same_weights(weights(str(run_dir / "model-1")), one)  # one update from the base: model-1
    assert checkpoint.latest(str(run_dir)).endswith("model-1")
    # The earlier count's model-2 is no longer listed (it would look newer than the new count's
    # checkpoints to a pruning or a reader of the list), and stays on disk until replaced.
    assert checkpoint_files.read_state_file(str(run_dir)) == ["model-1"]
    assert (run_dir / "model-2.index").exists()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, tiny_model, data, capsys):
    """10 + 10 steps with a restart in between give the weights and losses of 20 steps in one go."""
    common = ["--optimizer", "adam", "--learning_rate", "0.001", "--noise", "0.2", "--seed", "3"]
    whole = train(flags(tmp_path, tiny_model, data, *common, "--steps", "20", "--run_name", "whole"), capsys)
    first = train(flags(tmp_path, tiny_model, data, *common, "--steps", "10", "--run_name", "split"), capsys)
    second = train(flags(tmp_path, tiny_model, data, "--seed", "99", "--steps", "10", "--run_name", "split",
                         *common[:-2]), capsys)
    split_dir = tmp_path / "checkpoint" / "split"
    assert second[0] == f"Loading checkpoint {split_dir}/model-10"
    assert sorted(step_losses(second)) == list(range(11, 21))  # no step skipped
    assert {**step_losses(first), **step_losses(second)} == step_losses(whole)
    whole_dir = str(tmp_path / "checkpoint" / "whole")
    assert_same_weights(weights(str(split_dir / "model-20")), weights(whole_dir + "/model-20"), atol=1e-6)
    a, b = load_train_state(str(split_dir / "model-20")), load_train_state(whole_dir + "/model-20")
    assert a[0]["sampler_rng"] == b[0]["sampler_rng"] and a[0]["noise_rng"] == b[0]["noise_rng"]
    assert a[0]["avg_loss"] == pytest.approx(b[0]["avg_loss"])
    for x, y in zip(a[1], b[1]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)

    # --restore_from PATH, a prefix or a folder, continues that checkpoint's count.
    for path in (str(split_dir / "model-20"), str(split_dir)):
        lines = train(flags(tmp_path, tiny_model, data, "--restore_from", path, "--steps", "1",
                            "--run_name", "other"), capsys)
        assert lines[0] == f"Loading checkpoint {split_dir}/model-20"
        assert sorted(step_losses(lines)) == [21]


def test_token_file_formats_train_the_same(tmp_path, tiny_model, capsys):
    """The same tokens as a compressed .npz (read into memory), an uncompressed .npz and a nanoGPT .bin
    (both memory-mapped) give the same windows, so the same losses and weights."""
    tokens = np.random.RandomState(5).randint(0, 50257, 3000).astype(np.uint16)
    save_tokens(tmp_path / "compressed.npz", [tokens])
    save_tokens(tmp_path / "stored.npz", [tokens], compress=False)
    tokens.tofile(tmp_path / "train.bin")
    losses = {}
    for name in ("compressed.npz", "stored.npz", "train.bin"):
        lines = train(flags(tmp_path, tiny_model, str(tmp_path / name), "--steps", "3", "--learning_rate",
                            "0.001", "--run_name", name), capsys)
        losses[name] = step_losses(lines)
    assert len(losses["train.bin"]) == 3
    assert losses["compressed.npz"] == losses["stored.npz"] == losses["train.bin"]
    runs = tmp_path / "checkpoint"
    assert_same_weights(weights(str(runs / "compressed.npz")), weights(str(runs / "train.bin")))


@pytest.mark.slow  # over 10 s: the default suite stays near 10 minutes
def test_csv_jsonl_and_line_by_line_train_as_the_text_they_stand_for(tmp_path, tiny_model, capsys):
    """A .csv, a .jsonl and a file read --line_by_line train as the plain text of their documents (CSV rows
    wrapped as gpt-2-simple wraps them, the others separated by <|endoftext|>): the same losses."""
    texts = [f"Document number {i}, with some words; and a comma." * (i + 1) for i in range(6)]
    (tmp_path / "d.csv").write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)),
                                    encoding="utf-8")
    (tmp_path / "csv.txt").write_text("".join(f"<|startoftext|>{t}<|endoftext|>\n" for t in texts),
                                      encoding="utf-8")
    records = "".join(json.dumps({"body": t}) + "\n" for t in texts)
    (tmp_path / "d.jsonl").write_text(records, encoding="utf-8")
    (tmp_path / "lines.txt").write_text("\n\n".join(texts), encoding="utf-8")
    (tmp_path / "joined.txt").write_text("<|endoftext|>".join(texts), encoding="utf-8")
    runs = {"d.csv": ["--csv_column", "body"], "csv.txt": [], "d.jsonl": ["--json_field", "body"],
            "lines.txt": ["--line_by_line"], "joined.txt": []}
    losses = {name: step_losses(train(flags(tmp_path, tiny_model, str(tmp_path / name), "--steps", "2",
                                            "--learning_rate", "0.001", "--run_name", name, *extra), capsys))
              for name, extra in runs.items()}
    assert len(losses["d.csv"]) == 2
    assert losses["d.csv"] == losses["csv.txt"]
    assert losses["d.jsonl"] == losses["lines.txt"] == losses["joined.txt"] != losses["csv.txt"]


@pytest.mark.slow  # over 10 s: the default suite stays near 10 minutes
def test_val_split_trains_on_the_kept_documents_and_validates_on_the_held_out(tmp_path, tiny_model, capsys):
    """--val_split 0.25 of 12 JSON Lines records: the run equals one trained on a file of the 9 kept records
    and validated (--val_full) on a file of the 3 held out, to the bit; the same records for another batch
    size and on resume; a resume that would change them is refused; score.py --held_out scores them."""
    from gpt2_tf.cli import UsageError

    texts = [f"Record {i}: " + "some words, and more words; " * (2 + i % 5) for i in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    common = ["--steps", "2", "--learning_rate", "0.001", "--val_every", "1", "--val_full"]
    split = ["--val_split", "0.25"]
    lines = train(flags(tmp_path, tiny_model, str(data), *common, *split, "--run_name", "split"), capsys)
    record = json.loads((tmp_path / "checkpoint" / "split" / "held_out.json").read_text(encoding="utf-8"))
    held = record["held_out"]
    assert record["documents"] == 12 and len(held) == 3

    def records(numbers):
        path = tmp_path / f"{len(numbers)}.jsonl"
        path.write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in numbers), encoding="utf-8")
        return str(path)

    kept, held_file = records([i for i in range(12) if i not in held]), records(held)
    reference = train(flags(tmp_path, tiny_model, kept, *common, "--val_dataset", held_file,
                            "--run_name", "reference"), capsys)
    assert step_losses(lines) == step_losses(reference) and len(step_losses(lines)) == 2
    assert [v.split("]")[1] for v in lines if VAL_LINE.match(v)] == \
        [v.split("]")[1] for v in reference if VAL_LINE.match(v)] != []
    assert_same_weights(weights(checkpoint.latest(str(tmp_path / "checkpoint" / "split"))),
                        weights(checkpoint.latest(str(tmp_path / "checkpoint" / "reference"))))

    train(flags(tmp_path, tiny_model, str(data), *common, *split, "--run_name", "b1", "--batch_size", "1",
                "--steps", "1"), capsys)
    other = json.loads((tmp_path / "checkpoint" / "b1" / "held_out.json").read_text(encoding="utf-8"))
    assert other["held_out"] == held
    resumed = train(flags(tmp_path, tiny_model, str(data), *common, *split, "--run_name", "split", "--steps",
                          "1"), capsys)
    assert list(step_losses(resumed)) == [3]
    with pytest.raises(UsageError, match="resume it with --val_split 0.25 --val_split_seed 0"):
        train(flags(tmp_path, tiny_model, str(data), *common, "--run_name", "split", "--steps", "4"), capsys)
    with pytest.raises(UsageError, match="held out other documents"):
        train(flags(tmp_path, tiny_model, str(data), *common, *split, "--val_split_seed", "1",
                    "--run_name", "split", "--steps", "4"), capsys)
    with pytest.raises(UsageError, match="nothing can be held out"):
        train(flags(tmp_path, tiny_model, kept, *common, *split, "--run_name", "reference", "--steps", "4"),
              capsys)

    models_dir, name, _ = tiny_model
    script = os.path.join(os.path.dirname(train_script.__file__), "score.py")
    score = [sys.executable, script, "--models_dir", models_dir, "--model_name", name,
             "--checkpoint_dir", str(tmp_path / "checkpoint"), "--run_name", "split", "--quiet", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    by_run = subprocess.run([*score, str(tmp_path / "a.json"), "--held_out", "split"], capture_output=True,
                            text=True, env=env, timeout=300)
    direct = subprocess.run([*score, str(tmp_path / "b.json"), held_file], capture_output=True, text=True,
                            env=env, timeout=300)
    assert by_run.returncode == direct.returncode == 0, by_run.stderr + direct.stderr
    a, b = (json.loads((tmp_path / f).read_text(encoding="utf-8")) for f in ("a.json", "b.json"))
    assert [d["name"] for d in a["documents"]] == [f"{data}:{i + 1}" for i in held]
    assert a["total"] == b["total"]


def test_val_split_refuses_one_document_and_a_second_validation_set(tmp_path, tiny_model, capsys):
    from gpt2_tf.cli import UsageError

    data = tmp_path / "one.txt"
    data.write_text("One document only, however long. " * 50, encoding="utf-8")
    with pytest.raises(UsageError, match="is one document; a split needs at least two"):
        train(flags(tmp_path, tiny_model, str(data), "--val_split", "0.1", "--steps", "1"), capsys)
    with pytest.raises(UsageError, match="give one of them"):
        train(flags(tmp_path, tiny_model, str(data), "--val_split", "0.1", "--val_dataset", str(data)),
              capsys)
    assert not (tmp_path / "checkpoint" / "run1" / "held_out.json").exists()


def test_a_token_file_changed_during_a_run_stops_it_after_saving(tmp_path, tiny_model, capsys, monkeypatch):
    from gpt2_tf.cli import train_loop as train_module

    path = tmp_path / "train.bin"
    np.random.RandomState(6).randint(0, 50257, 3000).astype(np.uint16).tofile(path)
    real_next_batch, calls = train_module.next_batch, []

    def next_batch(r):
        calls.append(1)
        if len(calls) == 3:  # after two steps, the file is rewritten in place
            with open(path, "ab") as f:
                f.write(b"\0\0")
        return real_next_batch(r)

    monkeypatch.setattr(train_module, "next_batch", next_batch)
    with pytest.raises(train_module.TrainingError) as error:
        train(flags(tmp_path, tiny_model, str(path), "--steps", "10"), capsys)
    run_dir = tmp_path / "checkpoint" / "run1"
    assert str(error.value) == (f"{path} was changed while in use (its size or time changed): a token "
                                "file must not change while it is being read; keep the old one until the run "
                                f"ends, or stop the run first (stopped at step 2, saved in {run_dir})")
    assert checkpoint.latest(str(run_dir)).endswith("model-2")


def test_only_transformer_layers_are_trained(tmp_path, tiny_model, data, capsys):
    train(flags(tmp_path, tiny_model, data, "--steps", "2", "--only_train_transformer_layers",
                "--optimizer", "adafactor", "--learning_rate", "0.01"), capsys)
    after = weights(str(tmp_path / "checkpoint" / "run1"))
    before = tiny_model[2]
    for name in ("model/wte", "model/wpe", "model/ln_f/g", "model/ln_f/b"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.array_equal(after["model/h0/attn/c_attn/w"], before["model/h0/attn/c_attn/w"])


def test_accumulated_gradients_are_averaged(tmp_path, tiny_model, data, capsys):
    """2 micro-batches of 1 window = 1 batch of the same 2 windows (SGD, so the scale shows)."""
    common = ["--optimizer", "sgd", "--learning_rate", "0.5", "--steps", "2"]
    a = train(flags(tmp_path, tiny_model, data, *common, "--batch_size", "1", "--accumulate_gradients",
                    "2", "--run_name", "acc"), capsys)
    b = train(flags(tmp_path, tiny_model, data, *common, "--batch_size", "2", "--run_name", "big"), capsys)
    assert step_losses(a) == step_losses(b)
    assert_same_weights(weights(str(tmp_path / "checkpoint" / "acc")),
                        weights(str(tmp_path / "checkpoint" / "big")), atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, tiny_model, data, capsys, precision):
    lines = train(flags(tmp_path, tiny_model, data, "--steps", "2", "--mixed_precision", precision), capsys)
    losses = step_losses(lines)
    assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
    assert weights(str(tmp_path / "checkpoint" / "run1"))["model/wte"].dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# Numerics of one update.


def tiny_setup(tiny_model, memory_saving=False, optimizer="sgd", learning_rate=0.0, mixed_precision=None):
    models_dir, name, _ = tiny_model
    model = build_model(HParams(**TINY_HPARAMS), mixed_precision, memory_saving=memory_saving)
    checkpoint.restore(model, os.path.join(models_dir, name))
    variables = trained_variables(model)
    opt = make_optimizer(optimizer, learning_rate)
    opt.build(list(variables.values()))
    return model, opt, variables


def cross_entropy(logits, labels):
    """Mean cross-entropy of labels[:, 1:] under logits[:, :-1], in float64."""
    logits = logits[:, :-1]
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, labels[:, 1:, None], -1)[..., 0]
    return float(np.mean(log_z - picked))


def test_cross_entropy_matches_tensorflows():
    rng = np.random.default_rng(7)
    logits = tf.constant(rng.normal(size=(6, 300)) * 5, tf.float32)
    labels = tf.constant(rng.integers(0, 300, size=6), tf.int32)
    weights = tf.constant(rng.normal(size=6), tf.float32)  # a non-uniform upstream gradient
    results = []
    def reference(x, y):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)

    for f in (fused_cross_entropy, reference):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses = f(logits, labels)
            total = tf.reduce_sum(losses * weights)
        results.append((losses.numpy(), tape.gradient(total, logits).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_loss_matches_the_numpy_oracle(tiny_model):
    model, opt, variables = tiny_setup(tiny_model)
    step = TrainStep(model, opt, variables.values(), tf.distribute.get_strategy(), 2, 1, 64)
    rs = np.random.RandomState(5)
    labels = rs.randint(0, 50257, (1, 2, 64)).astype(np.int32)
    inputs = randomize(labels, 0.3, 50257, rs)
    assert (inputs != labels).any()
    logits, _ = forward(tiny_model[2], TINY_HPARAMS, inputs[0])
    expected = cross_entropy(logits, labels[0])  # noised inputs, clean labels
    assert step(inputs, labels) == pytest.approx((expected, True), rel=1e-5)
    clean_logits, _ = forward(tiny_model[2], TINY_HPARAMS, labels[0])
    evaluator = Evaluator(model, tf.distribute.get_strategy())
    accuracy = np.mean(clean_logits[:, :-1].argmax(-1) == labels[0][:, 1:])
    assert evaluator(labels[0]) == pytest.approx((cross_entropy(clean_logits, labels[0]), accuracy), rel=1e-5)


def test_memory_saving_gradients_equal_plain_ones(tiny_model):
    rs = np.random.RandomState(6)
    labels = rs.randint(0, 50257, (2, 1, 64)).astype(np.int32)
    results = []
    for memory_saving in (False, True):
        model, opt, variables = tiny_setup(tiny_model, memory_saving, "sgd", 1.0)
        step = TrainStep(model, opt, variables.values(), tf.distribute.get_strategy(), 1, 2, 64)
        loss, _ = step(labels, labels)
        results.append((loss, {name: v.numpy() for name, v in variables.items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert_same_weights(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize("memory_saving, accumulate", [(False, 1), (True, 2)])
def test_bf16_updates_equal_keras_mixed_precision(tiny_model, memory_saving, accumulate):
    """The bf16 step reads bfloat16 copies of the weights that every update refreshes. Its updates are
    those of Keras' mixed precision, where each weight is converted where it is used, and the
    gradients of micro-batches are summed in float32."""
    rs = np.random.RandomState(8)
    batches = [rs.randint(0, 50257, (accumulate, 1, 64)).astype(np.int32) for _ in range(3)]
    predictions = accumulate * 63
    model, opt, variables = tiny_setup(tiny_model, memory_saving, "sgd", 1.0, "bf16")
    step = TrainStep(model, opt, variables.values(), tf.distribute.get_strategy(), 1, accumulate, 64)
    losses = [step(batch, batch)[0] for batch in batches]
    assert {c.dtype for c in step.copies} == {tf.bfloat16}

    reference, _, ref_variables = tiny_setup(tiny_model, False, "sgd", 1.0, "bf16")
    ref_variables = list(ref_variables.values())

    @tf.function
    def gradients(tokens):
        with tf.GradientTape() as tape:
            total = loss_sum(reference, tokens, tokens)
            scaled = total / predictions
        return total, [tf.convert_to_tensor(g) for g in tape.gradient(scaled, ref_variables)]

    for batch, loss in zip(batches, losses):
        total, grads = 0.0, [0.0] * len(ref_variables)
        for micro in batch:
            micro_loss, micro_grads = gradients(micro)
            total += float(micro_loss)
            grads = [g + h for g, h in zip(grads, micro_grads)]
        assert loss == pytest.approx(total / predictions, rel=1e-5)
        for v, g in zip(ref_variables, grads):
            v.assign_sub(g)
    for v, ref in zip(variables.values(), ref_variables):
        np.testing.assert_allclose(v.numpy(), ref.numpy(), rtol=0, atol=1e-5, err_msg=v.path)


@pytest.mark.parametrize("optimizer", ["adam", "adafactor"])
def test_optimizer_state_with_width_1_axes_still_loads(tiny_model, optimizer):
    """Optimizer states saved when the conv1d weights were [1, nx, nf] (now [nx, nf]) resume exactly."""
    _, opt, variables = tiny_setup(tiny_model, optimizer=optimizer)
    shapes = HParams(**TINY_HPARAMS).variable_shapes()
    # The same optimizer built on variables of the original's shapes: the layout of such a state.
    old_opt = make_optimizer(optimizer, 0.0)
    old_opt.build([keras.Variable(np.zeros(shapes[name], np.float32)) for name in variables])
    rng = np.random.default_rng(0)
    saved = [(p, (v + 7 if v.dtype.kind == "i" else rng.normal(size=v.shape)).astype(v.dtype))
             for p, v in ((p, v.numpy()) for p, v in optimizer_state(old_opt))]  # the count, the moments
    state = {"optimizer": optimizer, "optimizer_variables": [[p, list(v.shape)] for p, v in saved]}
    now = [list(v.shape) for _, v in optimizer_state(opt)]
    assert [shape for _, shape in state["optimizer_variables"]] != now
    assert restore_optimizer(opt, optimizer, state, [v for _, v in saved]) is None
    for (_, mine), (_, old) in zip(optimizer_state(opt), saved):
        np.testing.assert_array_equal(mine, old.reshape(mine.shape))
    state["optimizer_variables"][-1][1].append(2)  # a real difference is still refused
    assert "saved by" in restore_optimizer(opt, optimizer, state, [v for _, v in saved])


def test_factored_adafactor_updates_as_keras_adafactor_with_less_state():
    shapes = [(5,), (4, 6), (1, 3, 7)]

    def updated(optimizer_class):
        rs = np.random.RandomState(0)
        variables = [keras.Variable(rs.randn(*shape).astype(np.float32)) for shape in shapes]
        optimizer = optimizer_class(0.01)
        optimizer.build(variables)
        for _ in range(3):
            optimizer.apply_gradients([(tf.constant(rs.randn(*v.shape).astype(np.float32)), v)
                                       for v in variables])
        return [v.numpy() for v in variables], sum(int(np.prod(v.shape)) for v in optimizer.variables)

    expected, keras_size = updated(keras.optimizers.Adafactor)
    got, size = updated(FactoredAdafactor)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    assert size == 2 + 5 + (4 + 6) + (3 + 7) and keras_size > size + 4 * 6 + 3 * 7


def test_randomize_replaces_inputs_with_the_given_probability():
    rs = np.random.RandomState(0)
    context = np.zeros([4, 1000], np.int32)
    noised = randomize(context, 0.25, 50257, rs)
    assert abs((noised != 0).mean() - 0.25) < 0.03
    assert randomize(context, 0.0, 50257, rs) is context


# ---------------------------------------------------------------------------------------------------
# Saving: atomic under failures, kill -9, signals.


class Failure(Exception):
    pass


class FailAt:
    """Wraps functions so that the `n`-th call among all of them raises Failure."""

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def wrap(self, original):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                raise Failure
            return original(*args, **kwargs)
        return call


def test_save_is_atomic_when_any_file_operation_fails(tmp_path, tiny_model, data, capsys, monkeypatch):
    """Fail the k-th file operation of a save, for every k: the newest listed checkpoint always loads
    completely, with its training state, and the next save succeeds."""
    train(flags(tmp_path, tiny_model, data, "--steps", "2", "--save_every", "1"), capsys)
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "checkpoint" / "run1", pristine)
    old = weights(str(pristine / "model-2"))
    model, opt, _ = tiny_setup(tiny_model, optimizer="adam")
    model.wte.assign(model.wte + 1.0)
    shapes = model.hparams.variable_shapes()
    new = {name: v.numpy().reshape(shapes[name]) for name, v in model.variables_by_name().items()}

    targets = [(os, "replace"), (os, "rename"), (os, "remove"), (os, "mkdir"), (shutil, "rmtree"),
               (shutil, "copyfile"), (tf.raw_ops, "SaveV2")]
    k = 0
    while True:
        folder = tmp_path / f"attempt{k}"
        shutil.copytree(pristine, folder)
        fail = FailAt(k + 1)
        with monkeypatch.context() as patch:
            for module, name in targets:
                patch.setattr(module, name, fail.wrap(getattr(module, name)))
            try:
                RunCheckpoints(str(folder), max_to_keep=2).save(3, model, opt, {"seed": 1})
                failed = False
            except Failure:
                failed = True
        prefix = checkpoint.latest(str(folder))
        step = int(prefix.rsplit("-", 1)[1])
        assert step in (2, 3)
        assert_same_weights(weights(prefix), new if step == 3 else old)
        state, arrays = load_train_state(prefix)
        assert state["step"] == step and len(arrays) == len(optimizer_state(opt))
        assert read_counter(str(folder)) in (2, 3)
        if not failed:
            assert step == 3 and read_counter(str(folder)) == 3
            assert checkpoint_files.read_state_file(str(folder)) == ["model-2", "model-3"]
            assert not (folder / "model-1.index").exists() and not (folder / "model-1.train").exists()
            break
        RunCheckpoints(str(folder), max_to_keep=2).save(3, model, opt, {"seed": 1})  # recovers
        assert checkpoint.latest(str(folder)).endswith("model-3")
        assert_same_weights(weights(str(folder / "model-3")), new)
        shutil.rmtree(folder)
        k += 1
    assert k >= 10  # every step of the save was interrupted once


def test_old_checkpoints_are_pruned_but_one_every_n_hours_is_kept(tmp_path, tiny_model):
    model, opt, _ = tiny_setup(tiny_model, optimizer="sgd")
    keeper = RunCheckpoints(str(tmp_path), max_to_keep=2, keep_every_hours=2)
    keeper.next_keep_time = time.time() - 1  # the first checkpoint to drop out is due to be kept
    for step in (1, 2, 3, 4):
        keeper.save(step, model, opt, {})
    assert checkpoint_files.read_state_file(str(tmp_path)) == ["model-3", "model-4"]
    assert (tmp_path / "model-1.index").exists() and (tmp_path / "model-1.train").exists()
    assert not (tmp_path / "model-2.index").exists() and not (tmp_path / "model-2.train").exists()


def start_training(tmp_path, tiny_model, data, *extra, stderr=subprocess.DEVNULL):
    argv = flags(tmp_path, tiny_model, data, *extra)
    return subprocess.Popen([sys.executable, train_script.__file__, *argv], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=SUBPROCESS_ENV)


def read_until(process, pattern, timeout=120):
    """Lines of the process's stdout up to the first matching one."""
    lines = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    process.kill()
    raise AssertionError(f"no line matching {pattern!r} in {lines}")


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGINT])
def test_signals_save_and_exit_128_plus_the_signal(tmp_path, tiny_model, data, sig):
    process = start_training(tmp_path, tiny_model, data, stderr=subprocess.PIPE)
    read_until(process, r"^\[3 \| ")
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig  # 143 for SIGTERM, 130 for Ctrl-C, as shells report them
    lines = out.splitlines()
    last = max(step_losses(lines) or {3: 0})
    assert "interrupted" in lines
    run_dir = tmp_path / "checkpoint" / "run1"
    assert lines[-1] == f"Saving {run_dir}/model-{last}"
    assert err.splitlines()[-1] == f"train.py: interrupted; saved {run_dir}/model-{last}"
    assert checkpoint.latest(str(run_dir)).endswith(f"model-{last}") and read_counter(run_dir) == last


def check_loadable_after_kill(tmp_path, tiny_model, data, capsys):
    run_dir = tmp_path / "checkpoint" / "run1"
    prefix = checkpoint.latest(str(run_dir))
    step = int(prefix.rsplit("-", 1)[1])
    model, _ = checkpoint.load_model(prefix)
    assert load_train_state(prefix)[0]["step"] == step
    assert read_counter(run_dir) in (step, step - 1)
    lines = train(flags(tmp_path, tiny_model, data, "--steps", "1"), capsys)
    assert lines[0] == f"Loading checkpoint {prefix}" and sorted(step_losses(lines)) == [step + 1]


def kill_while_saving(tmp_path, tiny_model, data, capsys, seed):
    process = start_training(tmp_path, tiny_model, data, "--save_every", "1")
    read_until(process, r"^Saving .*model-3$")
    time.sleep(random.Random(seed).uniform(0, 0.3))
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    check_loadable_after_kill(tmp_path, tiny_model, data, capsys)


@pytest.mark.slow
def test_kill_9_while_saving_leaves_a_loadable_run(tmp_path, tiny_model, data, capsys):
    kill_while_saving(tmp_path, tiny_model, data, capsys, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 8))
def test_kill_9_at_random_moments(tmp_path, tiny_model, data, capsys, seed):
    kill_while_saving(tmp_path, tiny_model, data, capsys, seed)


# ---------------------------------------------------------------------------------------------------
# Distribution.

TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_replicas_match_one_device(tmp_path, tiny_model, data, capsys):
    common = ["--steps", "3", "--batch_size", "4", "--noise", "0.1", "--learning_rate", "0.001",
              "--sample_every", "2", "--val_every", "3", "--val_batch_size", "3", "--val_batch_count", "2"]
    argv = flags(tmp_path, tiny_model, data, *common, "--distribute", "mirrored", "--run_name", "two")
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, *argv], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training on 2 replicas, 2 windows each" in done.stderr
    assert "Training on 2 x CPU, TensorFlow graph" in done.stderr.splitlines()  # what the run trains on
    one = train(flags(tmp_path, tiny_model, data, *common, "--distribute", "none", "--run_name", "one"),
                capsys)
    two = done.stdout.splitlines()
    for a, b in zip(sorted(step_losses(one).items()), sorted(step_losses(two).items())):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], abs=0.011)
    assert [line.split("=")[1] for line in one if VAL_LINE.match(line)] == \
        [line.split("=")[1] for line in two if VAL_LINE.match(line)]
    assert_same_weights(weights(str(tmp_path / "checkpoint" / "two")),
                        weights(str(tmp_path / "checkpoint" / "one")), atol=2e-5)


@pytest.mark.slow
def test_two_replicas_match_one_device_in_bf16(tmp_path, tiny_model, data, capsys):
    """Every replica reads bfloat16 copies of the weights, which each update refreshes: after three
    SGD updates, two replicas moved the weights as one device did, up to bfloat16 rounding."""
    common = ["--steps", "3", "--batch_size", "4", "--optimizer", "sgd", "--learning_rate", "1",
              "--mixed_precision", "bf16"]
    argv = flags(tmp_path, tiny_model, data, *common, "--distribute", "mirrored", "--run_name", "two")
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, *argv], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train(flags(tmp_path, tiny_model, data, *common, "--distribute", "none", "--run_name", "one"), capsys)
    start = tiny_model[2]
    one, two = (weights(str(tmp_path / "checkpoint" / run)) for run in ("one", "two"))
    for name in start:
        moved = one[name] - start[name]
        np.testing.assert_allclose(two[name] - start[name], moved, rtol=0,
                                   atol=0.02 * np.abs(moved).max(), err_msg=name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_match_one_device(tmp_path, tiny_model, data, capsys):
    common = ["--steps", "3", "--batch_size", "4", "--learning_rate", "0.001"]
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        argv = flags(tmp_path, tiny_model, data, *common, "--run_name", "workers",
                     "--checkpoint_dir", str(tmp_path / f"checkpoint{index}"))
        processes.append(subprocess.Popen(
            [sys.executable, train_script.__file__, *argv], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env=dict(SUBPROCESS_ENV, TF_CONFIG=json.dumps(config))))
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    assert not (tmp_path / "checkpoint1").exists()  # only the chief writes
    train(flags(tmp_path, tiny_model, data, *common, "--distribute", "none", "--run_name", "one"), capsys)
    assert_same_weights(weights(str(tmp_path / "checkpoint0" / "workers")),
                        weights(str(tmp_path / "checkpoint" / "one")), atol=2e-5)


@pytest.mark.parametrize("optimizer, xla_update", [("adam", True), ("adafactor", False)])
def test_nonfinite_update_is_skipped(tiny_model, optimizer, xla_update):
    """A step whose loss is not finite leaves the weights and the optimizer state as they were; the
    next finite step updates them again."""
    model, opt, variables = tiny_setup(tiny_model, optimizer=optimizer, learning_rate=1e-3)
    step = TrainStep(model, opt, variables.values(), tf.distribute.get_strategy(), 1, 1, 64,
                     xla_update=xla_update)
    labels = np.random.RandomState(9).randint(0, 50257, (1, 1, 64)).astype(np.int32)
    assert step(labels, labels)[1]
    gain = variables["model/ln_f/g"]
    good = gain.numpy()
    gain.assign(np.full_like(good, np.nan))
    before = {name: v.numpy() for name, v in variables.items()}
    iterations = int(opt.iterations)
    loss, applied = step(labels, labels)
    assert not applied and not np.isfinite(loss)
    assert int(opt.iterations) == iterations
    assert_same_weights({name: v.numpy() for name, v in variables.items()}, before)
    gain.assign(good)
    loss, applied = step(labels, labels)
    assert applied and np.isfinite(loss) and int(opt.iterations) == iterations + 1


def test_nonfinite_weights_are_never_saved(tmp_path, tiny_model):
    """Neither checkpoint.save nor a run's save writes NaN weights, and a run's existing checkpoint of
    the same name stays as it was."""
    model, opt, _ = tiny_setup(tiny_model)
    checkpoints = RunCheckpoints(str(tmp_path / "run"))
    checkpoints.save(3, model, opt, {})
    model.variables_by_name()["model/h1/mlp/c_fc/b"].assign(np.full([128], np.inf, np.float32))
    with pytest.raises(checkpoint.CheckpointError, match="model/h1/mlp/c_fc/b"):
        checkpoint.save(model, str(tmp_path / "other" / "model"))
    with pytest.raises(checkpoint.CheckpointError, match="not finite"):
        checkpoints.save(3, model, opt, {})
    assert not os.path.exists(tmp_path / "other")
    saved = checkpoint.read(str(tmp_path / "run"))
    assert checkpoint.latest(str(tmp_path / "run")).endswith("model-3")
    assert all(np.isfinite(array).all() for array in saved.values())


@pytest.mark.slow
def test_several_replicas_skip_nonfinite_steps_and_stop_after_too_many(tmp_path, tiny_model, data):
    """Across replicas a bad update is skipped as on one device; after --max_nonfinite in a row the run
    saves its last good weights and stops with exit status 1."""
    argv = flags(tmp_path, tiny_model, data, "--steps", "4", "--batch_size", "4", "--optimizer", "sgd",
                 "--learning_rate", "1e30", "--save_every", "1", "--distribute", "mirrored",
                 "--max_nonfinite", "1")
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, *argv], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "update skipped (1 in a row)" in done.stderr and "update skipped (2 in a row)" in done.stderr
    assert "were not finite at 2 steps in a row" in done.stderr.splitlines()[-1]
    newest = checkpoint.latest(str(tmp_path / "checkpoint" / "run1"))
    assert all(np.isfinite(w).all() for w in checkpoint.read(newest).values())
    step = int(newest.rsplit("-", 1)[1])
    assert f"[{step + 1} |" not in done.stdout  # the bad steps were not counted, nor saved


def test_memory_warning_gives_the_numbers():
    """A run that cannot fit is told at start-up, with what it holds; one that fits is not warned."""
    from gpt2_tf.cli.train_checks import memory_warning
    from gpt2_tf.hparams import released

    args = train_script.parse_args(["--dataset", "x", "--model_name", "1558M"])
    gib = 1 << 30
    warning = memory_warning(released("1558M"), args, available=24 * gib)  # Adam: 4 + 8 + 4 bytes each
    assert warning and "at least 23.2 GiB" in warning and "optimizer state 11.6" in warning
    assert "24.0 GiB of memory is available" in warning
    args = train_script.parse_args(["--dataset", "x", "--optimizer", "sgd", "--memory_saving_gradients"])
    assert memory_warning(released("1558M"), args, available=24 * gib) is None  # 5.8 GiB of weights
    assert "weights 5.8" in memory_warning(released("1558M"), args, available=6 * gib)
