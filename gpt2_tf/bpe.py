"""Learning a byte-level BPE vocabulary of one's own, in GPT-2's file formats.

Text is cut into pieces by GPT-2's pre-tokenizer (`gpt2_tf.encoder.PAT`) and the pieces are counted; the
memory this takes is that of the distinct pieces, not of the text. Each distinct piece is a "word": the
sequence of its bytes, as symbols. Training then repeats one step: the pair of adjacent symbols that occurs
most often, counted over all words times their counts, is merged into one new symbol everywhere.

Ties are broken as Hugging Face tokenizers' BPE trainer breaks them: among pairs of equal count, the one
with the smallest (left id, right id) is merged first. The 256 byte symbols have ids 0..255 in the order of
GPT-2's encoder.json (sorted by character), and each new symbol takes the next id. A merge whose result is
a symbol that already exists (made earlier from another pair) reuses that symbol, as Hugging Face does.

The result is written as `encoder.json` and `vocab.bpe`, which `gpt2_tf.encoder.get_encoder`, and so
encode.py, train.py and sample.py, read as they read GPT-2's own. This module does not import TensorFlow.
"""

import collections
import heapq
import json
import os
import time

from tqdm import tqdm

from gpt2_tf.dataset import PIECE_SIZE, DatasetError, check_decoding, list_inputs, read_text, text_work
from gpt2_tf.documents import TextFormat, joined
from gpt2_tf.encoder import ENDOFTEXT, PAT, bytes_to_unicode
from gpt2_tf.fast_encoder import Splitter
from gpt2_tf.files import atomic_write, nearest_existing, unwritable
from gpt2_tf.hparams import HParams, save_hparams

VERSION_LINE = "#version: 0.2"


def byte_symbols():
    """The 256 byte symbols in the order of their ids (0..255) in GPT-2's encoder.json: by character."""
    return sorted(bytes_to_unicode().values())


def _byte_ids():
    """A `bytes.translate` table from each byte to the id of its symbol."""
    ids = {symbol: i for i, symbol in enumerate(byte_symbols())}
    return bytes(ids[bytes_to_unicode()[b]] for b in range(256))


def count_words(texts, counts=None):
    """Count the pieces GPT-2's pre-tokenizer cuts each text into; returns a Counter (`counts`, updated)."""
    counts = collections.Counter() if counts is None else counts
    for text in texts:
        counts.update(PAT.findall(text))
    return counts


def _file_texts(paths, encoding, errors, on_read, text_format):
    """The text of the files, in pieces that the pre-tokenizer cuts as it cuts the whole.

    Files are read in blocks, as the training data loader reads them (documents.joined: .csv and .jsonl
    files by rows), and each `<|endoftext|>` is taken out (there it is a token of its own), so that no
    merges are spent on it.
    """
    splitter = Splitter(PIECE_SIZE)
    for path in paths:
        blocks = joined(path, read_text(path, encoding, errors, on_read), text_format)
        for kind, text in text_work(blocks, splitter, eot=True):
            if kind == "text":
                yield text


def count_files(paths, encoding="utf-8", errors="strict", progress=False, text_format=None):
    """Count the pre-tokenizer pieces of text files (a list of paths; `text_format`, a
    documents.TextFormat, says how they are cut into documents); returns a Counter."""
    check_decoding(encoding, errors)
    total = sum(os.path.getsize(path) for path in paths if os.path.isfile(path))
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="Counting",
              disable=not progress, dynamic_ncols=True) as bar:
        return count_words(_file_texts(paths, encoding, errors, bar.update, text_format or TextFormat()))


def _merge_word(word, a, b, c):
    """Replace each pair (a, b) of `word` (a list of ids), left to right, by c.

    Returns the new word, the pairs it lost and the pairs it gained (with repeats, and leaving out the
    pair (a, b) itself); or None if the pair does not occur.
    """
    out, lost, made = [], [], []
    i, last = 0, len(word) - 1
    while i < last:
        try:
            j = word.index(a, i, last)
        except ValueError:
            break
        if word[j + 1] != b:
            out += word[i:j + 1]
            i = j + 1
            continue
        out += word[i:j]
        if out:
            lost.append((out[-1], a))
            made.append((out[-1], c))
        if j + 2 <= last:
            lost.append((b, word[j + 2]))
            made.append((c, word[j + 2]))
        out.append(c)
        i = j + 2
    if len(out) == i:  # each merge puts one symbol for two: nothing was merged
        return None
    out += word[i:]
    return out, lost, made


def learn_merges(word_counts, vocab_size, min_frequency=2, progress=False):
    """Learn BPE merges from a {piece: count} mapping; returns the list of (first, second) symbol pairs.

    Merging stops when the vocabulary (256 bytes, the merged symbols and `<|endoftext|>`) has `vocab_size`
    entries, or when no pair occurs `min_frequency` times. Pair counts are kept up to date as words
    change, with an index from each pair to the words that hold it and a heap of (count, pair); an entry
    whose count is out of date is put back with its current count when it comes to the top.
    """
    words, counts, pair_counts, where = _pair_index(word_counts)
    heap = [(-n, pair) for pair, n in pair_counts.items() if n >= min_frequency]
    heapq.heapify(heap)

    symbols = byte_symbols()
    ids = {symbol: i for i, symbol in enumerate(symbols)}
    merges = []
    bar = tqdm(total=max(0, vocab_size - 1 - len(symbols)), desc="Merging", disable=not progress,
               dynamic_ncols=True)
    with bar:
        while heap and len(symbols) < vocab_size - 1:
            negative, pair = heapq.heappop(heap)
            n = pair_counts.get(pair, 0)
            if n != -negative:
                if n >= min_frequency:
                    heapq.heappush(heap, (-n, pair))
                continue
            a, b = pair
            merged = symbols[a] + symbols[b]
            c = ids.get(merged)
            if c is None:
                c = ids[merged] = len(symbols)
                symbols.append(merged)
                bar.update()
            merges.append((symbols[a], symbols[b]))
            grown = set()
            for i in set(where.pop(pair)):
                result = _merge_word(words[i], a, b, c)
                if result is None:  # the index may name words that have lost the pair since
                    continue
                words[i], lost, made = result
                n = counts[i]
                for changed in lost:
                    pair_counts[changed] -= n
                for changed in made:
                    pair_counts[changed] += n
                    where[changed].append(i)
                grown.update(made)
            del pair_counts[pair]
            for changed in grown:
                if pair_counts[changed] >= min_frequency:
                    heapq.heappush(heap, (-pair_counts[changed], changed))
    return merges


def _pair_index(word_counts):
    """(words as lists of byte ids, their counts, {pair: count}, {pair: indices of the words that hold
    it}) of the pieces of more than one byte."""
    table = _byte_ids()
    words, counts = [], []
    for piece, n in word_counts.items():
        word = piece.encode("utf-8").translate(table)
        if len(word) > 1:
            words.append(list(word))
            counts.append(n)
    pair_counts = collections.defaultdict(int)
    where = collections.defaultdict(list)  # lists hold repeats, but take less memory and time than sets
    for i, (word, n) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += n
        for pair in set(zip(word, word[1:])):
            where[pair].append(i)
    return words, counts, pair_counts, where


def build_encoder(merges):
    """encoder.json's mapping: the byte symbols, then each new symbol of `merges`, then `<|endoftext|>`."""
    encoder = {symbol: i for i, symbol in enumerate(byte_symbols())}
    for first, second in merges:
        encoder.setdefault(first + second, len(encoder))
    encoder[ENDOFTEXT] = len(encoder)
    return encoder


def _write_atomic(path, data):
    """Write bytes to `path` atomically (see gpt2_tf.files)."""
    with atomic_write(path) as f:
        f.write(data)


def save_vocabulary(directory, encoder, merges):
    """Write encoder.json and vocab.bpe into `directory` in the formats of GPT-2's files."""
    # json.dumps's defaults give the released file's layout: ASCII with \\u escapes, ", " and ": ".
    _write_atomic(os.path.join(directory, "encoder.json"), json.dumps(encoder).encode("ascii"))
    lines = [VERSION_LINE] + [f"{first} {second}" for first, second in merges]
    _write_atomic(os.path.join(directory, "vocab.bpe"), ("\n".join(lines) + "\n").encode("utf-8"))


def check_output_folder(out, force=False):
    """Raise DatasetError now, before the training, if the folder `out` cannot be made or written, or
    already holds a vocabulary (datasets encoded with it would no longer match it) and not `force`."""
    if os.path.exists(os.path.join(out, "checkpoint")):
        raise DatasetError(f"{out} holds a trained model (it has a checkpoint); choose a new folder")
    held = [name for name in ("encoder.json", "vocab.bpe") if os.path.exists(os.path.join(out, name))]
    if held and not force:
        raise DatasetError(f"{out} already holds a vocabulary ({held[0]}): datasets encoded with it would no "
                           "longer match; choose a new folder, or pass --force to replace it")
    existing = nearest_existing(out)
    if existing == os.path.abspath(out) and not os.path.isdir(existing):
        raise DatasetError(f"{out} is a file, not a folder; give a folder to write the vocabulary into")
    if not os.path.isdir(existing):
        raise DatasetError(f"cannot write to {out}: {existing} is a file, not a folder")
    problem = unwritable(existing)
    if problem:
        raise DatasetError(f"cannot write to {out}: {problem}")


def train_bpe(corpus, out, vocab_size, min_frequency=2, encoding="utf-8", errors="strict", hparams=None,
              progress=True, skipped=(), force=False, text_format=None):
    """What train_bpe.py does: learn a vocabulary from text files and write it into the folder `out`.

    Args:
        corpus: a file, folder or glob pattern (see `gpt2_tf.dataset.list_files`), or a list of them.
            Files found in folders or by patterns that are clearly not text are skipped.
        out: the model folder to write encoder.json, vocab.bpe and hparams.json into (created if needed).
        vocab_size: the number of token ids, `<|endoftext|>` included (GPT-2 has 50,257); at least 257.
        min_frequency: pairs that occur fewer times are never merged, even if the vocabulary is then
            smaller than `vocab_size`.
        encoding, errors: how the files are decoded (errors: 'strict' or 'replace').
        hparams: other fields of hparams.json (n_ctx, n_embd, n_head, n_layer), as a dict.
        progress: show progress bars on stderr.
        skipped: files the caller's own listing left out as not text, to be counted with those left
            out here.
        force: replace a vocabulary that `out` already holds (refused otherwise).
        text_format: how text files are cut into documents (documents.TextFormat; .csv and .jsonl files
            are read by rows, their texts counted, not their syntax).

    Returns a one-line summary. Problems with the input, output or arguments raise DatasetError with a
    one-line message.
    """
    start = time.time()
    if vocab_size < 257:
        raise DatasetError(f"vocab_size must be at least 257 (256 bytes and {ENDOFTEXT}), not {vocab_size}")
    if min_frequency < 1:
        raise DatasetError(f"min_frequency must be at least 1, not {min_frequency}")
    try:
        model = HParams(n_vocab=vocab_size, **(hparams or {}))
    except (TypeError, ValueError) as e:
        raise DatasetError(str(e)) from None
    corpus = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    check_decoding(encoding, errors)
    skipped = list(skipped)
    paths = list_inputs(corpus, encoding, skipped)
    check_output_folder(out, force)

    counts = count_files(paths, encoding, errors, progress, text_format)
    if not counts:
        where = paths[0] if len(paths) == 1 else f"any of the {len(paths)} input files"
        raise DatasetError(f"no text in {where}: the input is empty")
    merges = learn_merges(counts, vocab_size, min_frequency, progress)
    encoder = build_encoder(merges)
    model.n_vocab = len(encoder)
    try:
        os.makedirs(out, exist_ok=True)
        save_vocabulary(out, encoder, merges)
        save_hparams(model, os.path.join(out, "hparams.json"))
    except OSError as e:
        raise DatasetError(f"cannot write to {out}: {e.strerror}") from None

    n_bytes = sum(os.path.getsize(path) for path in paths if os.path.isfile(path))
    files = f"{len(paths):,} files" + (f" ({len(skipped):,} more skipped as not text)" if skipped else "")
    summary = (f"{files}, {n_bytes:,} bytes, {len(counts):,} distinct pieces: "
               f"{len(merges):,} merges, {len(encoder):,} tokens in {time.time() - start:.1f} s; "
               f"wrote encoder.json, vocab.bpe and hparams.json to {out}")
    if len(encoder) < vocab_size:
        summary += (f" (not {vocab_size:,} tokens: no more pairs occur {min_frequency} times or more; "
                    f"hparams.json has n_vocab {len(encoder):,})")
    return summary
