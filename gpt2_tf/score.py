"""Scoring text: how well a model predicts it, token by token, with a sliding window.

`next_token_scores` is the one loss computation of the project: training's loss and validation, and
score.py, all call it. `score_documents` scores whole documents exactly: every token once, each with
as much context as the window allows (docs/score.md gives the definitions), and `totals` turns the
sums into the usual figures (loss, perplexity, bits per byte, word perplexity, accuracy).

Shapes: b windows, T positions, V n_vocab, k top tokens.
"""

import dataclasses
import math
import re

import numpy as np
import tensorflow as tf

from gpt2_tf import ops
from gpt2_tf.model import shape_list

TOP = 5  # top tokens kept per position with details


def next_token_scores(model, inputs, targets, details=False, training=False):
    """How well the model predicts targets[:, i] as the token after inputs[:, :i + 1] (`training`: the
    model as trained, its dropout on: LoRA's, lora.py).

    inputs, targets: [b, T] int32. Returns {"loss": -log p [b, T] float32, "correct": [b, T] bool,
    whether the target has the largest logit (ties count)}; with details also "rank" [b, T] int32
    (1 + the number of tokens with a larger logit), "entropy" [b, T] (nats), "top_ids" [b, T, k] and
    "top_probs" [b, T, k]. Unused outputs cost nothing in a compiled function.
    """
    logits = model(inputs, training=training)["logits"]
    batch, length, n_vocab = shape_list(logits)
    flat, labels = tf.reshape(logits, [-1, n_vocab]), tf.reshape(targets, [-1])
    picked = tf.gather(flat, labels, batch_dims=1)
    out = {"loss": ops.cross_entropy(flat, labels),
           "correct": picked >= tf.reduce_max(flat, axis=-1)}
    if details:
        log_p = tf.nn.log_softmax(flat)
        top = tf.math.top_k(log_p, k=min(TOP, n_vocab))
        out.update(rank=rank(flat, labels[:, None])[:, 0],
                   entropy=-tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1),
                   top_ids=top.indices, top_probs=tf.exp(top.values))
    return {name: tf.reshape(value, [batch, length, *value.shape[1:]]) for name, value in out.items()}


def window_scores(model, inputs, labels, training=False):
    """next_token_scores of predicting labels[:, 1:] from inputs[:, :-1]: each [b, T - 1].

    inputs, labels: [b, T] int32 (inputs are the possibly noised labels). Position i's target is
    label i + 1: the targets are the labels shifted one to the left, and the last position, which has
    no next label, gets the first one as a placeholder (the labels rotated), whose scores are dropped.
    So the logits of all T positions are used as they come: slicing the [b, T, V] logits to T - 1
    would copy them, and their gradient too.
    """
    targets = tf.roll(labels, shift=-1, axis=1)  # [labels[:, 1:], labels[:, :1]]
    scores = next_token_scores(model, inputs, targets, training=training)
    return {name: value[:, :-1] for name, value in scores.items()}


def loss_sum(model, inputs, labels, training=False):
    """Sum of the cross-entropies of predicting labels[:, 1:] from inputs[:, :-1] ([b, T] int32): a
    float32 scalar; divided by b * (T - 1) it is the original's loss (a mean over every position of
    every row). training: see next_token_scores."""
    return tf.reduce_sum(window_scores(model, inputs, labels, training)["loss"])


def rank(logits, ids):
    """1 + the number of tokens with larger logits than each of ids: logits [N, V], ids [N, W] -> [N, W]."""
    picked = tf.gather(logits, ids, batch_dims=1)  # [N, W]
    # Counted in float32 (exact below 2^24): TensorFlow's GPU kernels sum no int32 (it would run on the CPU).
    larger = tf.reduce_sum(tf.cast(logits[:, None, :] > picked[:, :, None], tf.float32), axis=-1)
    return 1 + tf.cast(larger, tf.int32)


# ---------------------------------------------------------------------------------------------------
# Windows.


@dataclasses.dataclass
class Window:
    """One window of a token sequence t: the inputs t[start:last] predict the targets t[first..last].

    weight: None, or (Hugging Face's loop) the count its mean loss is weighted by.
    """

    start: int
    first: int
    last: int
    weight: int = None


def windows(n, context, stride):
    """The windows that score t_1 .. t_n of t_0 .. t_n, each target once (docs/score.md).

    Window 1 scores t_1 .. t_e1 with e1 = min(C, n); window k scores t_(e(k-1)+1) .. t_ek with
    ek = min(e(k-1) + S, n), reading t_max(0, ek - C) .. t_(ek - 1).
    """
    found, end = [], 0
    while end < n:
        new_end = min(context if end == 0 else end + stride, n)
        found.append(Window(max(0, new_end - context), end + 1, new_end))
        end = new_end
    return found


def hf_windows(length, context, stride):
    """The windows of Hugging Face's perplexity guide over t_0 .. t_(length - 1) (docs/score.md).

    For begin = 0, S, 2S, ...: end = min(begin + C, length), trg_len = end - previous end; the window
    t[begin:end] scores its last trg_len labels, less the first position (the model shifts the labels),
    and its mean loss is weighted by trg_len - 1. It stops at the window that reaches the end.
    """
    found, previous = [], 0
    for begin in range(0, length, stride):
        end = min(begin + context, length)
        target_length = end - previous
        first = max(begin + 1, end - target_length)
        if first <= end - 1:
            found.append(Window(begin, first, end - 1, weight=target_length - 1))
        previous = end
        if end == length:
            break
    return found


# ---------------------------------------------------------------------------------------------------
# Documents.


@dataclasses.dataclass
class Document:
    """A text (or an .npz array) to score: its tokens, and its size in UTF-8 bytes and in words (None
    for token arrays, whose text is not known)."""

    name: str
    tokens: np.ndarray
    bytes: int = None
    words: int = None

    @classmethod
    def from_text(cls, name, text, encode):
        return cls(name, np.asarray(encode(text), np.int32), len(text.encode("utf-8")),
                   len(re.split(r"\s+", text)))


@dataclasses.dataclass
class Scored:
    """A document's sums: tokens scored (N), -log-likelihood in nats, targets that were the argmax (K);
    with details, the scored positions and their per-token values."""

    document: Document
    tokens: int
    nll: float
    correct: int
    positions: np.ndarray = None  # [N] index of each scored token in the sequence
    ids: np.ndarray = None
    logprob: np.ndarray = None
    rank: np.ndarray = None
    entropy: np.ndarray = None
    top_ids: np.ndarray = None
    top_probs: np.ndarray = None


def sequence(document, prefix, eot):
    """The token sequence t_0 .. t_n to score: <|endoftext|> then the document (prefix "eot"), or the
    document alone ("none")."""
    tokens = document.tokens.astype(np.int32)
    return np.concatenate([[eot], tokens]).astype(np.int32) if prefix == "eot" else tokens


def score_documents(model, documents, context, stride, prefix="eot", compat=None, batch_size=8,
                    details=False, progress=None, eot=50256, jit_compile=None):
    """Score each document with `model` (a GPT2, or the path of a LiteRT file); returns a list of
    `Scored`.

    prefix: "eot" or "none" (docs/score.md). compat "hf": Hugging Face's loop instead of ours. The
    windows of all documents are computed together, `batch_size` at a time, each padded to the next
    multiple of 16 (at most `context`), so short documents cost little. progress(n) is called with the
    number of targets of each batch done. eot: the id of <|endoftext|>.
    """
    sequences = [sequence(d, "none" if compat == "hf" else prefix, eot) for d in documents]
    work = []  # (document index, window)
    for i, seq in enumerate(sequences):
        if compat == "hf":
            work.extend((i, window) for window in hf_windows(len(seq), context, stride))
        else:
            work.extend((i, window) for window in windows(len(seq) - 1, context, stride))
    scorer = WindowScorer(model, context, batch_size, details, jit_compile)
    results = [dict(nll=0.0, tokens=0, correct=0, parts=[]) for _ in documents]
    for w, scores in scorer.run([(sequences[i], window) for i, window in work], progress):
        i, window = work[w]
        result = results[i]
        loss = scores["loss"].astype(np.float64)
        if window.weight is None:
            result["nll"] += float(loss.sum())
            result["tokens"] += len(loss)
        else:
            result["nll"] += float(loss.mean()) * window.weight
            result["tokens"] += window.weight
        result["correct"] += int(scores["correct"].sum())
        if details:
            result["parts"].append((np.arange(window.first, window.last + 1), scores))
    scored = []
    for document, seq, result in zip(documents, sequences, results):
        item = Scored(document, result["tokens"], result["nll"], result["correct"])
        if details:
            parts = sorted(result["parts"], key=lambda part: part[0][0])  # in the order of the text
            item.positions = np.concatenate([p for p, _ in parts]) if parts else np.zeros([0], np.int64)
            item.ids = seq[item.positions]
            for name in ("rank", "entropy", "top_ids", "top_probs"):
                setattr(item, name, np.concatenate([s[name] for _, s in parts]) if parts else None)
            item.logprob = -np.concatenate([s["loss"] for _, s in parts]) if parts else np.zeros([0])
        scored.append(item)
    return scored


class WindowScorer:
    """Scores windows of token sequences in batches of fixed shapes (compiled once per length)."""

    def __init__(self, model, context, batch_size=8, details=False, jit_compile=None):
        self.context = context
        self.batch_size = batch_size
        if isinstance(model, str):  # a LiteRT file's path: next_token_scores, as traced into it
            from gpt2_tf.litert_runtime import LiteRTScorer

            self._scores = LiteRTScorer(model, details)
            return
        self._scores = tf.function(lambda inputs, targets: next_token_scores(model, inputs, targets, details),
                                   jit_compile=jit_compile, reduce_retracing=True)

    def padded(self, length):
        """The length a window of `length` inputs is padded to: the next multiple of 16 (at most the
        context). Few lengths, so few compiled shapes, and little padding: HellaSwag's requests of 65 to
        80 tokens run 1.6x faster than padded to 128 (bench/tasks.py)."""
        return min(-(-length // 16) * 16, self.context)

    def run(self, windows, progress=None):
        """Yield (index, scores) for each of windows [(sequence, window)], in an order of its own: scores
        maps names to numpy arrays over the block's targets t[first..last]."""
        buckets = {}
        for index, (_, block) in enumerate(windows):
            buckets.setdefault(self.padded(block.last - block.start), []).append(index)
        for padded, indices in sorted(buckets.items()):
            for at in range(0, len(indices), self.batch_size):
                batch = indices[at:at + self.batch_size]
                inputs = np.zeros([self.batch_size, padded], np.int32)
                targets = np.zeros([self.batch_size, padded], np.int32)
                for row, index in enumerate(batch):
                    seq, block = windows[index]
                    window = seq[block.start:block.last + 1]
                    inputs[row, :len(window) - 1] = window[:-1]
                    targets[row, :len(window) - 1] = window[1:]
                scores = {name: np.asarray(value) for name, value in self._scores(inputs, targets).items()}
                for row, index in enumerate(batch):
                    block = windows[index][1]
                    picked = slice(block.first - 1 - block.start, block.last - block.start)
                    yield index, {name: value[row, picked] for name, value in scores.items()}
                if progress is not None:
                    progress(sum(windows[index][1].last - windows[index][1].first + 1 for index in batch))


# ---------------------------------------------------------------------------------------------------
# Figures.


def totals(scored):
    """The corpus figures: sums over documents, then ratios (never an average of per-document
    perplexities). bytes, words, bpb and word_ppl are None when a document has no text (.npz)."""
    tokens = sum(s.tokens for s in scored)
    nll = sum(s.nll for s in scored)
    correct = sum(s.correct for s in scored)
    text = all(s.document.bytes is not None for s in scored)
    size = sum(s.document.bytes for s in scored) if text else None
    words = sum(s.document.words for s in scored) if text else None
    return dict(tokens=tokens, bytes=size, words=words, nll=nll, correct=correct,
                **figures(tokens, nll, correct, size, words))


def figures(tokens, nll, correct, size=None, words=None):
    """loss (nats per token), ppl, bpb (bits per byte), word_ppl and accuracy from sums (None: undefined)."""
    loss = nll / tokens if tokens else None
    return {"loss": loss,
            "ppl": math.exp(min(loss, 700)) if tokens else None,
            "bpb": nll / (size * math.log(2)) if size else None,
            "word_ppl": math.exp(min(nll / words, 700)) if words else None,
            "accuracy": correct / tokens if tokens else None}


# ---------------------------------------------------------------------------------------------------
# Reading documents.


def load_documents(enc, files, text_format=None, encoding="utf-8", errors="strict", n_vocab=None,
                   bin_dtype="uint16", wanted=None):
    """The documents of `files` (see cli.input_files): each text file, or the documents of it that
    `text_format` gives (documents.TextFormat: .csv rows, .jsonl records, with line_by_line each line
    that is not blank), named FILE:LINE; each array of a token file (.npz, .bin; memory-mapped where the
    file allows, and its ids all checked, since every one will be read). Text is tokenized as encode.py
    does (a literal <|endoftext|> becomes its id), through tiktoken when it is installed. `wanted`, if
    given, is asked once for each document in turn whether to keep it (see dataset.load_dataset)."""
    from gpt2_tf.dataset import read_text
    from gpt2_tf.documents import TextFormat, documents, form
    from gpt2_tf.encoder import encode_with_eot
    from gpt2_tf.fast_encoder import fastest_encode
    from gpt2_tf.token_files import check_ids, is_token_file, read_tokens

    text_format = text_format or TextFormat()
    encode = fastest_encode(enc)

    def tokenize(text):
        return encode_with_eot(encode, text, enc.eot_token)

    def keep():
        return wanted is None or wanted()

    found = []
    for path in files:
        if is_token_file(path):
            for i, array in enumerate(read_tokens(path, n_vocab, bin_dtype)):
                name = path if path.endswith(".bin") else f"{path}[{i}]"
                if not keep():
                    continue
                if n_vocab is not None and isinstance(array, np.memmap):
                    check_ids(array, n_vocab, path, name)
                found.append(Document(name, array))
            continue
        blocks = read_text(path, encoding, errors, lambda size: None)
        whole = form(path, text_format) == "text"
        found += [Document.from_text(path if whole else f"{path}:{line}", text, tokenize)
                  for line, text in documents(path, blocks, text_format) if keep()]
    return found
