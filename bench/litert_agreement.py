#!/usr/bin/env python3
"""Greedy agreement of a LiteRT int8 model with its float32 twin, on a trained model.

The run (default: the demo's, `make demo`) is converted to LiteRT float32 and int8 in a temporary
folder (convert.py's writer); both continue the same 8 prompts (16 tokens from 8 files of Python's
standard library, which the demo's validation set holds) greedily for 112 tokens. Reported: how many
of the rows are the same token for token, the position where each row first differs, and the tokens
before the first difference, of all.

    make demo && python bench/litert_agreement.py demo/checkpoint/demo
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FILES = ("string.py", "textwrap.py", "shlex.py", "statistics.py", "tempfile.py", "typing.py", "uuid.py",
         "wave.py")
PROMPT, NEW = 16, 112


def main():
    run = sys.argv[1] if len(sys.argv) > 1 else os.path.join("demo", "checkpoint", "demo")
    from gpt2_tf.encoder import get_encoder
    from gpt2_tf.hparams import load_hparams
    from gpt2_tf.litert_runtime import LiteRTGenerator

    enc = get_encoder(os.path.basename(run), os.path.dirname(run))
    library = os.path.dirname(os.__file__)
    prompts = []
    for name in FILES:
        with open(os.path.join(library, name), encoding="utf-8") as f:
            prompts.append(enc.encode(f.read()[3000:4000])[:PROMPT])
    drawn = {}
    with tempfile.TemporaryDirectory() as folder:
        for quantize in ("float32", "int8"):
            out = os.path.join(folder, quantize)
            subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), run, out, "--to", "litert",
                            "--quantize", quantize, "--quiet"], check=True)
            generator = LiteRTGenerator(os.path.join(out, "model.tflite"), load_hparams(out))
            *_, state = generator.draws(prompts, NEW, temperature=0)
            drawn[quantize] = np.array([state.tokens[b, PROMPT:PROMPT + NEW] for b in range(len(prompts))])
    same = drawn["float32"] == drawn["int8"]
    first = [NEW if row.all() else int(np.argmin(row)) for row in same]
    print(f"{len(prompts)} prompts x {NEW} greedy tokens: {sum(f == NEW for f in first)} rows the same "
          f"throughout; first difference at {first}; {sum(first)} of {same.size} tokens "
          f"({100 * sum(first) / same.size:.1f}%) before the first difference, {100 * same.mean():.1f}% "
          "position by position")


if __name__ == "__main__":
    main()
