#!/usr/bin/env python3
"""The cost of oneDNN's system allocator (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1, which train.py sets for the
runs sized to the memory) against its pool, which keeps freed memory: training and sampling speed of
the 124M shape, side by side.

Runs bench/train.py (ours only, no large shapes) and bench/sample.py (ours, float32) once per setting
per round, the two settings alternating, and prints each figure under both with the ratio of the
medians. The memory it saves is measured by bench/train_memory.py (whole runs up to 1558M).

    python bench/allocator.py                 # 2 rounds (about 15 minutes)
    python bench/allocator.py --rounds 1
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"system": "1", "pool": "0"}
TRAIN = [sys.executable, "bench/train.py", "--peers", "ours", "--large", "", "--steps", "5", "--warmup", "2"]
SAMPLE = [sys.executable, "bench/sample.py", "--only", "ours-xla-float32", "ours-graph-float32"]
# bench/train.py's lines "ours graph fp32      447.1 tokens/s ..." (one update, batch 1 x 1024), and
# bench/sample.py's table rows "ours-xla-float32   33.1   109.2 ..." (tokens/s at batch 1 and 8).
TRAIN_LINE = re.compile(r"^(ours .+?)\s+([\d.]+) tokens/s")
SAMPLE_LINE = re.compile(r"^(ours-\S+)\s+([\d.]+)\s+([\d.]+)\s")


def figures(command, allocator):
    """{label: tokens/s} that one bench prints, run with TF_ONEDNN_USE_SYSTEM_ALLOCATOR=allocator."""
    env = {**os.environ, "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": allocator}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        if command is TRAIN and TRAIN_LINE.match(line):
            label, speed = TRAIN_LINE.match(line).groups()
            found[f"train: {label}"] = float(speed)
        elif command is SAMPLE and SAMPLE_LINE.match(line):
            label, b1, b8 = SAMPLE_LINE.match(line).groups()
            found[f"sample: {label}, batch 1"], found[f"sample: {label}, batch 8"] = float(b1), float(b8)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs = {name: {} for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, value in SETTINGS.items():
            for command in (TRAIN, SAMPLE):
                for label, speed in figures(command, value).items():
                    runs[name].setdefault(label, []).append(speed)
            print(f"round {round_ + 1}, {name}: {runs[name]}", flush=True)
    print(f"\n{'tokens/s':44s} {'system':>9s} {'pool':>9s} {'system / pool':>14s}")
    for label in runs["system"]:
        system, pool = (statistics.median(runs[n].get(label, [float("nan")])) for n in SETTINGS)
        print(f"{label:44s} {system:9.1f} {pool:9.1f} {system / pool:14.2f}")


if __name__ == "__main__":
    main()
