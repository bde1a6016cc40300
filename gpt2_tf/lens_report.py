"""The logit lens shown: terminal tables, JSON, a self-contained HTML page, and a PNG.

Everything here reads a `gpt2_tf.lens.Lens` and the `token_text.Labels` of its tokens (which show
byte-level tokens as the characters they form); nothing needs TensorFlow. `write_png` needs
matplotlib.
"""

import html
import json
import math

from gpt2_tf.files import atomic_write
from gpt2_tf.token_text import pad, quoted, width


def percent(p):
    """A probability as a percentage: one decimal from 0.1%, three below it, then `<0.001%`."""
    if p >= 0.001:
        return f"{100 * p:.1f}%"
    return f"{100 * p:.3f}%" if p >= 1e-5 else "<0.001%"


def nats(x):
    """A figure in nats with two decimals, the rounding's `-0.00` written `0.00`."""
    return f"{x + 0.0:.2f}".replace("-0.00", "0.00")


def layer_table(lens, labels):
    """One row per layer at lens.position: rank and probability of each watched token, entropy and KL
    (nats), then the top-k tokens with their probabilities. Returns the lines."""
    i = lens.position
    head = [f"Position {i}: {labels.at(i)}"
            + (f", followed by {labels.at(i + 1)}" if i + 1 < len(labels.tokens) else "")]
    watched = [labels.token(t) for t in lens.watch_ids]
    sizes = [max(width(w), 14) for w in watched]
    columns = (["layer"] + [pad(w, size) for w, size in zip(watched, sizes)]
               + ["entropy", "   KL", "top tokens"])
    lines = head + ["  ".join(columns)]
    for layer, name in enumerate(lens.layers):
        cells = [f"{name:<5}"]
        for j, size in enumerate(sizes):
            cells.append(pad(f"{lens.watch_rank[layer, j]} {percent(lens.watch_prob[layer, j]):>7}", size))
        cells.append(f"{nats(lens.entropy[layer, i]):>7}")
        cells.append(f"{nats(lens.kl_to_final[layer, i]):>5}")
        cells.append(" ".join(f"{labels.token(t)} {percent(p)}"
                              for t, p in zip(lens.top_ids[layer, i], lens.top_probs[layer, i])))
        lines.append("  ".join(cells))
    return lines


def rank_table(lens, labels, start):
    """The rank at every layer of each token from position start + 1 on (the generated ones): one
    column per token, as wide as its label, one row per layer. Returns the lines."""
    columns = range(start, len(labels.tokens) - 1)
    names = [labels.at(i + 1) for i in columns]
    sizes = [max(width(name), 6) for name in names]
    lines = ["Rank of each generated token at each layer (1: the layer's top prediction)",
             "layer " + "  ".join(pad(name, size) for name, size in zip(names, sizes))]
    for layer, name in enumerate(lens.layers):
        lines.append(f"{name:<6}" + "  ".join(f"{lens.rank_of_next[layer, i]:>{size}}"
                                              for i, size in zip(columns, sizes)))
    return lines


def to_json(lens, labels, prompt_length, final_norm):
    """The numbers of a lens as a JSON-friendly dict (the schema in docs/lens.md)."""
    last = len(labels.tokens) - 1
    return {
        "tokens": [int(t) for t in lens.tokens],
        "text": [labels.text(i) for i in range(len(labels.tokens))],
        "spans": [[span.start, span.stop, span.text] for span in labels.spans],
        "prompt_length": prompt_length,
        "final_ln": final_norm,
        "layers": list(lens.layers),
        "position": lens.position,
        "top_k": [[[[int(t), float(p)] for t, p in zip(ids, probs)]
                   for ids, probs in zip(layer_ids, layer_probs)]
                  for layer_ids, layer_probs in zip(lens.top_ids, lens.top_probs)],
        "rank_of_next": [[int(r) if i < last else None for i, r in enumerate(row)]
                         for row in lens.rank_of_next],
        "watch": {"text": [labels.token(t)[1:-1] for t in lens.watch_ids],
                  "ids": [int(t) for t in lens.watch_ids],
                  "rank": lens.watch_rank.tolist(), "prob": lens.watch_prob.tolist()},
        "entropy": lens.entropy.tolist(),
        "kl_to_final": lens.kl_to_final.tolist(),
    }


def write_json(path, data):
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")


def rank_colour(rank, n_vocab):
    """A colour for a rank on a log scale: dark blue for 1, white for n_vocab; grey where there is no
    rank (0: the last position, whose next token is not known)."""
    if rank <= 0:
        return "#ddd", "#000"
    shade = math.log(rank) / math.log(max(n_vocab, 2))
    r, g, b = (round(c + (255 - c) * shade) for c in (8, 48, 107))
    return f"rgb({r},{g},{b})", "#fff" if shade < 0.45 else "#000"


def write_html(path, lens, labels, n_vocab, title, prompt_length):
    """One self-contained page: the rank heatmap (layer x position, the top-1 token and the rank of the
    next token in each cell; hover for the top-k) and the ranks of the watched tokens. Above the
    positions, the text they spell: a split character's cell spans its tokens. No script, no external
    reference."""
    def cell(rank, text, layer, i, divider=False):
        background, colour = rank_colour(rank, n_vocab)
        top = "\n".join(f"{labels.token(t)} {percent(p)}"
                        for t, p in zip(lens.top_ids[layer, i], lens.top_probs[layer, i]))
        tip = f"layer {lens.layers[layer]}, position {i} ({labels.at(i)})\n{top}"
        line = ";border-left:3px solid #000" if divider else ""
        return (f'<td style="background:{background};color:{colour}{line}" title="{html.escape(tip)}">'
                f"{html.escape(text)}</td>")

    def next_row(layer):
        cells = []
        for i in positions:
            rank = int(lens.rank_of_next[layer, i])  # 0 at the last position: no next token
            text = labels.token(lens.top_ids[layer, i, 0]) + (f"\n#{rank}" if rank else "")
            cells.append(cell(rank, text, layer, i, divider=i == prompt_length - 1 and i > 0))
        return "".join(cells)

    def watch_row(layer):
        pairs = zip(lens.watch_rank[layer], lens.watch_prob[layer])
        return "".join(cell(rank, f"{rank} ({percent(p)})", layer, lens.position) for rank, p in pairs)

    positions = range(len(labels.tokens))
    spans = "".join(f'<th colspan="{s.stop - s.start}" title="{html.escape(tokens_tip(labels, s))}">'
                    f"{html.escape(s.text)}</th>" for s in labels.spans)
    tokens = "".join(f"<th>{html.escape(labels.text(i))} \u2192 "
                     f"{html.escape(labels.text(i + 1)) if i + 1 < len(positions) else '?'}</th>"
                     for i in positions)
    rows = [f"<tr><th>text</th>{spans}</tr>", f"<tr><th>layer</th>{tokens}</tr>"]
    rows += [f"<tr><th>{name}</th>{next_row(layer)}</tr>" for layer, name in enumerate(lens.layers)]
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Rank of the next token at each layer</h2>",
             "<p>Each cell: the layer's most probable next token and the rank of the actual next token "
             "(its colour: dark is 1, white is last; grey: the next token is not known). A black line "
             "divides the prompt from the generated tokens. Hover over a cell for the top tokens, over "
             "the text for each token's bytes.</p>", "<table>" + "".join(rows) + "</table>"]
    if lens.watch_ids:
        i = lens.position
        header = "".join(f"<th>{html.escape(labels.token(t))}</th>" for t in lens.watch_ids)
        rows = [f"<tr><th>layer</th>{header}</tr>"]
        rows += [f"<tr><th>{name}</th>{watch_row(layer)}</tr>" for layer, name in enumerate(lens.layers)]
        parts += [f"<h2>Watched tokens at position {i} ({html.escape(labels.at(i))})</h2>",
                  "<table>" + "".join(rows) + "</table>"]
    write_page(path, title, parts)


def tokens_tip(labels, span):
    """A span's tokens, one per line, with their ids and bytes (the hover text of a text cell)."""
    return "\n".join(f"token {i}: id {labels.tokens[i]}, {labels.bytes(i)!r}"
                     for i in range(span.start, span.stop))


def write_page(path, title, parts):
    """A self-contained HTML page of the given parts (HTML strings), written atomically."""
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-family:monospace;white-space:pre;"
             "text-align:center}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)


def tick_label(labels, i):
    """Position i's label on a figure's axis: its text, and below it its span's characters where the
    token is only part of them."""
    text, piece = quoted(labels.text(i))[1:-1], labels.piece(i)
    return text if piece is None else f"{text}\n({piece})"


def write_png(path, lens, labels, n_vocab, title, prompt_length):
    """The tutorial's figures in one image: the rank of the next token per layer and position (log
    colour scale; in each cell the layer's top token and the rank), a divider after the prompt, and
    the watched tokens' ranks per layer (or, without watched tokens, the top tokens' probabilities at
    lens.position per layer)."""
    import numpy as np
    from matplotlib.colors import LogNorm

    from gpt2_tf.figures import drawable, pyplot

    plt = pyplot()
    positions, n_layers = len(labels.tokens), len(lens.layers)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * positions) + 6, 0.5 * n_layers + 3),
                                   gridspec_kw={"width_ratios": [max(6.0, 1.1 * positions), 5]})
    ranks = np.where(lens.rank_of_next > 0, lens.rank_of_next, np.nan)  # grey where no next token
    image = ax.imshow(ranks, cmap="Blues_r", norm=LogNorm(vmin=1, vmax=n_vocab), aspect="auto")
    ax.set_facecolor("#ddd")
    for layer in range(n_layers):
        for i in range(positions):
            rank = lens.rank_of_next[layer, i]  # 0 at the last position: no next token
            dark = rank > 0 and math.log(rank) / math.log(n_vocab) < 0.45
            top = drawable(quoted(labels.token_text(lens.top_ids[layer, i, 0]))[1:-1][:10])
            ax.text(i, layer, top + (f"\n#{rank}" if rank else ""), ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")
    if 0 < prompt_length < positions:
        ax.axvline(prompt_length - 1.5, color="black", linewidth=2)
    ax.set_xticks(range(positions), [drawable(tick_label(labels, i)) for i in range(positions)], fontsize=8)
    ax.set_yticks(range(n_layers), lens.layers)
    ax.set_ylabel("layer")
    ax.set_xlabel("position (each column predicts the token after it)")
    ax.set_title("rank of the next token (in each cell: the layer's top token, #rank)")
    fig.colorbar(image, ax=ax, label="rank", fraction=0.03)
    at = lens.position
    if lens.watch_ids:
        for j, token in enumerate(lens.watch_ids):
            side.plot(lens.watch_rank[:, j], range(n_layers), marker="o", label=drawable(labels.token(token)))
        side.set_xscale("log")
        side.set_yticks(range(n_layers), lens.layers)
        side.set_xlabel("rank")
        side.set_title(drawable(f"watched tokens at position {at} ({quoted(labels.text(at))})"), fontsize=9)
        side.legend(fontsize=8)
    else:
        last = lens.top_probs[-1, at]
        side.barh(range(len(last)), 100 * last, color="#2b6cb0")
        names = [drawable(labels.token(t)) for t in lens.top_ids[-1, at]]
        side.set_yticks(range(len(last)), names, fontsize=8)
        side.set_xlabel("probability (%)")
        side.set_title(drawable(f"top tokens after position {at} ({quoted(labels.text(at))})"), fontsize=9)
    side.invert_yaxis()
    fig.suptitle(drawable(title))
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
