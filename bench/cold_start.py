#!/usr/bin/env python3
"""Cold start: sample.py's time to its first token as a whole process, beside a plain transformers script.

The 124M shape with random weights, written once into a temporary folder in the released layout and
converted for transformers and to LiteRT int8 (convert.py; sample.py runs the LiteRT folder without
TensorFlow). Each command generates one token after "Hello there" (top_k
40) in a fresh process: one warm-up run each (the files are then in the page cache), then --repeats
runs each, alternating; medians of wall time and peak memory (whole process: Python, imports,
loading, the token). --stages also times sample.py's steps inside one process.

    python bench/cold_start.py
    python bench/cold_start.py --repeats 5 --stages
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import measure, write_random_model  # noqa: E402  (bench/common.py)

from gpt2_tf.cli import Parser, integer  # noqa: E402

HF_SCRIPT = """
import sys, torch
from transformers import AutoTokenizer, GPT2LMHeadModel
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = GPT2LMHeadModel.from_pretrained(sys.argv[1])
ids = tokenizer("Hello there", return_tensors="pt")
torch.manual_seed(1)
model.generate(**ids, max_new_tokens=1, do_sample=True, top_k=40, pad_token_id=50256)
"""

STAGES = """
import os, sys, time
start = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter()))
import tensorflow as tf
mark("import TensorFlow")
from gpt2_tf.model_files import find_model, load
from gpt2_tf.sample import Generator
mark("import gpt2_tf")
model, hparams, enc = load(find_model("124M", sys.argv[1]))
mark("build the model, restore the weights, read the vocabulary")
tokens = enc.encode("Hello there")
Generator(model).start([tokens], 1, top_k=40, seed=1).new_tokens()
mark("the first token (tracing the prompt step included)")
last = start
for name, t in marks:
    print(f"  {name:60} {t - last:6.2f} s")
    last = t
print(f"  {'in all':60} {last - start:6.2f} s")
"""


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=integer(1), default=3, help="timed runs of each command")
    parser.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared", "gpt2-vocab"),
                        help="folder with encoder.json and vocab.bpe")
    parser.add_argument("--no_peer", action="store_true", help="leave out the transformers script")
    parser.add_argument("--stages", action="store_true", help="also time sample.py's steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as work:
        models = os.path.join(work, "models")
        write_random_model(os.path.join(models, "124M"), "124M", args.vocab)
        hf = os.path.join(work, "hf")
        subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), os.path.join(models, "124M"), hf,
                        "--to", "hf", "--quiet"], check=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), os.path.join(models, "124M"),
                        os.path.join(models, "124M-litert"), "--to", "litert", "--quiet"], check=True)
        sample = [sys.executable, os.path.join(ROOT, "sample.py"), "--models_dir", models, "--prompt",
                  "Hello there", "--length", "1", "--top_k", "40", "--seed", "1"]
        commands = {"sample.py --length 1": sample,
                    "the same, LiteRT int8": sample + ["--model_name", "124M-litert"]}
        if not args.no_peer:
            commands["transformers script"] = [sys.executable, "-c", HF_SCRIPT, hf]
        results = {name: [] for name in commands}
        for command in commands.values():
            measure(command)  # warm-up: the files into the page cache
        for _ in range(args.repeats):
            for name, command in commands.items():
                results[name].append(measure(command))
                time.sleep(0.5)
        print(f"{'command':24} {'wall (median)':>14} {'peak RSS':>10} {'own memory':>11} "
              f"{'vs transformers':>16}")
        medians = {name: [statistics.median(r[i] for r in runs) for i in range(3)]
                   for name, runs in results.items()}
        peer = medians.get("transformers script")
        for name, (wall, anon, rss) in medians.items():
            ratio = f"{wall / peer[0]:.2f}x, {rss / peer[2]:.2f}x" if peer else "-"
            print(f"{name:24} {wall:12.2f} s {rss:6.0f} MiB {anon:7.0f} MiB {ratio:>16}   (runs: "
                  f"{', '.join(f'{r[0]:.2f}' for r in results[name])} s)")
        if peer:
            print("(vs transformers: the ratios of wall time and of peak RSS)")
        if args.stages:
            print("sample.py's steps, in one process:")
            subprocess.run([sys.executable, "-c", STAGES, models], cwd=ROOT,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
