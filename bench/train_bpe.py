#!/usr/bin/env python3
"""Benchmark of train_bpe.py against Hugging Face tokenizers' byte-level BPE trainer.

    python bench/train_bpe.py                 # a 50 MB corpus, half English, half Chinese
    python bench/train_bpe.py --size_mb 5 --vocab_size 8000

The corpus is gathered from text on the machine: English from Python's documentation topics and the
text files in /usr/share/doc; Chinese from the zh_CN and zh_TW message catalogs in /usr/share/locale and
the Chinese samples of Python's test suite, repeated in shuffled order to fill its half. Every 20th
paragraph is held out of the corpus for measuring tokens per character.

Both trainers read the same files with the same pre-tokenizer and settings; the throughput is corpus
megabytes over wall-clock seconds, and the ratio is theirs over ours. Then the merges are compared, and
tokens per character on the held-out English and Chinese text are shown for the new vocabulary and for
GPT-2's.
"""

import argparse
import gettext
import glob
import gzip
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_tf.bpe import build_encoder, count_files, learn_merges, save_vocabulary  # noqa: E402
from gpt2_tf.dataset import list_files  # noqa: E402
from gpt2_tf.encoder import Encoder, get_encoder, load_encoder_files  # noqa: E402

FILE_CHARS = 1 << 20  # characters per corpus file
HELD_OUT = 20  # one paragraph in this many is kept for measuring
EVAL_CHARS = 300_000  # at most this much held-out text per language
MAX_FROM_ONE_FILE = 1 << 20  # characters of English taken from one documentation file


def paragraphs(text):
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


def english_texts():
    """Texts in English: Python's pydoc topics, then the documentation files of installed packages."""
    from pydoc_data.topics import topics
    yield from topics.values()
    for path in sorted(glob.glob("/usr/share/doc/**/*", recursive=True)):
        name = os.path.basename(path)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        if not (name.endswith((".txt", ".md", ".rst", ".gz")) or "." not in name):
            continue
        try:
            data = gzip.open(path).read() if name.endswith(".gz") else open(path, "rb").read()
            yield data.decode("utf-8")[:MAX_FROM_ONE_FILE]
        except (OSError, UnicodeDecodeError, EOFError):
            continue


def chinese_texts():
    """Texts in Chinese: translated program messages, and the Chinese samples of Python's tests."""
    for path in sorted(glob.glob("/usr/share/locale/zh_*/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        yield "\n\n".join(value for key, value in catalog.items() if key and isinstance(value, str))
    samples = os.path.join(sysconfig.get_paths()["stdlib"], "test", "cjkencodings")
    for name in ["gb2312", "gbk", "gb18030", "big5", "hz"]:
        path = os.path.join(samples, f"{name}-utf8.txt")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                yield f.read()


def gather(texts, size, rng):
    """(paragraphs for the corpus, held-out text): `size` bytes, repeated in shuffled order if needed."""
    train, held, total = [], [], 0
    for text in texts:
        for paragraph in paragraphs(text):
            if len(held) * HELD_OUT <= len(train):
                held.append(paragraph)
            else:
                train.append(paragraph)
                total += len(paragraph.encode("utf-8")) + 2
        if total >= size:
            break
    if not train:
        return [], ""
    out, filled = [], 0
    while filled < size:
        batch = train[:]
        rng.shuffle(batch)
        for paragraph in batch:
            out.append(paragraph)
            filled += len(paragraph.encode("utf-8")) + 2
            if filled >= size:
                break
    return out, "\n\n".join(held)[:EVAL_CHARS]


def write_corpus(directory, size, seed):
    """Write the corpus as files of about FILE_CHARS characters; returns the held-out texts by language."""
    rng = random.Random(seed)
    english, english_eval = gather(english_texts(), size // 2, rng)
    chinese, chinese_eval = gather(chinese_texts(), size - size // 2, rng)
    if not english or not chinese:
        sys.exit("bench: not enough English or Chinese text found on this machine")
    os.makedirs(directory, exist_ok=True)
    n = 0
    for language, paras in [("en", english), ("zh", chinese)]:
        part, chars = [], 0
        for i, paragraph in enumerate(paras):
            part.append(paragraph)
            chars += len(paragraph)
            if chars >= FILE_CHARS or i == len(paras) - 1:
                with open(os.path.join(directory, f"{language}_{n:04d}.txt"), "w", encoding="utf-8") as f:
                    f.write("\n\n".join(part) + "\n")
                n += 1
                part, chars = [], 0
    return {"English": english_eval, "Chinese": chinese_eval}


def train_ours(paths, out, vocab_size, min_frequency):
    start = time.time()
    counts = count_files(paths)
    counted = time.time()
    merges = learn_merges(counts, vocab_size, min_frequency)
    encoder = build_encoder(merges)
    save_vocabulary(out, encoder, merges)
    end = time.time()
    return merges, len(counts), counted - start, end - counted


def train_hf(paths, out, vocab_size, min_frequency):
    """Hugging Face's trainer, set up as GPT-2's byte-level BPE: same regex, no prefix space."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def texts():
        for path in paths:
            with open(path, encoding="utf-8") as f:
                yield f.read()

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # No special tokens: the byte symbols then have ids 0..255 in GPT-2's order, and `<|endoftext|>` is
    # left for the last id, as train_bpe.py does.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.time()
    tokenizer.train_from_iterator(texts(), trainer)
    seconds = time.time() - start
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size_mb", type=float, default=50, help="corpus size, half English, half Chinese")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--gpt2_vocab", default=os.path.join(ROOT, "..", "shared", "gpt2-vocab"),
                        help="folder of GPT-2's encoder.json and vocab.bpe, for comparison")
    parser.add_argument("--workdir", help="where to write the corpus and vocabularies (default: a "
                                          "temporary folder, deleted at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_hf", action="store_true", help="do not run Hugging Face's trainer")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-train-bpe-")
    try:
        run(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, workdir):
    size = int(args.size_mb * 1e6)
    corpus = os.path.join(workdir, "corpus")
    print(f"Writing a {size / 1e6:.0f} MB corpus to {corpus}", flush=True)
    held_out = write_corpus(corpus, size, args.seed)
    paths = list_files(corpus)
    n_bytes = sum(os.path.getsize(p) for p in paths)
    mb = n_bytes / 1e6
    print(f"{len(paths)} files, {mb:.1f} MB; vocab_size {args.vocab_size}, "
          f"min_frequency {args.min_frequency}")

    ours_dir = os.path.join(workdir, "ours")
    os.makedirs(ours_dir, exist_ok=True)
    merges, n_words, count_s, merge_s = train_ours(paths, ours_dir, args.vocab_size, args.min_frequency)
    ours_s = count_s + merge_s
    print(f"train_bpe:     {ours_s:7.1f} s  {mb / ours_s:6.2f} MB/s  (counting {count_s:.1f} s, "
          f"{n_words:,} distinct pieces; merging {merge_s:.1f} s, {len(merges):,} merges)")
    if not args.no_hf:
        hf_dir = os.path.join(workdir, "hf")
        os.makedirs(hf_dir, exist_ok=True)
        hf_merges, hf_s = train_hf(paths, hf_dir, args.vocab_size, args.min_frequency)
        print(f"HF tokenizers: {hf_s:7.1f} s  {mb / hf_s:6.2f} MB/s  ({os.cpu_count()} cores available)")
        print(f"ratio:         HF tokenizers is {ours_s / hf_s:.2f}x the speed of train_bpe")
        same = next((i for i, (x, y) in enumerate(zip(merges, hf_merges)) if x != y), None)
        if same is None and len(merges) == len(hf_merges):
            print(f"merges: identical ({len(merges):,})")
        else:
            where = same if same is not None else min(len(merges), len(hf_merges))
            print(f"merges: differ from merge {where:,} on ({len(merges):,} ours, {len(hf_merges):,} HF)")

    ours = get_encoder("ours", workdir)
    gpt2 = Encoder(*load_encoder_files(args.gpt2_vocab))
    print(f"\ntokens per character on held-out text ({len(ours.encoder):,}-token vocabulary vs GPT-2's)")
    print(f"{'':10}{'chars':>10}{'ours':>8}{'GPT-2':>8}")
    for language, text in held_out.items():
        print(f"{language:10}{len(text):>10,}{len(ours.encode(text)) / len(text):>8.3f}"
              f"{len(gpt2.encode(text)) / len(text):>8.3f}")


if __name__ == "__main__":
    main()
