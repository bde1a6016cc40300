"""The logit lens shown: terminal tables, JSON, a self-contained HTML page, and a PNG.

Everything here reads a `gpt2_tf.lens.Lens`, the decoded text of its tokens (`texts`), and
`decode(id) -> text` for the top tokens; nothing needs TensorFlow. `write_png` needs matplotlib.
"""

import html
import json
import math

from gpt2_tf.files import atomic_write


def show(text):
    """A token's text as it reads in a table: quoted, with newlines and other controls escaped."""
    return repr(text)


def percent(p):
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.0e}%"


def layer_table(lens, texts, watch_texts, decode):
    """One row per layer at lens.position: rank and probability of each watched token, entropy and KL
    (nats), then the top-k tokens with their probabilities. decode(id) -> text. Returns the lines."""
    i = lens.position
    head = [f"Position {i}: {show(texts[i])}"
            + (f", followed by {show(texts[i + 1])}" if i + 1 < len(texts) else "")]
    columns = ["layer"] + [f"{show(w)[:14]:>14}" for w in watch_texts] + ["entropy", "   KL", "top tokens"]
    lines = head + ["  ".join(columns)]
    for layer, name in enumerate(lens.layers):
        cells = [f"{name:<5}"]
        for j in range(len(watch_texts)):
            cells.append(f"{lens.watch_rank[layer, j]:>6} {percent(lens.watch_prob[layer, j]):>7}")
        cells.append(f"{lens.entropy[layer, i]:7.2f}")
        cells.append(f"{lens.kl_to_final[layer, i]:5.2f}")
        cells.append(" ".join(f"{show(decode(int(t)))} {percent(p)}"
                              for t, p in zip(lens.top_ids[layer, i], lens.top_probs[layer, i])))
        lines.append("  ".join(cells))
    return lines


def rank_table(lens, texts, start):
    """The rank at every layer of each token from position start + 1 on (the generated ones): one
    column per token, one row per layer. Returns the lines."""
    width = 10
    columns = range(start, len(texts) - 1)
    lines = ["Rank of each generated token at each layer (1: the layer's top prediction)",
             "layer " + "".join(f"{show(texts[i + 1])[:width - 1]:>{width}}" for i in columns)]
    for layer, name in enumerate(lens.layers):
        lines.append(f"{name:<6}" + "".join(f"{lens.rank_of_next[layer, i]:>{width}}" for i in columns))
    return lines


def to_json(lens, texts, watch_texts, prompt_length, final_norm):
    """The numbers of a lens as a JSON-friendly dict (the schema in docs/lens.md)."""
    last = len(texts) - 1
    return {
        "tokens": [int(t) for t in lens.tokens],
        "text": list(texts),
        "prompt_length": prompt_length,
        "final_ln": final_norm,
        "layers": list(lens.layers),
        "position": lens.position,
        "top_k": [[[[int(t), float(p)] for t, p in zip(ids, probs)]
                   for ids, probs in zip(layer_ids, layer_probs)]
                  for layer_ids, layer_probs in zip(lens.top_ids, lens.top_probs)],
        "rank_of_next": [[int(r) if i < last else None for i, r in enumerate(row)]
                         for row in lens.rank_of_next],
        "watch": {"text": list(watch_texts), "ids": [int(t) for t in lens.watch_ids],
                  "rank": lens.watch_rank.tolist(), "prob": lens.watch_prob.tolist()},
        "entropy": lens.entropy.tolist(),
        "kl_to_final": lens.kl_to_final.tolist(),
    }


def write_json(path, data):
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")


def rank_colour(rank, n_vocab):
    """A colour for a rank on a log scale: dark blue for 1, white for n_vocab."""
    shade = math.log(max(rank, 1)) / math.log(max(n_vocab, 2))
    r, g, b = (round(c + (255 - c) * shade) for c in (8, 48, 107))
    return f"rgb({r},{g},{b})", "#fff" if shade < 0.45 else "#000"


def write_html(path, lens, texts, watch_texts, decode, n_vocab, title):
    """One self-contained page: the rank heatmap (layer x position, the top-1 token in each cell; hover
    for the top-k) and the ranks of the watched tokens. No script, no external reference."""
    def cell(rank, text, layer, i):
        background, colour = rank_colour(rank, n_vocab)
        top = "\n".join(f"{show(decode(int(t)))} {percent(p)}"
                        for t, p in zip(lens.top_ids[layer, i], lens.top_probs[layer, i]))
        tip = f"layer {lens.layers[layer]}, position {i} ({show(texts[i])})\n{top}"
        return (f'<td style="background:{background};color:{colour}" title="{html.escape(tip)}">'
                f"{html.escape(text)}</td>")

    def table(header, row):
        rows = ["<tr><th>layer</th>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        rows += [f"<tr><th>{name}</th>{row(layer)}</tr>" for layer, name in enumerate(lens.layers)]
        return "<table>" + "".join(rows) + "</table>"

    def next_row(layer):
        tops = (show(decode(int(t))) for t in lens.top_ids[layer, :, 0])
        return "".join(cell(lens.rank_of_next[layer, i], top, layer, i) for i, top in zip(positions, tops))

    def watch_row(layer):
        pairs = zip(lens.watch_rank[layer], lens.watch_prob[layer])
        return "".join(cell(rank, f"{rank} ({percent(p)})", layer, lens.position) for rank, p in pairs)

    positions = range(len(texts) - 1)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Rank of the next token at each layer</h2>",
             "<p>Each cell: the layer's most probable next token; its colour: the rank of the actual next "
             "token (dark: 1, white: last). Hover over a cell for the top tokens.</p>",
             table([f"{show(texts[i])} \u2192 {show(texts[i + 1])}" for i in positions], next_row)]
    if watch_texts:
        i = lens.position
        parts += [f"<h2>Watched tokens at position {i} ({html.escape(show(texts[i]))})</h2>",
                  table([show(w) for w in watch_texts], watch_row)]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-family:monospace;white-space:pre;"
             "text-align:center}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)


def write_png(path, lens, texts, watch_texts, decode, n_vocab, title):
    """The tutorial's two figures in one image: the ranks of the next token per layer and position
    (log colour scale, the top-1 token in each cell), and the ranks of the watched tokens per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    positions = len(texts) - 1
    panels = 2 if watch_texts else 1
    fig, axes = plt.subplots(1, panels, squeeze=False, figsize=(max(6, 1.1 * positions) + 5 * (panels - 1),
                                                               0.45 * len(lens.layers) + 2.5))
    ax = axes[0, 0]
    ranks = lens.rank_of_next[:, :positions]
    image = ax.imshow(ranks, cmap="Blues_r", norm=LogNorm(vmin=1, vmax=n_vocab), aspect="auto")
    for layer in range(len(lens.layers)):
        for i in range(positions):
            dark = math.log(max(ranks[layer, i], 1)) / math.log(n_vocab) < 0.45
            ax.text(i, layer, decode(int(lens.top_ids[layer, i, 0])).replace("\n", "\\n")[:10],
                    ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(positions), [f"{t!r}\n→ {n!r}" for t, n in zip(texts[:-1], texts[1:])],
                  fontsize=7, rotation=90)
    ax.set_yticks(range(len(lens.layers)), lens.layers)
    ax.set_ylabel("layer")
    ax.set_title("rank of the next token (cell: the layer's top token)")
    fig.colorbar(image, ax=ax, label="rank")
    if watch_texts:
        ax = axes[0, 1]
        for j, w in enumerate(watch_texts):
            ax.plot(lens.watch_rank[:, j], range(len(lens.layers)), marker="o", label=repr(w))
        ax.set_xscale("log")
        ax.set_yticks(range(len(lens.layers)), lens.layers)
        ax.invert_yaxis()
        ax.set_xlabel("rank")
        ax.set_title(f"watched tokens at position {lens.position}")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
