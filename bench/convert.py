#!/usr/bin/env python3
"""convert.py's time and memory, beside transformers loading and saving the same Hugging Face folder.

For each size (random weights in the released layout, written once into --workdir), each conversion
runs as its own process, timed as a whole (Python, imports and the files included), and its memory is
read from /proc every 20 ms:
- peak anonymous memory (RssAnon): what the process allocated itself;
- peak RSS: that plus the pages of memory-mapped files it has touched, which the kernel can drop at
  any moment (a reader that maps the weights touches every page once).
The peer is `GPT2LMHeadModel.from_pretrained(hf folder)` then `save_pretrained` (PyTorch, CPU), the
way a Hugging Face user re-saves a model.

    python bench/convert.py                       # 124M
    python bench/convert.py --sizes 124M,1558M    # 1558M needs about 20 GB of disk in --workdir
"""

import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import measure, write_random_model  # noqa: E402  (bench/common.py)

from gpt2_tf.cli import Parser  # noqa: E402
from gpt2_tf.hparams import RELEASED, released  # noqa: E402

RESAVE = ("import sys, transformers; "
          "transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])")


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="124M", help="comma-separated released sizes")
    parser.add_argument("--workdir", default=None,
                        help="where the models are written (default: a temporary folder)")
    parser.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared", "gpt2-vocab"),
                        help="folder with encoder.json and vocab.bpe")
    parser.add_argument("--no_peer", action="store_true", help="leave out transformers")
    parser.add_argument("--no_keras_hub", action="store_true", help="leave out the KerasHub conversions")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    for size in sizes:
        if size not in RELEASED:
            parser.error(f"--sizes: unknown size {size}; released sizes are {', '.join(RELEASED)}")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-convert-")
    convert = [sys.executable, os.path.join(ROOT, "convert.py")]
    results = []
    try:
        for size in sizes:
            mib = released(size).n_params() * 4 / 2**20
            tf1, hf, preset, out = (os.path.join(work, f"{size}-{kind}")
                                    for kind in ("tf1", "hf", "preset", "out"))
            for folder in (tf1, hf, preset, out):
                shutil.rmtree(folder, ignore_errors=True)
            write_random_model(tf1, size, args.vocab)
            steps = [("ours: tf1 -> hf", convert + [tf1, hf, "--to", "hf", "--quiet"]),
                     ("ours: hf -> tf1", convert + [hf, out, "--quiet"])]
            if not args.no_peer:
                resave = [sys.executable, "-c", RESAVE, hf, out]
                steps.append(("transformers: load + save_pretrained", resave))
            if not args.no_keras_hub:
                steps += [("ours: tf1 -> keras_hub", convert + [tf1, preset, "--to", "keras_hub", "--quiet"]),
                          ("ours: keras_hub -> tf1", convert + [preset, out, "--quiet"])]
            for name, command in steps:
                seconds, anon, rss = measure(command)
                results.append({"size": size, "step": name, "seconds": seconds, "peak_anon_mib": anon,
                                "peak_rss_mib": rss, "weights_mib": mib})
                print(f"{size:>6} {name:40} {seconds:7.1f} s  anon {anon:7.0f} MiB  rss {rss:7.0f} MiB  "
                      f"(weights {mib:.0f} MiB)", flush=True)
                shutil.rmtree(out, ignore_errors=True)
            for folder in (tf1, hf, preset):
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
