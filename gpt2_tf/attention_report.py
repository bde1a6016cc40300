"""attention.py's views of a prompt's attention weights: terminal tables, JSON, a PNG and a
self-contained HTML page.

Everything here reads the weights [L, H, T, T] (numpy; row t: where query t looks, each row summing
to 1 over keys 0 .. t) and the `token_text.Labels` of the tokens; nothing needs TensorFlow.
`write_png` needs matplotlib. Layer l is the attention of block h<l> (`model/h0` is layer 0), head h
the h-th of its heads, as in the checkpoint's order of c_attn's columns.
"""

import html
import json

import numpy as np

from gpt2_tf.files import atomic_write
from gpt2_tf.lens_report import tick_label, tokens_tip, write_page

HEAD_COLOURS = ("31,119,180", "255,127,14", "44,160,44", "214,39,40", "148,103,189", "140,86,75",
                "227,119,194", "127,127,127", "188,189,34", "23,190,207")


def previous_token_share(weights):
    """How much each head looks at the token just before: the mean over queries 1 .. T-1 of the weight
    on key t - 1. [L, H, T, T] -> [L, H] (0 for a one-token prompt)."""
    if weights.shape[-1] < 2:
        return np.zeros(weights.shape[:2])
    return np.diagonal(weights, offset=-1, axis1=2, axis2=3).mean(-1)


def first_token_share(weights):
    """The mean over queries 1 .. T-1 of the weight on key 0. [L, H, T, T] -> [L, H]."""
    if weights.shape[-1] < 2:
        return np.zeros(weights.shape[:2])
    return weights[:, :, 1:, 0].mean(-1)


def head_grid(title, values):
    """A table of one figure per layer (rows) and head (columns), in percent. Returns the lines."""
    heads = values.shape[1]
    lines = [title, "layer " + "".join(f"{'h' + str(h):>6}" for h in range(heads))]
    lines += [f"{layer:<6}" + "".join(f"{100 * v:>5.0f}%" for v in row) for layer, row in enumerate(values)]
    return lines


def looks_table(weights, labels, position, top=3):
    """Where each head of each layer looks from token `position`: its `top` keys and their weights.
    Returns the lines."""
    lines = [f"Where position {position} ({labels.at(position)}) looks: each head's {top} heaviest keys"]
    names = [labels.at(k) for k in range(len(labels.tokens))]
    for layer in range(weights.shape[0]):
        for head in range(weights.shape[1]):
            row = weights[layer, head, position, :position + 1]
            keys = np.argsort(-row, kind="stable")[:top]
            cells = "  ".join(f"{k}:{names[k]} {100 * row[k]:.0f}%" for k in keys)
            lines.append(f"layer {layer:<2} head {head:<2}  {cells}")
    return lines


def to_json(weights, labels, prompt, prefix):
    """The weights and the tokens as a JSON-friendly dict (the schema in docs/attention.md)."""
    return {
        "prompt": prompt,
        "prefix": prefix,
        "tokens": labels.tokens,
        "text": [labels.text(i) for i in range(len(labels.tokens))],
        "spans": [[s.start, s.stop, s.text] for s in labels.spans],
        "layers": int(weights.shape[0]),
        "heads": int(weights.shape[1]),
        "attention": np.round(weights.astype(np.float64), 6).tolist(),
    }


def span_weights(weights, labels):
    """The weights between spans (a character split across tokens is one span): a query span looks from
    its last token (the first to hold the whole character), and its weight on a key span is the sum
    over that span's tokens. [L, H, T, T] -> [L, H, N, N] for N spans."""
    lasts = [s.stop - 1 for s in labels.spans]
    by_key = np.stack([weights[..., s.start:s.stop].sum(-1) for s in labels.spans], axis=-1)  # [L, H, T, N]
    return by_key[:, :, lasts, :]


def write_html(path, weights, labels, title):
    """One self-contained page (its script and data inline, no network): the prompt's text, and for
    the chosen layer one row per head; hovering over a piece of the text colours each head's row by
    how much that piece looks at each other one."""
    data = {"text": [s.text for s in labels.spans], "tips": [tokens_tip(labels, s) for s in labels.spans],
            "weights": np.round(span_weights(weights, labels).astype(np.float64), 4).tolist(),
            "colours": HEAD_COLOURS}
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p>Layer <select id='layer'></select> &mdash; hover over a piece of the text: each head's row "
             "shows where it looks from there (darker: more weight; the outlined cell is the piece itself). "
             "A character split across tokens is one piece (hover over it in the text for its tokens' "
             "bytes); it looks from its last token, and the weight on it is the sum over its tokens.</p>",
             "<table><tr><th>text</th><td id='text'></td></tr></table><table id='heads'></table>",
             '<script type="application/json" id="data">' + json.dumps(data, ensure_ascii=False).replace(
                 "</", "<\\/") + "</script>", f"<script>{HTML_SCRIPT}</script>"]
    write_page(path, title, parts)


HTML_SCRIPT = """
const d = JSON.parse(document.getElementById("data").textContent);
const select = document.getElementById("layer"), heads = document.getElementById("heads");
const text = document.getElementById("text");
d.weights.forEach((_, l) => select.add(new Option(String(l), l)));
d.text.forEach((t, i) => {
  const s = document.createElement("span");
  s.textContent = t; s.title = d.tips[i]; s.style.cursor = "pointer"; s.style.padding = "0 1px";
  s.onmouseenter = () => show(i); text.appendChild(s);
});
const cells = d.weights[0].map((_, h) => {
  const row = heads.insertRow(); row.insertCell().outerHTML = "<th>head " + h + "</th>";
  return d.text.map(t => { const c = row.insertCell(); c.textContent = t; return c; });
});
let query = d.text.length - 1;
function show(q) {
  query = q;
  const w = d.weights[+select.value];
  cells.forEach((row, h) => row.forEach((c, k) => {
    c.style.background = "rgba(" + d.colours[h % d.colours.length] + "," + w[h][q][k] + ")";
    c.style.outline = k === q ? "2px solid #000" : "";
  }));
}
select.onchange = () => show(query);
show(query);
"""


def tick_labels(labels):
    """Each token's label on a figure's axis (lens_report.tick_label, on one line)."""
    return [tick_label(labels, i).replace("\n", " ") for i in range(len(labels.tokens))]


def write_png(path, weights, labels, title, layer, head):
    """Every layer x head as a heat map of query (rows) x key (columns), and beside it the chosen
    layer and head in detail, with the tokens on both axes (and the weights in the cells where they
    fit)."""
    from gpt2_tf.figures import drawable, pyplot

    plt = pyplot()
    n_layer, n_head, length = weights.shape[:3]
    side = max(5.0, 0.45 * length) + 2  # the detail's width
    fig = plt.figure(figsize=(1.3 * n_head + side, max(1.3 * n_layer, 0.4 * length + 3)))
    grid, detail = fig.subfigures(1, 2, width_ratios=[1.3 * n_head, side])
    axes = grid.subplots(n_layer, n_head, squeeze=False)
    for i in range(n_layer):
        for h in range(n_head):
            ax = axes[i, h]
            ax.imshow(weights[i, h], cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if (i, h) == (layer, head):
                for spine in ax.spines.values():
                    spine.set_color("red")
                    spine.set_linewidth(2)
            if i == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {i}", fontsize=8)
    ax = detail.subplots()
    image = ax.imshow(weights[layer, head], cmap="Blues", vmin=0, vmax=1)
    names = [drawable(name) for name in tick_labels(labels)]
    ax.set_xticks(range(length), names, rotation=90, fontsize=8)
    ax.set_yticks(range(length), names, fontsize=8)
    ax.set_xlabel("key (looked at)")
    ax.set_ylabel("query (looking)")
    if length <= 24:
        for q in range(length):
            for k in range(q + 1):
                w = weights[layer, head, q, k]
                ax.text(k, q, f"{100 * w:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if w > 0.5 else "black")
    ax.set_title(f"layer {layer}, head {head} (%)", fontsize=9)
    detail.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(drawable(title) + "\nleft: every layer and head, query (row) x key (column); right: "
                 f"layer {layer}, head {head}", fontsize=10)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def summary(weights, labels, position):
    """The terminal's lines: the previous-token and first-token grids, then where `position` looks."""
    lines = head_grid("Mean weight on the previous token (a previous-token head is near 100%)",
                      previous_token_share(weights))
    lines += [""] + head_grid("Mean weight on the first token", first_token_share(weights))
    return lines + [""] + looks_table(weights, labels, position)

