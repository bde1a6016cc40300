#!/usr/bin/env python3
"""Encoding speed: encode.py against tiktoken's GPT-2 encoder, on the same text, in the same run.

A corpus of about --size_mb MB of varied text is put together from what is on the machine (Python
sources, man pages in several languages, /usr/share/doc) and generated multilingual prose, shuffled
with a fixed seed (repeated, reshuffled, past a few hundred MB). encode.py runs on it as a subprocess,
once per --jobs value, and its wall time and peak memory (sampled every 20 ms, and the kernel's figure
for the largest process) are measured. Then tiktoken, single-threaded, with the GPT-2 encoding built
from the same local vocabulary files, encodes the same text read as a stream, in pieces of about 1 MB
cut where its pre-tokenizer would cut; the tokens must be identical (compared by a hash, so that
neither side is held in memory here).

    python bench/encode.py                       # 200 MB
    python bench/encode.py --size_mb 4000        # a corpus bigger than the memory encode.py may use
    python bench/encode.py --size_mb 20 --jobs 1,2
"""

import argparse
import glob
import gzip
import hashlib
import os
import random
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import poll_memory  # noqa: E402

DEFAULT_VOCAB = os.environ.get("GPT2_VOCAB_DIR", os.path.join(ROOT, "..", "shared", "gpt2-vocab"))
# tiktoken's own pattern for GPT-2 (r50k_base), written differently from gpt2_tf's but equivalent.
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"

SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzàâçéèêëîïôûùüÿñäöß",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之"
           "过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如"
           "前所本见经头面公同三已老从动两长",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
            "アイウエオカキクケコ",
    "hangul": "가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह",
    "thai": "กขคงจฉชซญดตถทนบปผพฟภมยรลวสหอฮ",
    "emoji": "😀😂🥲😍🤔👍🏽🎉🔥🌍🚀",
}


def read_text(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (OSError, EOFError):
        return ""
    return "" if "\0" in text else text.replace(ENDOFTEXT, "<endoftext>")


SOURCE_LIMIT = 150_000_000  # characters taken from each source at most; the corpus repeats past that


def gather(patterns, budget, rng):
    """Texts from files matching the patterns, in random order, up to `budget` characters."""
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern, recursive=True)
                    if os.path.isfile(path)})
    rng.shuffle(paths)
    texts, size = [], 0
    for path in paths:
        if size >= budget:
            break
        text = read_text(path)
        if text:
            texts.append(text)
            size += len(text)
    return texts


def generated_prose(budget, rng):
    """Paragraphs of made-up words in many scripts, with a Zipf-like word frequency."""
    vocab = {name: ["".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(3000)]
             for name, letters in SCRIPTS.items()}
    weights = [1 / (rank + 1) for rank in range(3000)]
    texts, size = [], 0
    while size < budget:
        name = rng.choice(list(SCRIPTS))
        join = "" if name in ("cjk", "kana") else " "
        stop = "。" if name in ("cjk", "kana") else rng.choice([".", "!", "?", "...", ";"])
        sentences = []
        for _ in range(rng.randint(3, 30)):
            words = rng.choices(vocab[name], weights, k=rng.randint(3, 25))
            if rng.random() < 0.2:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**rng.randint(1, 7))))
            sentences.append(join.join(words).capitalize() + stop)
        text = " ".join(sentences) + "\n" * rng.randint(1, 3)
        texts.append(text)
        size += len(text)
    return texts


def corpus_texts(size_mb, seed=0):
    """Yield varied texts (source files, man pages, docs, made-up prose) until they hold about size_mb
    MB of UTF-8, each counted with the two newlines that make_corpus puts after it."""
    rng = random.Random(seed)
    budget = size_mb * 1_000_000
    stdlib = sysconfig.get_paths()["stdlib"]
    budget = min(budget, 4 * SOURCE_LIMIT)
    parts = (gather([os.path.join(stdlib, "**", "*.py")], 0.35 * budget, rng)
             + gather(["/usr/share/man/**/*.gz"], 0.25 * budget, rng)
             + gather(["/usr/share/doc/**/*"], 0.1 * budget, rng)
             + generated_prose(0.3 * budget * 0.6, rng))  # non-Latin characters take 2-4 bytes
    budget = size_mb * 1_000_000
    rng.shuffle(parts)
    written = 0
    while written < budget:  # repeat, reshuffled, if the machine has less text than asked for
        for text in parts:
            yield text
            written += len(text.encode("utf-8")) + 2
            if written >= budget:
                break
        rng.shuffle(parts)


def make_corpus(path, size_mb, seed=0):
    """Write about size_mb MB of varied UTF-8 text to `path`."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        for text in corpus_texts(size_mb, seed):
            f.write(text + "\n\n")
    return os.path.getsize(path)


def run_encode_py(corpus, out, vocab_dir, jobs, *flags):
    """Run encode.py; returns (seconds, peak RSS sampled every 20 ms, peak RSS from the kernel)."""
    command = [sys.executable, os.path.join(ROOT, "encode.py"), "--quiet", "--jobs", str(jobs),
               "--model_name", os.path.basename(vocab_dir), "--models_dir", os.path.dirname(vocab_dir),
               *flags, corpus, out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peaks, thread = poll_memory(process)
    process.wait()
    thread.join()
    seconds = time.perf_counter() - start
    if process.returncode:
        sys.exit(f"encode.py failed with exit code {process.returncode}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
    return seconds, peaks["VmRSS"] * 1024, largest if largest > before * 1024 else None


def tiktoken_gpt2(vocab_dir):
    """tiktoken's GPT-2 encoding, built from encoder.json (nothing is downloaded)."""
    import tiktoken

    from gpt2_tf.encoder import bytes_to_unicode, load_encoder_files

    encoder, _ = load_encoder_files(vocab_dir)
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_decoder[c] for c in symbol): token for symbol, token in encoder.items()
             if symbol != ENDOFTEXT}
    return tiktoken.Encoding("gpt2-bench", pat_str=TIKTOKEN_GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: encoder[ENDOFTEXT]})


def tiktoken_stream(corpus, encoding):
    """tiktoken's tokens of the corpus, read as encode.py reads it (universal newlines) in 1 MB pieces
    cut where the pre-tokenizer cuts: (seconds spent in tiktoken, token count, hash of the uint16 ids)."""
    from gpt2_tf.fast_encoder import Splitter

    splitter, digest, count, seconds = Splitter(1 << 20), hashlib.sha256(), 0, 0.0

    def encode(piece):
        nonlocal count, seconds
        start = time.perf_counter()
        tokens = encoding.encode_ordinary(piece)
        seconds += time.perf_counter() - start
        digest.update(np.array(tokens, dtype=np.uint16).tobytes())
        count += len(tokens)

    with open(corpus, encoding="utf-8") as f:
        while block := f.read(1 << 20):
            for piece in splitter.feed(block):
                encode(piece)
    rest = splitter.finish()
    if rest:
        encode(rest)
    return seconds, count, digest.hexdigest()


def npz_tokens(path):
    """(token count, hash of the uint16 ids) of an .npz file's arrays in order, read a block at a time."""
    from gpt2_tf.token_files import blocks_of, read_tokens

    digest, count = hashlib.sha256(), 0
    for array in read_tokens(path):
        for block in blocks_of(array):
            digest.update(np.asarray(block, np.uint16).tobytes())
        count += len(array)
    return count, digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_mb", type=int, default=200, help="corpus size in MB")
    parser.add_argument("--jobs", default=str(len(os.sched_getaffinity(0))),
                        help="comma-separated --jobs values to run encode.py with")
    parser.add_argument("--vocab_dir", default=DEFAULT_VOCAB, help="folder with encoder.json and vocab.bpe")
    parser.add_argument("--workdir", default=None,
                        help="where to put the corpus (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        corpus = os.path.join(work, "corpus.txt")
        start = time.perf_counter()
        n_bytes = make_corpus(corpus, args.size_mb)
        print(f"corpus: {n_bytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
        mb = n_bytes / 1e6

        results = []
        for jobs in [int(j) for j in args.jobs.split(",")]:
            out = os.path.join(work, f"out{jobs}.npz")
            seconds, peak, largest = run_encode_py(corpus, out, args.vocab_dir, jobs)
            results.append((jobs, seconds, peak, largest, out))

        encoding = tiktoken_gpt2(args.vocab_dir)
        tiktoken_seconds, count, expected = tiktoken_stream(corpus, encoding)

        print(f"{'':28} {'MB/s':>7} {'seconds':>8} {'peak RSS':>16} {'largest process':>16}")
        print(f"{'tiktoken encode_ordinary':28} {mb / tiktoken_seconds:7.2f} {tiktoken_seconds:8.1f}   "
              "(1 MB pieces, single thread, tokenizing only)")
        for jobs, seconds, peak, largest, out in results:
            same = npz_tokens(out) == (count, expected)
            assert same, f"encode.py --jobs {jobs}: tokens differ from tiktoken's"
            largest = f"{largest / 2**20:,.0f} MiB" if largest else "n/a"
            print(f"{f'encode.py --jobs {jobs}':28} {mb / seconds:7.2f} {seconds:8.1f} "
                  f"{peak / 2**20:12,.0f} MiB {largest:>16}   "
                  f"ratio {tiktoken_seconds / seconds:.2f}")
        print(f"tokens identical ({count:,} tokens). ratio: encode.py's throughput over tiktoken's; "
              "encode.py's times include start-up, reading the file and writing the .npz file")


if __name__ == "__main__":
    main()
