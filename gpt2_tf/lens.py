"""The logit lens: what GPT-2 would predict if it stopped after each layer.

Layer l's hidden state h_l (`emb` = h_0, the embeddings; then the output of block l) is projected
onto the vocabulary as the last layer's is: z_l = norm(h_l, ln_f) wte^T, with ln_f's mean and
variance computed from h_l itself (`final_norm=False`: z_l = h_l wte^T for l < L, Ecco's variant). The
last row is the model's own logits. Position i predicts token i + 1.

`logit_lens` works one layer at a time, so [L + 1, T, V] logits never exist at once (at T = 1024 one
layer of them is already 206 MB), and returns numpy arrays ready to print or plot.

Shapes: L n_layer, T tokens, V n_vocab, k top tokens, W watched tokens.
"""

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from gpt2_tf.score import rank


@dataclasses.dataclass
class Lens:
    """The per-layer statistics of one token sequence; row l is layer `layers[l]`.

    top_ids, top_probs [L + 1, T, k]: the k most probable tokens at each position, most probable first.
    rank_of_next [L + 1, T]: the rank of the token that follows each position (1 = the most probable;
        ties take the best rank); 0 at the last position, which has no next token.
    entropy, kl_to_final [L + 1, T]: in nats; KL(p_L || p_l), so 0 on the last row.
    watch_rank, watch_prob [L + 1, W]: the rank and probability of each watched token at `position`.
    """

    tokens: np.ndarray
    position: int
    layers: list
    top_ids: np.ndarray
    top_probs: np.ndarray
    rank_of_next: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    watch_ids: list
    watch_rank: np.ndarray
    watch_prob: np.ndarray


def logit_lens(model, tokens, position=None, top_k=10, watch_ids=(), final_norm=True):
    """The logit lens of `model` on `tokens` [T] (a list or array of ids): a `Lens`.

    position: where the watched tokens are read (default: the last). watch_ids: token ids to follow.
    """
    if model not in _lenses:
        _lenses[model] = LogitLens(model)
    return _lenses[model](tokens, position, top_k, watch_ids, final_norm)


class LogitLens:
    """`logit_lens` for one model, with its compiled functions (traced once per shape)."""

    def __init__(self, model):
        self.model = model
        self.forward = tf.function(self._forward, reduce_retracing=True)
        self.project = tf.function(self._project, reduce_retracing=True)
        self.measures = tf.function(self._measures, jit_compile=True, reduce_retracing=True)

    def __call__(self, tokens, position=None, top_k=10, watch_ids=(), final_norm=True):
        tokens = np.asarray(tokens, np.int32)
        length, n_layer = len(tokens), self.model.hparams.n_layer
        position = length - 1 if position is None else position
        if not 0 <= position < length:
            raise ValueError(f"position {position} is outside the {length} tokens")
        hidden, logits = self.forward(tf.constant(tokens[None]))
        final = tf.nn.log_softmax(logits)
        next_ids = tf.constant(np.append(tokens[1:], 0), tf.int32)  # 0: a placeholder at the last position
        watch = tf.constant(list(watch_ids), tf.int32)
        k = min(top_k, self.model.hparams.n_vocab)
        rows = []
        for layer in range(n_layer + 1):  # the last row: the model's own logits
            z = logits if layer == n_layer else self.project(hidden[layer], final_norm)
            top = tf.math.top_k(z, k=k)
            rows.append((top.indices,) + self.measures(z, top.indices, final, next_ids, watch, position))
        top_ids, top_probs, ranks, entropy, kl, watch_rank, watch_prob = (
            np.stack([row[i].numpy() for row in rows]) for i in range(7))
        ranks[:, -1] = 0
        layers = ["emb"] + [str(i) for i in range(1, n_layer + 1)]
        return Lens(tokens=tokens, position=position, layers=layers, top_ids=top_ids, top_probs=top_probs,
                    rank_of_next=ranks, entropy=entropy, kl_to_final=kl, watch_ids=list(watch_ids),
                    watch_rank=watch_rank, watch_prob=watch_prob)

    def _forward(self, tokens):
        """tokens [1, T] -> (hidden [L + 1, T, C], logits [T, V])."""
        out = self.model(tokens, return_hidden=True)
        return out["hidden"][0], out["logits"][0]

    def _project(self, h, final_norm):
        """Lens logits [T, V] float32 of a hidden state h [T, C]: model.unembed's values. The product
        is taken as wte h^T: with h wte^T, TensorFlow's CPU kernel copied the transposed wte at every
        call (a 64-token lens of the 124M model took 1.5x as long)."""
        x = self.model.ln_f(h) if final_norm else h
        z = tf.matmul(tf.cast(self.model.wte, x.dtype), x, transpose_b=True)
        return tf.transpose(tf.cast(z, tf.float32))

    @staticmethod
    def _measures(z, top_ids, final, next_ids, watch, position):
        """One layer's rows of a Lens from its logits z [T, V], in one fused pass (XLA): the top tokens'
        probabilities, the rank of each next token, entropy and KL to `final` (the last layer's
        log-probabilities [T, V]), and the rank and probability of the `watch` [W] ids at `position`."""
        log_p = tf.nn.log_softmax(z)
        entropy = -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)
        kl = tf.reduce_sum(tf.exp(final) * (final - log_p), axis=-1)
        top_probs = tf.exp(tf.gather(log_p, top_ids, batch_dims=1))
        watch_rank = rank(z[position][None], watch[None])[0]
        watch_prob = tf.exp(tf.gather(log_p[position], watch))
        return top_probs, rank(z, next_ids[:, None])[:, 0], entropy, kl, watch_rank, watch_prob


def ecco_rows(lens):
    """A Lens in Ecco's numbering: without the embeddings' row, the blocks' outputs as layers 0 .. L-1
    (Ecco's layer 0 is our 1; with final_norm=False its rows are Ecco's)."""
    rows = {field: getattr(lens, field)[1:] for field in ("top_ids", "top_probs", "rank_of_next", "entropy",
                                                          "kl_to_final", "watch_rank", "watch_prob")}
    return dataclasses.replace(lens, layers=[str(i) for i in range(len(lens.layers) - 1)], **rows)


_lenses = weakref.WeakKeyDictionary()  # model -> its LogitLens
