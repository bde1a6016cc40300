"""The flags that choose a model, shared by sample.py, score.py and lens.py: a released model
(--model_name, --models_dir) or the newest checkpoint of a training run (--run_name, --checkpoint_dir).
This module does not import TensorFlow."""

from gpt2_tf.cli import UsageError
from gpt2_tf.model_files import ModelMissing, find_model


def add_model_flags(parser, run_help):
    """--model_name, --models_dir, --run_name, --checkpoint_dir: a released model, or a training run."""
    parser.add_argument("--model_name", default="124M", help="model folder inside models_dir")
    parser.add_argument("--models_dir", default="models", help="folder of downloaded models")
    parser.add_argument("--run_name", default=None, help=run_help)
    parser.add_argument("--checkpoint_dir", default="checkpoint", help="folder of training runs")


def check_model_flags(args):
    """The ModelFiles that the model flags name. Raises UsageError when the model or the run is not
    there, and CheckpointError when its newest checkpoint is damaged."""
    try:
        return find_model(args.model_name, args.models_dir, args.run_name, args.checkpoint_dir)
    except ModelMissing as e:
        raise UsageError(str(e)) from None


def check_litert(files):
    """Refuse a LiteRT model (ModelFiles.litert) where LiteRT is not installed. Raises UsageError."""
    import importlib.util

    from gpt2_tf.litert_runtime import INSTALL

    if importlib.util.find_spec("ai_edge_litert") is None:
        raise UsageError(f"{files.weights} is a LiteRT model, and LiteRT is not installed: {INSTALL}")


def add_prefix_flag(parser):
    """--prefix none|eot: whether the prompt follows GPT-2's document token (score.py has its own,
    eot by default, for documents)."""
    parser.add_argument("--prefix", choices=["none", "eot"], default="none",
                        help="eot: the prompt starts with the <|endoftext|> token, as KerasHub's "
                             "preprocessor and Hugging Face's bos_token start it (a literal '<|endoftext|>' "
                             "in a prompt is text, as in the original)")


def prefixed(enc, prefix, tokens):
    """A prompt's tokens after the document token where prefix is "eot". Raises UsageError for a
    vocabulary without one."""
    if prefix != "eot":
        return tokens
    if enc.eot_token is None:
        raise UsageError("the vocabulary has no <|endoftext|> token: --prefix eot cannot be used")
    return [enc.eot_token] + list(tokens)
