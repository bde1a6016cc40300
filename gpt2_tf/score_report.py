"""score.py's outputs: the table, JSON, one TSV row per scored token, and a self-contained HTML page.

They read `gpt2_tf.score.Scored` results and the figures of `score.totals`, and need no TensorFlow.
"""

import html
import json
import math

from gpt2_tf.files import atomic_write
from gpt2_tf.token_text import quoted, spans, token_bytes, token_text

COLUMNS = ["tokens", "bytes", "words", "loss", "ppl", "bits/byte", "word ppl", "accuracy"]


def row_values(sums):
    """The table's cells for one row, from a dict with tokens, bytes, words and the figures."""
    def number(value, digits, scale=1, unit=""):
        return "-" if value is None else f"{scale * value:,.{digits}f}{unit}"

    return [number(sums["tokens"], 0), number(sums["bytes"], 0), number(sums["words"], 0),
            number(sums["loss"], 4), number(sums["ppl"], 3), number(sums["bpb"], 4),
            number(sums["word_ppl"], 3), number(sums["accuracy"], 2, 100, "%")]


def table(rows, total):
    """Lines of a table: [(name, sums)] rows then the TOTAL row, names left, numbers right."""
    cells = [(name, row_values(sums)) for name, sums in rows] + [("TOTAL", row_values(total))]
    name_width = max(len("document"), *(len(name) for name, _ in cells))
    widths = [max(len(c), *(len(values[i]) for _, values in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join([f"{'document':<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(COLUMNS, widths)])]
    lines += ["  ".join([f"{name:<{name_width}}"] + [f"{v:>{w}}" for v, w in zip(values, widths)])
              for name, values in cells]
    return lines


def task_table(task, rows, total=None):
    """Lines of a benchmark's table (score.py --task): [(file, tasks.summary)] rows, then TOTAL if given.
    Accuracies in percent, each with its standard error."""
    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    from gpt2_tf.tasks import multiple_choice

    names = ["acc", "acc_norm"] if multiple_choice(task) else ["acc"]
    extra = [] if multiple_choice(task) else ["ppl"]
    columns = ["items"] + [c for name in names for c in (name, "±")] + extra
    cells = [(name, [f"{figures['items']:,}"]
              + [percent(figures[k]) for n in names for k in (n, f"{n}_stderr")]
              + [f"{figures[k]:.3f}" for k in extra])
             for name, figures in rows + ([("TOTAL", total)] if total else [])]
    name_width = max(len(task), *(len(name) for name, _ in cells))
    widths = [max(len(c), *(len(values[i]) for _, values in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join([f"{task:<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(columns, widths)])]
    lines += ["  ".join([f"{name:<{name_width}}"] + [f"{v:>{w}}" for v, w in zip(values, widths)])
              for name, values in cells]
    return lines


def to_json(settings, documents, total):
    """The JSON of docs/score.md: settings (context, stride, prefix, ...), documents [(name, sums)], total."""
    keys = ("tokens", "bytes", "words", "nll", "correct")
    rows = [{"name": name, **{k: sums[k] for k in keys}} for name, sums in documents]
    return {**settings, "documents": rows, "total": total}


def write_json(path, data):
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")


def escaped(text):
    """A token's text on one TSV line: backslash, tab, newline and carriage return escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_tsv(path, scored, enc):
    """One row per scored token: document, position, id, token, logprob, rank, entropy (nats). The
    token's text is token_text's: bytes that are not whole characters alone written `\\xe8` (the
    text's own backslashes are doubled, so the two never meet)."""
    with atomic_write(path, encoding="utf-8") as f:
        f.write("document\tposition\tid\ttoken\tlogprob\trank\tentropy\n")
        for s in scored:
            for row in zip(s.positions, s.ids, s.logprob, s.rank, s.entropy):
                position, token, logprob, rank, entropy = row
                f.write(f"{s.document.name}\t{position}\t{token}\t{escaped_token(enc, token)}\t"
                        f"{logprob:.9g}\t{rank}\t{entropy:.6f}\n")


def escaped_token(enc, token):
    """A token's text for a TSV cell: the text's backslash, tab, newline and carriage return escaped,
    then its bytes that are no characters alone as `\\xe8`."""
    text = token_bytes(enc, token).decode("utf-8", errors="surrogateescape")  # such a byte: U+DC80 + it
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else escaped(c) for c in text)


def surprisal_colour(bits):
    """White at 0 bits of surprisal, deep red at 16 bits or more."""
    shade = min(bits / 16, 1.0)
    return f"rgb(255,{round(255 - 200 * shade)},{round(255 - 220 * shade)})"


def write_html(path, scored, enc, title):
    """Every scored token coloured by its surprisal; hovering shows its probability, rank and the top 5.
    The tokens of a split character are one piece of text, coloured by their summed surprisal, with
    each token's bytes and figures on hover."""
    parts = []
    for s in scored:
        pieces = []
        for span in spans(enc, s.ids):
            tips, bits = [], 0.0
            for i in range(span.start, span.stop):
                token_bits = -s.logprob[i] / math.log(2)
                bits += token_bits
                top = "\n".join(f"{quoted(token_text(enc, t))} {100 * p:.2f}%"
                                for t, p in zip(s.top_ids[i], s.top_probs[i]))
                label = quoted(token_text(enc, s.ids[i]))
                tips.append(f"{label}: p = {100 * math.exp(s.logprob[i]):.3g}%, {token_bits:.2f} bits, "
                            f"rank {s.rank[i]}\n{top}")
            pieces.append(f'<span style="background:{surprisal_colour(bits)}" '
                          f'title="{html.escape(chr(10).join(tips))}">{html.escape(span.text)}</span>')
        parts.append(f"<h2>{html.escape(s.document.name)}</h2><pre>{''.join(pieces)}</pre>")
    page = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>' + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}pre{white-space:pre-wrap;line-height:1.6}</style>"
            "</head><body>\n<h1>" + html.escape(title) + "</h1>\n<p>Each token's colour: its surprisal "
            "(white: certain, red: 16 bits or more). Hover over a token for its probability, rank and the "
            "model's top 5 (for a character split across tokens, each token's).</p>\n" + "\n".join(parts)
            + "\n</body></html>\n")
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
