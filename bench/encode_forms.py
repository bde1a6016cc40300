#!/usr/bin/env python3
"""encode.py on CSV and JSON Lines: speed and peak memory against the same documents as plain text.

The documents are bench/encode.py's varied texts (source files, man pages, made-up prose in many
scripts), written three ways for each --size_mb: a .csv of one text per row under a header (quoted by
Python's csv.writer, so embedded newlines, commas and quotes are in it), a .jsonl of one {"text": ...}
per line, and for each of them the plain text it stands for (the CSV: each text wrapped in
<|startoftext|> ... <|endoftext|> and a newline, as gpt-2-simple's encode_csv writes it; the JSON Lines:
the texts joined by <|endoftext|>). encode.py encodes each file in a subprocess; the tokens of a .csv or
.jsonl must equal those of its plain text, and the peak memory (sampled every 20 ms) shows whether it
grows with the file.

    python bench/encode_forms.py                        # 100 MB and 1000 MB
    python bench/encode_forms.py --size_mb 20 --jobs 2
"""

import argparse
import csv
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.encode import DEFAULT_VOCAB, corpus_texts, npz_tokens, run_encode_py  # noqa: E402
from gpt2_tf.documents import STARTOFTEXT  # noqa: E402
from gpt2_tf.encoder import ENDOFTEXT  # noqa: E402


def write_forms(work, size_mb):
    """Write the documents as .csv, .jsonl and the plain text of each; returns the four paths."""
    paths = {name: os.path.join(work, name) for name in
             ("corpus.csv", "csv_as_text.txt", "corpus.jsonl", "jsonl_as_text.txt")}
    files = {name: open(path, "w", encoding="utf-8", newline="") for name, path in paths.items()}
    with files["corpus.csv"], files["csv_as_text.txt"], files["corpus.jsonl"], files["jsonl_as_text.txt"]:
        rows = csv.writer(files["corpus.csv"])
        rows.writerow(["text"])
        first = True
        for text in corpus_texts(size_mb):
            text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads either file
            if not text:
                continue
            rows.writerow([text])
            files["csv_as_text.txt"].write(STARTOFTEXT + text + ENDOFTEXT + "\n")
            files["jsonl_as_text.txt"].write(("" if first else ENDOFTEXT) + text)
            files["corpus.jsonl"].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            first = False
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_mb", default="100,1000", help="comma-separated sizes of the documents, MB")
    parser.add_argument("--jobs", type=int, default=1, help="encode.py's --jobs")
    parser.add_argument("--vocab_dir", default=DEFAULT_VOCAB, help="folder with encoder.json and vocab.bpe")
    parser.add_argument("--workdir", default=None,
                        help="where to put the files (default: a temporary folder)")
    args = parser.parse_args()

    print(f"{'size':>8} {'input':18} {'file MB':>8} {'MB/s':>7} {'peak RSS':>10}")
    for size_mb in [int(s) for s in args.size_mb.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.workdir) as work:
            paths = write_forms(work, size_mb)
            tokens = {}
            for name in ("corpus.csv", "csv_as_text.txt", "corpus.jsonl", "jsonl_as_text.txt"):
                out = os.path.join(work, name + ".npz")
                seconds, peak, _ = run_encode_py(paths[name], out, args.vocab_dir, args.jobs,
                                                       "--no_compress")
                tokens[name] = npz_tokens(out)
                os.remove(out)
                mb = os.path.getsize(paths[name]) / 1e6
                print(f"{size_mb:>5} MB {name:18} {mb:8.0f} {mb / seconds:7.2f} {peak / 2**20:6,.0f} MiB",
                      flush=True)
            for form in ("csv", "jsonl"):
                same = tokens[f"corpus.{form}"] == tokens[f"{form}_as_text.txt"]
                assert same, f"{size_mb} MB: the .{form} file's tokens differ from its plain text's"
            counts = tokens["corpus.csv"][0], tokens["corpus.jsonl"][0]
            print(f"{size_mb:>5} MB: tokens identical to the plain text's ({counts[0]:,} for the CSV, "
                  f"{counts[1]:,} for the JSON Lines)")


if __name__ == "__main__":
    main()
