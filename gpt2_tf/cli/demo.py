"""The offline demo: the whole pipeline on a corpus every Python installation has, in a few minutes.

    make demo            (or: python -m gpt2_tf.cli.demo)

It learns a small vocabulary from the Python standard library's own source files, encodes them,
trains a small GPT-2 from scratch with a held-out validation set, and samples from it. Every step is
one of the project's commands, printed before it runs, so the same lines work on real data.
With --quick everything is tiny (the test suite runs it that way).
"""

import argparse
import glob
import os
import shlex
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {
    # vocabulary, layers, width, heads, context, batch, steps, learning rate
    "full": dict(vocab=2048, n_layer=4, n_embd=128, n_head=4, n_ctx=128, batch=16, steps=400, lr=2e-3),
    "quick": dict(vocab=512, n_layer=2, n_embd=64, n_head=4, n_ctx=64, batch=8, steps=60, lr=3e-3),
}


def shown(argv):
    """A command as a user would type it from the repository's folder."""
    return " ".join(shlex.quote(a) for a in ["python", *argv])


def step(title, *argv):
    """Print a step and its command, run it, stop the demo if it fails."""
    print(f"\n### {title}\n$ {shown(argv)}", flush=True)
    if subprocess.run([sys.executable, *argv], cwd=ROOT).returncode != 0:
        sys.exit(f"demo: this step failed: {shown(argv)}")


def next_commands(work, size):
    """What to do with the demo's model next: sample from it, train it further, and the real thing."""
    checkpoint_dir = os.path.join(work, "checkpoint")
    run = ["--run_name", "demo", "--checkpoint_dir", checkpoint_dir]
    return [
        ("sample from the demo model",
         ["sample.py", *run, "--prompt", "import ", "--include_prompt", "--length", "40", "--top_k", "20"]),
        ("ask it for prompts in a loop",
         ["sample.py", *run, "--interactive", "--length", "40", "--top_k", "20"]),
        ("train it further (the run goes on from its last checkpoint, with its own optimizer and schedule)",
         ["train.py", "--dataset", os.path.join(work, "train.npz"), "--model_name", "demo", "--models_dir",
          os.path.join(work, "models"), *run, "--batch_size", str(size["batch"]), "--steps", "100"]),
        ("the real thing: OpenAI's smallest GPT-2, fine-tuned on your text", None),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the whole gpt2-tf pipeline offline.")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "demo"), help="where the demo writes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds, not minutes)")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    work = os.path.abspath(args.work_dir)
    stdlib = sysconfig.get_paths()["stdlib"]
    train_glob = os.path.join(stdlib, "[a-r]*.py")
    val_glob = os.path.join(stdlib, "[s-z]*.py")
    if args.quick:
        train_glob = os.path.join(stdlib, "[a-c]*.py")
        val_glob = os.path.join(stdlib, "[w-z]*.py")
    if not glob.glob(train_glob) or not glob.glob(val_glob):
        sys.exit(f"demo: no Python sources found in {stdlib}")
    models = os.path.join(work, "models")
    start = time.time()
    print(f"gpt2-tf demo: training a GPT-2 from scratch on the Python standard library ({stdlib}).\n"
          f"Everything is written under {work}.")
    step("1. Learn a byte-level BPE vocabulary from the training files",
         "train_bpe.py", train_glob, f"--vocab_size={size['vocab']}", "--out", os.path.join(models, "demo"),
         *(f"--{k}={size[k]}" for k in ("n_ctx", "n_embd", "n_head", "n_layer")), "--quiet")
    for name, files in (("train", train_glob), ("val", val_glob)):
        step(f"2. Encode the {name} files with it", "encode.py", files, os.path.join(work, f"{name}.npz"),
             "--model_name", "demo", "--models_dir", models, "--combine", "20000", "--quiet")
    steps = size["steps"]
    step("3. Train a small GPT-2 from scratch (validation loss starts near ln(vocabulary size))",
         "train.py", "--init", "scratch", "--dataset", os.path.join(work, "train.npz"),
         "--val_dataset", os.path.join(work, "val.npz"), "--model_name", "demo", "--models_dir", models,
         "--run_name", "demo", "--checkpoint_dir", os.path.join(work, "checkpoint"),
         "--sample_dir", os.path.join(work, "samples"), "--restore_from", "fresh",
         "--batch_size", str(size["batch"]), "--learning_rate", str(size["lr"]), "--optimizer", "adamw",
         "--weight_decay", "0.1", "--warmup_steps", str(steps // 10), "--min_lr", str(size["lr"] / 10),
         "--grad_clip", "1.0", "--steps", str(steps), "--val_every", str(max(steps // 4, 1)),
         "--val_batch_count", "8", "--val_batch_size", str(size["batch"]), "--sample_every", "0",
         "--save_every", "0", "--print_every", str(max(steps // 20, 1)), "--seed", "1")
    step("4. Sample from the trained model",
         "sample.py", "--run_name", "demo", "--checkpoint_dir", os.path.join(work, "checkpoint"),
         "--prompt", "def ", "--include_prompt", "--length", str(size["n_ctx"] - 8), "--top_k", "20",
         "--seed", "1")
    print(f"\nDone in {time.time() - start:.0f} s. What to do next, from {ROOT}:")
    for title, argv in next_commands(work, size):
        print(f"\n# {title}")
        if argv:
            print(shown(argv))
    print("python download_model.py 124M\n"
          "python encode.py your_corpus/ data.npz\n"
          "python train.py --dataset data.npz --run_name mine\n"
          "python sample.py --run_name mine --top_p 0.9")


if __name__ == "__main__":
    main()
