"""The flags that choose a model, shared by sample.py, score.py and lens.py: a released model
(--model_name, --models_dir) or the newest checkpoint of a training run (--run_name, --checkpoint_dir).
This module does not import TensorFlow."""

import os

from gpt2_tf.cli import UsageError


def add_model_flags(parser, run_help):
    """--model_name, --models_dir, --run_name, --checkpoint_dir: a released model, or a training run."""
    parser.add_argument("--model_name", default="124M", help="model folder inside models_dir")
    parser.add_argument("--models_dir", default="models", help="folder of downloaded models")
    parser.add_argument("--run_name", default=None, help=run_help)
    parser.add_argument("--checkpoint_dir", default="checkpoint", help="folder of training runs")


def check_model_flags(args):
    """Raise UsageError when the model or the training run that the model flags name is not there."""
    from gpt2_tf.hparams import missing_model

    if args.run_name is None:
        problem = missing_model(args.model_name, args.models_dir)
        if problem:
            raise UsageError(problem)
    elif not os.path.isdir(os.path.join(args.checkpoint_dir, args.run_name)):
        raise UsageError(f"no training run {args.run_name} in {args.checkpoint_dir} "
                         "(see --run_name and --checkpoint_dir)")
