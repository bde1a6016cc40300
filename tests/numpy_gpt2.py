"""An independent float64 NumPy forward pass of GPT-2, written from the paper's equations.

It works on the TF1 checkpoint tensors directly ({name: array}) and returns logits and the
keys/values of every position, so tests can compare the Keras model against it.
"""

import numpy as np


def layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(weights, hparams, tokens, return_hidden=False, last_only=False, return_attention=False):
    """tokens [B, T] -> (logits [B, T, V], kv [B, L, 2, H, T, D]), all float64; with return_hidden
    also the residual stream [B, L + 1, T, C]: the embeddings, then the output of each block; with
    return_attention then the attention weights [B, L, H, T, T]. With last_only, the logits are those
    of the last position alone, [B, 1, V]."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    n_head, n_embd = hparams["n_head"], hparams["n_embd"]
    d = n_embd // n_head
    tokens = np.asarray(tokens)
    batch, length = tokens.shape
    x = w["model/wte"][tokens] + w["model/wpe"][np.arange(length)][None]
    causal = np.tril(np.ones((length, length), bool))
    kv, hidden, attention = [], [x], []
    for i in range(hparams["n_layer"]):
        p = f"model/h{i}/"
        h = layer_norm(x, w[p + "ln_1/g"], w[p + "ln_1/b"])
        qkv = h @ w[p + "attn/c_attn/w"][0] + w[p + "attn/c_attn/b"]
        heads = qkv.reshape(batch, length, 3, n_head, d).transpose(2, 0, 3, 1, 4)
        q, k, v = heads[0], heads[1], heads[2]
        kv.append(np.stack([k, v], axis=1))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        attention.append(att)
        a = (att @ v).transpose(0, 2, 1, 3).reshape(batch, length, n_embd)
        x = x + a @ w[p + "attn/c_proj/w"][0] + w[p + "attn/c_proj/b"]
        h = layer_norm(x, w[p + "ln_2/g"], w[p + "ln_2/b"])
        h = gelu(h @ w[p + "mlp/c_fc/w"][0] + w[p + "mlp/c_fc/b"])
        x = x + h @ w[p + "mlp/c_proj/w"][0] + w[p + "mlp/c_proj/b"]
        hidden.append(x)
    x = layer_norm(x[:, -1:] if last_only else x, w["model/ln_f/g"], w["model/ln_f/b"])
    out = (x @ w["model/wte"].T, np.stack(kv, axis=1))
    if return_hidden:
        out += (np.stack(hidden, axis=1),)
    if return_attention:
        out += (np.stack(attention, axis=1),)
    return out


def next_token_loss(weights, hparams, tokens):
    """The mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1], float64."""
    logits = forward(weights, hparams, tokens)[0][:, :-1]
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, np.asarray(tokens)[:, 1:, None], axis=-1)[..., 0]
    return float((log_z - picked).mean())
