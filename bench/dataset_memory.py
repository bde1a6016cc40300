#!/usr/bin/env python3
"""train.py's memory and start-up with datasets of different sizes: memory-mapped token files should
cost the same whatever their size.

Datasets of random token ids are written in the layouts users have: uncompressed .npz files in
chunks of 12,000 tokens (what encode.py writes from text with its default --combine, about 50,000
characters per chunk), of --small_mb and --large_gb; a nanoGPT .bin file of --large_gb; and for
reference a compressed .npz of --compressed_mb, which is read into memory. Then `train.py --steps 1`
runs on each (the --model_name shape, random weights, SGD), as a whole process, the configurations in
turn --repeats times. Reported, medians: the seconds from start to the "dataset has N tokens" line and
to the end, peak RssAnon (what the process allocated) and peak RSS (with the pages of mapped files it
touched), each also as the difference from the small dataset.

    python bench/dataset_memory.py                          # 40 MB and 4 GB, 124M
    python bench/dataset_memory.py --large_gb 1 --repeats 1  # quicker
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import poll_memory, write_random_model  # noqa: E402
from gpt2_tf.token_files import NpzWriter  # noqa: E402

DEFAULT_VOCAB = os.environ.get("GPT2_VOCAB_DIR", os.path.join(ROOT, "..", "shared", "gpt2-vocab"))
CHUNK_TOKENS = 12_000


def write_dataset(path, n_bytes, compress=False, seed=0):
    """Random ids (uint16) of about `n_bytes`: an .npz of CHUNK_TOKENS-token arrays, or a flat .bin."""
    rng = np.random.default_rng(seed)
    tokens = n_bytes // 2
    with open(path, "wb") as f:
        if path.endswith(".bin"):
            for start in range(0, tokens, 1 << 24):
                f.write(rng.integers(0, 50257, min(1 << 24, tokens - start), dtype=np.uint16).tobytes())
            return
        with NpzWriter(f, np.uint16, compress) as writer:
            for start in range(0, tokens, CHUNK_TOKENS):
                if start % (1000 * CHUNK_TOKENS) == 0:  # fresh ids every 1,000 chunks
                    ids = rng.integers(0, 50257, 1000 * CHUNK_TOKENS, dtype=np.uint16)
                at = start % (1000 * CHUNK_TOKENS)
                chunk = ids[at:at + min(CHUNK_TOKENS, tokens - start)]
                writer.add([chunk], len(chunk))


def run_train(dataset, models_dir, work):
    """train.py --steps 1 on `dataset`: (seconds to the dataset line, seconds in all, peak RssAnon MiB,
    peak RSS MiB)."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", dataset, "--model_name", "model",
               "--models_dir", models_dir, "--checkpoint_dir", os.path.join(work, "checkpoint"),
               "--sample_dir", os.path.join(work, "samples"), "--run_name", "bench", "--steps", "1",
               "--batch_size", "1", "--optimizer", "sgd", "--sample_every", "0", "--save_every", "0",
               "--restore_from", "fresh", "--seed", "0"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    peaks, thread = poll_memory(process)
    loaded = None
    for line in process.stdout:
        if line.startswith("dataset has") and loaded is None:
            loaded = time.perf_counter() - start
    err = process.stderr.read()
    process.wait()
    thread.join()
    if process.returncode:
        raise RuntimeError(f"train.py failed on {dataset}: {err.strip().splitlines()[-1:]}")
    return loaded, time.perf_counter() - start, peaks["RssAnon"] / 1024, peaks["VmRSS"] / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small_mb", type=float, default=40)
    parser.add_argument("--large_gb", type=float, default=4)
    parser.add_argument("--compressed_mb", type=float, default=400)
    parser.add_argument("--model_name", default="124M", help="the released shape trained")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab_dir", default=DEFAULT_VOCAB)
    parser.add_argument("--workdir", default=None, help="where to write the datasets (default: a temporary "
                                                         "folder; needs 2 x --large_gb free)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        models_dir = os.path.join(work, "models")
        write_random_model(os.path.join(models_dir, "model"), args.model_name, args.vocab_dir)
        datasets = {
            f"uncompressed .npz, {args.small_mb:g} MB": ("small.npz", args.small_mb * 1e6, False),
            f"uncompressed .npz, {args.large_gb:g} GB": ("large.npz", args.large_gb * 1e9, False),
            f"nanoGPT .bin, {args.large_gb:g} GB": ("large.bin", args.large_gb * 1e9, False),
            f"compressed .npz, {args.compressed_mb:g} MB of ids": ("compressed.npz", args.compressed_mb * 1e6,
                                                                   True),
        }
        for name, (file, size, compress) in datasets.items():
            start = time.perf_counter()
            write_dataset(os.path.join(work, file), int(size), compress)
            print(f"wrote {name}: {os.path.getsize(os.path.join(work, file)) / 1e6:,.0f} MB in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        runs = {name: [] for name in datasets}
        for _ in range(args.repeats):
            for name, (file, _, _) in datasets.items():
                runs[name].append(run_train(os.path.join(work, file), models_dir, work))

    medians = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in runs.items()}
    base = medians[next(iter(medians))]
    print(f"\ntrain.py --steps 1, {args.model_name} shape, SGD, batch 1; medians of {args.repeats} runs\n")
    print("| dataset | to 'dataset has' | whole run | peak RssAnon | +RssAnon | peak RSS | +RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (loaded, seconds, anon, rss) in medians.items():
        print(f"| {name} | {loaded:.1f} s | {seconds:.1f} s | {anon:,.0f} MiB | {anon - base[2]:+,.0f} MiB | "
              f"{rss:,.0f} MiB | {rss - base[3]:+,.0f} MiB |")


if __name__ == "__main__":
    main()
