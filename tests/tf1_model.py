"""Write small GPT-2 models exactly as the original TF1 code saved them.

The released model directories hold `checkpoint`, `model.ckpt.{index,data-00000-of-00001,meta}`,
`hparams.json`, `encoder.json` and `vocab.bpe`. `write_original_model` builds the same variables with
`tf.compat.v1` in graph mode, fills them with random values (gains and biases included, so that a
mistake in any of them shows), and saves them with a TF1 `Saver`. The tokenizer files are the real
GPT-2 ones, copied from the folder that `gpt2_vocab.find_vocab` finds.
"""

import json
import os
import shutil

import numpy as np
from gpt2_vocab import find_vocab

TINY_HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


def original_variables(hparams):
    """{name: shape} of a GPT-2 checkpoint, walked scope by scope as the original model() creates them."""
    c = hparams["n_embd"]
    shapes = {}

    def norm(scope):
        shapes.update({scope + "/g": [c], scope + "/b": [c]})

    def conv1d(scope, nx, nf):
        shapes.update({scope + "/w": [1, nx, nf], scope + "/b": [nf]})

    shapes["model/wpe"] = [hparams["n_ctx"], c]
    shapes["model/wte"] = [hparams["n_vocab"], c]
    for i in range(hparams["n_layer"]):
        block = f"model/h{i}"
        norm(block + "/ln_1")
        conv1d(block + "/attn/c_attn", c, 3 * c)
        conv1d(block + "/attn/c_proj", c, c)
        norm(block + "/ln_2")
        conv1d(block + "/mlp/c_fc", c, 4 * c)
        conv1d(block + "/mlp/c_proj", 4 * c, c)
    norm("model/ln_f")
    return shapes


def random_weights(hparams, seed=0):
    """Random float32 values for every variable: gains near 1, biases and weights with real spread."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in original_variables(hparams).items():
        leaf = name.rsplit("/", 1)[1]
        if leaf == "g":
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif leaf == "b":
            value = 0.1 * rng.standard_normal(shape)
        elif name == "model/wpe":
            value = 0.05 * rng.standard_normal(shape)
        else:
            value = 0.08 * rng.standard_normal(shape)
        weights[name] = value.astype(np.float32)
    return weights


def write_original_model(model_dir, hparams=TINY_HPARAMS, seed=0, vocab_dir=None):
    """Write a model directory in the release layout and return its weights {tf1_name: ndarray}.

    vocab_dir: where encoder.json and vocab.bpe are copied from; default the one find_vocab() finds.
    """
    import tensorflow as tf

    os.makedirs(model_dir, exist_ok=True)
    weights = random_weights(hparams, seed)
    graph = tf.Graph()
    with graph.as_default():
        assigns = []
        for name, value in weights.items():
            variable = tf.compat.v1.get_variable(name, value.shape, tf.float32)
            assigns.append(variable.assign(value))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(assigns)
            saver.save(sess, os.path.join(model_dir, "model.ckpt"))
    # The released state file names the checkpoint relative to its folder (77 bytes for every size).
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    with open(os.path.join(model_dir, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)
        f.write("\n")
    vocab_dir = find_vocab() if vocab_dir is None else vocab_dir
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(os.path.join(vocab_dir, name), os.path.join(model_dir, name))
    return weights
