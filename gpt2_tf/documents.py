"""Documents in text files: the whole file, one per line, one per CSV row or one per JSON Lines record.

How a text file is read depends on its name and a flag (`TextFormat`):
- plain text (any other name): the whole file is one document, as in the original;
- plain text with `line_by_line`: each line that is not blank is a document (without its newline);
- `.csv`: one text per row, from the first column (or the one `column` names), the first row skipped as a
  header unless `header` is False; each text wrapped as gpt-2-simple wraps it, `start + text + end`
  (`<|startoftext|>` and `<|endoftext|>`);
- `.jsonl`: one JSON object per line, its `field` ("text") the document.

`documents(path, blocks, fmt)` yields a file's documents with the line each starts on. `joined(path,
blocks, fmt)` gives the text a training set is made of, as text blocks: a plain file's text as it is; a
CSV's rows as gpt-2-simple's `encode_csv` writes them (each wrapped text followed by a newline), so that
encoding a CSV gives the tokens of encoding the text file encode_csv writes from it; the other documents
separated by `<|endoftext|>`, as the documents of GPT-2's own training data are.

Reading streams: memory holds a block of text and the document being read, never the file. A row or a
line that cannot be read is a DatasetError naming the file and the line. This module does not import
TensorFlow.
"""

import collections
import csv
import json
import sys
from typing import NamedTuple

import numpy as np

from gpt2_tf.encoder import ENDOFTEXT
from gpt2_tf.token_files import DatasetError

STARTOFTEXT = "<|startoftext|>"
JOINED_SIZE = 1 << 16  # characters of documents joined into one block of text
HELD_OUT_FILE = "held_out.json"  # in a run's folder: the documents train.py --val_split holds out


class TextFormat(NamedTuple):
    """How text files are cut into documents (see the module's docstring)."""
    line_by_line: bool = False  # plain text files: one document per line
    column: str = "0"  # .csv: the column holding the texts, a name in the header or a number from 0
    header: bool = True  # .csv: the first row names the columns and holds no text
    start: str = STARTOFTEXT  # .csv: put before each text
    end: str = ENDOFTEXT  # .csv: put after each text
    field: str = "text"  # .jsonl: the field holding each record's text


def form(path, fmt):
    """How a file is read: "csv", "jsonl", "lines" (line_by_line plain text) or "text" (a whole document)."""
    name = str(path).lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".jsonl"):
        return "jsonl"
    return "lines" if fmt.line_by_line else "text"


def documents(path, blocks, fmt):
    """Yield (line, text) for each document of a file whose text comes as `blocks` (strings, newlines
    translated as text mode does); `line` is the number of the line it starts on, counting from 1.
    A plain text file, unless line_by_line, is one document on line 1."""
    kind = form(path, fmt)
    if kind == "text":
        yield 1, "".join(blocks)
    elif kind == "csv":
        yield from _csv_documents(path, _lines(blocks), fmt)
    else:
        for number, line in enumerate(_lines(blocks), 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            yield number, line if kind == "lines" else _json_text(path, number, line, fmt.field)


def joined(path, blocks, fmt, wanted=None):
    """The text of a file as a training set holds it, as blocks of text (see the module's docstring).
    `wanted`, if given, is called once for each document in turn; those for which it returns False are
    left out (a held-out split)."""
    kind = form(path, fmt)
    if kind == "text":
        if wanted is None or wanted():
            yield from blocks
        else:
            collections.deque(blocks, maxlen=0)  # read all the same, for the progress bar
        return
    parts, size, first = [], 0, True
    for _, text in documents(path, blocks, fmt):
        if wanted is not None and not wanted():
            continue
        if kind == "csv":
            parts.append(text + "\n")
        else:
            parts.append(text if first else ENDOFTEXT + text)
        first = False
        size += len(parts[-1])
        if size >= JOINED_SIZE:
            yield "".join(parts)
            parts, size = [], 0
    if parts:
        yield "".join(parts)


def held_out(n, fraction, seed):
    """The numbers (from 0, sorted) of the documents that a split of `fraction` holds out of `n`:
    max(1, round(fraction * n)) of them, at most n - 1, drawn by numpy's default_rng(seed). The same n,
    fraction and seed give the same documents, on any machine."""
    k = min(max(1, round(fraction * n)), n - 1)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))


class Numbered:
    """A `wanted` for joined and the dataset loaders: called once per document, in order, it says whether
    the document is one of `numbers` (with inside=True) or not one of them (inside=False). `count` is how
    many documents it was asked about."""

    def __init__(self, numbers, inside):
        self.numbers = set(numbers)
        self.inside = inside
        self.count = 0

    def __call__(self):
        number, self.count = self.count, self.count + 1
        return (number in self.numbers) == self.inside


def _lines(blocks):
    """The lines of a stream of text blocks, each with its newline (the last one may have none)."""
    start = []
    for block in blocks:
        lines = block.split("\n")
        if len(lines) == 1:
            start.append(block)
            continue
        start.append(lines[0])
        yield "".join(start) + "\n"
        for line in lines[1:-1]:
            yield line + "\n"
        start = [lines[-1]]
    last = "".join(start)
    if last:
        yield last


def _csv_documents(path, lines, fmt):
    """(line, start + text + end) for each row of a CSV file that holds a text."""
    csv.field_size_limit(sys.maxsize)  # a text may be longer than the module's 128 KiB default
    reader = csv.reader(lines, strict=True)
    column = None if fmt.header else _column_number(path, fmt.column, None)
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise DatasetError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
        if row is None:
            return
        if not row:
            continue  # a blank line
        if column is None:
            column = _column_number(path, fmt.column, row)
            continue
        if column >= len(row):
            raise DatasetError(f"{path} line {first}: the row has {len(row)} column"
                               f"{'' if len(row) == 1 else 's'}, no column {column} (counting from 0) to "
                               "read the text from; pick another with --csv_column")
        yield first, fmt.start + row[column] + fmt.end


def _column_number(path, column, header):
    """The number (from 0) of the column named `column` in the header row (a list, or None when the file
    has none), or numbered so."""
    if header is not None and column in header:
        return header.index(column)
    if column.isdigit():
        return int(column)
    known = f"its header names {', '.join(map(repr, header))}" if header is not None else \
        "it has no header (--csv_no_header): name the column by its number, from 0"
    raise DatasetError(f"{path}: no column {column!r} to read the texts from; {known}")


def _json_text(path, number, line, field):
    """The `field` string of one JSON Lines record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise DatasetError(f'{path} line {number}: expected an object with a "{field}" string (--json_field '
                           "names another field)")
    return record[field]
