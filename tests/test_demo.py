"""The offline demo, shortened: a vocabulary, a dataset and a model learned from scratch, end to end."""

import math
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from gpt2_tf.checkpoint import load_model
from gpt2_tf.encoder import get_encoder
from gpt2_tf.hparams import load_hparams


@pytest.mark.slow
def test_quick_demo_learns(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gpt2_tf.cli.demo", "--quick", "--work_dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "checkpoint" / "demo"
    hparams = load_hparams(str(run))
    assert (hparams.n_layer, hparams.n_embd, hparams.n_ctx, hparams.n_vocab) == (2, 64, 64, 512)
    losses = [float(v) for v in re.findall(r"validation loss = ([0-9.]+)", out.stdout)]
    assert len(losses) >= 3
    # A new model starts near the loss of a uniform guess, ln(n_vocab), and must get well below it.
    assert abs(losses[0] - math.log(512)) < 0.5
    assert losses[-1] < math.log(512) - 0.8
    assert "SAMPLE 1" in out.stdout
    # The run folder is self-contained: the model and its tokenizer load from it.
    model, _ = load_model(str(run))
    enc = get_encoder("demo", str(tmp_path / "checkpoint"))
    logits = model(np.array([enc.encode("def main():")]))["logits"]
    assert logits.shape[-1] == 512
    # It ends with the commands that go on from there, and they work as printed.
    after = out.stdout.split("What to do next")[1]
    commands = [shlex.split(line) for line in after.splitlines() if line.startswith("python ")]
    scripts = [c[1] for c in commands]
    assert scripts[:3] == ["sample.py", "sample.py", "train.py"] and "download_model.py" in scripts
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sampled = subprocess.run([sys.executable, *commands[0][1:]], cwd=root, capture_output=True, text=True)
    assert sampled.returncode == 0 and "SAMPLE 1" in sampled.stdout, sampled.stderr[-2000:]
    trained = subprocess.run([sys.executable, *commands[2][1:], "--steps", "2"], cwd=root,
                             capture_output=True, text=True)
    assert trained.returncode == 0 and "[62 |" in trained.stdout, trained.stdout[-2000:] + trained.stderr
    # It goes on with the demo's own optimizer and schedule, whose state it loads.
    assert "Resuming with the run's own --optimizer adamw" in trained.stderr
    assert "not used" not in trained.stderr


@pytest.mark.slow
def test_scratch_run_resumes_with_its_own_shape(tmp_path, tiny_model):
    models_dir, name, _ = tiny_model
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 400)
    base = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "train.py"),
            "--init", "scratch", "--dataset", str(corpus), "--models_dir", models_dir, "--model_name", name,
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--sample_every", "0", "--seed", "3",
            "--optimizer", "adamw", "--warmup_steps", "2", "--min_lr", "1e-4", "--learning_rate", "1e-3",
            "--grad_clip", "1.0", "--batch_size", "2", "--sample_length", "16"]
    first = subprocess.run(base + ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--n_ctx", "32",
                                   "--steps", "3", "--lr_decay_steps", "6"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Initialising a new model: 1 layers, n_embd 16" in first.stdout
    second = subprocess.run(base + ["--steps", "3", "--lr_decay_steps", "6"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Loading checkpoint" in second.stdout and "[6 |" in second.stdout
    model, hparams = load_model(str(tmp_path / "ckpt" / "run1"))
    assert (hparams.n_layer, hparams.n_embd, hparams.n_ctx) == (1, 16, 32)
    # Resumed without --init scratch, the run keeps its shape and its optimizer and schedule.
    third = subprocess.run(base[:2] + base[4:] + ["--steps", "1"], capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[7 |" in third.stdout and "not used" not in third.stderr
    reshaped = subprocess.run(base + ["--n_layer", "2", "--steps", "1"], capture_output=True, text=True,
                              timeout=300)
    assert reshaped.returncode == 2 and "--n_layer 2: the run" in reshaped.stderr
    assert len(reshaped.stderr.splitlines()) == 1


@pytest.mark.slow
def test_gpu_check_runs_its_smoke_mode_without_an_accelerator():
    """bench/gpu_check.py, on a machine without an accelerator, runs its tiny CPU smoke run and exits 0."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_check.py"), "--steps", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("no accelerator found") and "correctness against the CPU: match" in lines[1]
    rows = ["train tiny fp32:", "train tiny bf16:", "train tiny fp16:",
            "--distribute mirrored on one device:", "--grad_clip 1.0:", "sample tiny batch 1:",
            "sample tiny batch 8:"]
    assert [row for row in rows if not any(row in line and "tokens/s" in line for line in lines)] == []
    assert "placement: the graph-mode decoding and training steps run on the device" in lines
    assert any(line.startswith("attention backward under XLA: ") for line in lines)
