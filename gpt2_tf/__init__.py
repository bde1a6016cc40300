"""gpt2-tf: OpenAI's GPT-2 on TensorFlow 2 and Keras 3.

    from gpt2_tf import load_model, get_encoder, checkpoint

`get_encoder` and the modules named in TENSORFLOW_FREE do not import TensorFlow (the commands of
`gpt2_tf.cli` import it only when their work starts); the rest is imported on first use, so that tools
which only tokenize, download or check their flags start at once.
"""

import importlib

from gpt2_tf.encoder import get_encoder
from gpt2_tf.hparams import HParams

__all__ = ["get_encoder", "HParams", "load_model", "checkpoint", "GPT2"]

TENSORFLOW_FREE = ("attention_report", "bpe", "checkpoint_files", "cli", "cli.demo", "convert", "dataset",
                   "decoding", "documents", "download", "encoder", "fast_encoder", "figures", "files",
                   "generate", "hparams", "lens_report", "litert_runtime", "lora", "model_files",
                   "safetensors_file", "score_report", "tasks", "token_files", "token_text")

_LAZY = {"load_model": "gpt2_tf.checkpoint", "GPT2": "gpt2_tf.model", "checkpoint": None}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'gpt2_tf' has no attribute {name!r}")
    if _LAZY[name] is None:
        return importlib.import_module(f"gpt2_tf.{name}")
    return getattr(importlib.import_module(_LAZY[name]), name)
