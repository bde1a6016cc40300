#!/usr/bin/env python3
"""One prompt through GPT-2, step by step, printing what each step makes: the text of
docs/walkthrough.md (and docs/zh/walkthrough.md), whose output blocks the tests compare with this
script's, so that the shapes there are always the code's.

    python docs/walkthrough.py                     # the released 124M (python download_model.py 124M)
    python docs/walkthrough.py --random --vocab DIR   # the 124M shapes with random weights

Everything printed depends on the shapes and the vocabulary only, never on the weights' values.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPT = " Hello, tokenization"
WORD = " tokenization"


def step(number, title):
    print(f"\n[{number}] {title}")


def shape(name, tensor):
    print(f"    {name}: {list(tensor.shape)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models_dir", default="models")
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--random", action="store_true", help="random weights of the 124M shape")
    parser.add_argument("--vocab", default=None,
                        help="folder of encoder.json and vocab.bpe (default: the model's)")
    args = parser.parse_args(argv)

    from gpt2_tf.cli import quiet_tensorflow

    quiet_tensorflow(False)  # TensorFlow's log lines off, as in every script
    import numpy as np
    import tensorflow as tf

    from gpt2_tf.encoder import Encoder, bytes_to_unicode, load_encoder_files
    from gpt2_tf.hparams import RELEASED, HParams
    from gpt2_tf.model import GPT2, attention_mask, gelu, mask_attn_weights, softmax
    from gpt2_tf.sample import top_k_logits, top_p_logits

    folder = os.path.join(args.models_dir, args.model_name)
    enc = Encoder(*load_encoder_files(args.vocab or folder))

    step(1, "bytes_to_unicode: every byte gets a printable character; a space is 'Ġ'")
    table = bytes_to_unicode()
    print(f"    {len(table)} bytes; ' ' -> {table[ord(' ')]!r}, 'a' -> {table[ord('a')]!r}, "
          f"'\\n' -> {table[ord(chr(10))]!r}")
    piece = "".join(table[b] for b in WORD.encode("utf-8"))
    print(f"    {WORD!r} -> {piece!r}")

    step(2, f"bpe: merge the pair of lowest rank in vocab.bpe, again and again ({len(enc.bpe_ranks)} merges)")
    print(f"    start: {' '.join(piece)}")
    for pair, rank, word in enc.merges(piece):
        print(f"    rank {rank:>5}: {pair[0]} + {pair[1]:<10} -> {' '.join(word)}")
    print(f"    tokens: {[enc.encoder[symbol] for symbol in enc.bpe(piece).split(' ')]}")

    tokens = enc.encode(PROMPT)
    step(3, "encode: the prompt's ids")
    print(f"    {PROMPT!r} -> {tokens}")
    print(f"    pieces: {[enc.decode([t]) for t in tokens]}")

    if args.random:
        model = GPT2(HParams(**RELEASED["124M"]))
    else:
        from gpt2_tf.checkpoint import load_model

        model, _ = load_model(folder)
    hp = model.hparams
    x = tf.constant([tokens])
    length = len(tokens)

    step(4, "wte + wpe: each token's embedding plus its position's")
    shape("wte [V, C]", model.wte)
    shape("wpe [n_ctx, C]", model.wpe)
    h, _ = model.embed(x, 0)
    shape("h = wte[tokens] + wpe[0 .. T-1], [B, T, C]", h)
    h0 = h

    block = model.blocks[0]
    attn = block.attn
    step(5, "block h0, attention: norm, c_attn, q/k/v, heads, the mask, softmax, present, c_proj")
    a = block.ln_1(h)
    shape("norm(h) with ln_1's g and b", a)
    c = attn.c_attn(a)
    shape("c_attn: conv1d to 3C", c)
    q, k, v = map(attn.split_heads, tf.split(c, 3, axis=2))
    shape("q, k, v after split_heads [B, H, T, D]", q)
    w = tf.matmul(q, k, transpose_b=True) / np.sqrt(hp.n_embd // hp.n_head)
    shape("w = q k^T / sqrt(D) [B, H, T, T]", w)
    mask = attention_mask(length, length, tf.int32).numpy()
    print("    attention_mask: 1 where query i may see key j (j <= i)")
    for row in mask:
        print("      " + " ".join(str(v) for v in row))
    weights = softmax(mask_attn_weights(w))
    shape("softmax(mask_attn_weights(w)): the keys after i get -1e10, each row sums to 1", weights)
    merged = attn.merge_heads(tf.matmul(weights, v))
    shape("merge_heads(w v) [B, T, C]", merged)
    shape("c_proj", attn.c_proj(merged))
    shape("present = stack([k, v]) [B, 2, H, T, D]", tf.stack([k, v], axis=1))

    step(6, "block h0, mlp: norm, c_fc to 4C, gelu, c_proj back to C; both added to h")
    h = h + attn.c_proj(merged)
    m = gelu(block.mlp.c_fc(block.ln_2(h)))
    shape("gelu(c_fc(norm(h))) [B, T, 4C]", m)
    h = h + block.mlp.c_proj(m)
    shape("h + c_proj(gelu(...)) [B, T, C]", h)
    print(f"    the same as the block's own call, h0(h): {np.allclose(h, block(h0)[0], atol=1e-4)}")

    step(7, f"all {hp.n_layer} blocks, ln_f, and the tied head: logits = ln_f(h) wte^T")
    out = model(x)
    shape("logits [B, T, V]", out["logits"])
    shape("present [B, L, 2, H, T, D]", out["present"])

    step(8, "sample: the last position's logits, top-k, top-p, one token drawn")
    logits = out["logits"][:, -1, :]
    shape("logits[:, -1, :] [B, V]", logits)
    kept = tf.reduce_sum(tf.cast(top_k_logits(logits, 40) > -1e9, tf.int32)).numpy()
    print(f"    top_k_logits(logits, 40): {kept} tokens keep their logit, the rest -1e10")
    shape("top_p_logits(logits, 0.9): as many as reach 90%", top_p_logits(logits, 0.9))
    token = tf.random.categorical(top_k_logits(logits, 40), 1, dtype=tf.int32)
    shape("tf.random.categorical -> the next token [B, 1]", token)

    step(9, "the next step feeds that one token with past = present: the prompt is not computed again")
    later = model(token, past=out["present"])
    shape("logits [B, 1, V]", later["logits"])
    shape("present of the new position [B, L, 2, H, 1, D]", later["present"])
    past = tf.concat([out["present"], later["present"]], axis=-2)
    shape("past for the step after [B, L, 2, H, T + 1, D]", past)


if __name__ == "__main__":
    main()
