"""The checks of train.py's flags and files, made before any work and before TensorFlow is imported, so
that a mistake is told at once, in one line. This module does not import TensorFlow."""

import os

from gpt2_tf.cli import UsageError, check_encoding, check_folder_or_new
from gpt2_tf.dataset import DatasetError, list_files
from gpt2_tf.hparams import HParams, load_hparams, missing_model, model_dir

SHAPE_FLAGS = ("n_ctx", "n_embd", "n_head", "n_layer")


def parse_memlimit(text):
    """--twremat_memlimit: an integer of bytes, or with suffix K, M, G (x 1000, 10^6, 10^9)."""
    factor = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:].upper(), 1)
    digits = text[:-1] if factor > 1 else text
    if not digits.isdigit():
        raise UsageError(f"--twremat_memlimit must be an integer with an optional K, M or G suffix, "
                         f"got {text!r}")
    return int(digits) * factor


def check_args(args):
    """Check what can be checked before any work; returns (hparams, model folder). Raises UsageError.

    Numbers are checked by the parser (train.py); this checks how flags go together, and the files.
    Fills in the default of --sample_length (n_ctx - 1).
    """
    parse_memlimit(args.twremat_memlimit)
    if args.val_full and not args.val_every:
        raise UsageError("--val_full needs --val_every (how often to validate)")
    check_encoding(args.encoding)
    for flag in ("checkpoint_dir", "sample_dir"):
        check_folder_or_new(getattr(args, flag), f"--{flag}")
    for flag in ("dataset", "val_dataset"):
        path = getattr(args, flag)
        if path is not None:
            try:
                list_files(path, args.encoding)
            except DatasetError as e:
                raise UsageError(f"--{flag} {path}: {e}") from None
    run_dir = os.path.join(args.checkpoint_dir, args.run_name)
    resuming = args.restore_from == "latest" and os.path.exists(os.path.join(run_dir, "checkpoint"))
    from_base = args.restore_from == "fresh" or (args.restore_from == "latest" and not resuming)
    needed = ("hparams.json", "encoder.json", "vocab.bpe")
    if from_base and args.init == "pretrained":
        needed += ("checkpoint",)
    problem = missing_model(args.model_name, args.models_dir, needed)
    if problem:
        raise UsageError(problem)
    if args.restore_from not in ("latest", "fresh") and not (
            os.path.isdir(args.restore_from) or os.path.exists(args.restore_from + ".index")):
        raise UsageError(f"--restore_from {args.restore_from}: no such checkpoint folder or prefix "
                         "(or give latest or fresh)")
    base = model_dir(args.model_name, args.models_dir)
    try:
        hparams = load_hparams(base)
        if args.init == "scratch":
            hparams = scratch_hparams(args, hparams)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.init != "scratch" and any(getattr(args, k) is not None for k in SHAPE_FLAGS):
        raise UsageError("--n_ctx, --n_embd, --n_head and --n_layer are for --init scratch only")
    if args.min_lr is not None and (args.lr_decay_steps or args.steps) is None:
        raise UsageError("--min_lr needs --steps or --lr_decay_steps (where the decay ends)")
    if args.min_lr is not None and args.min_lr > args.learning_rate:
        raise UsageError(f"--min_lr {args.min_lr:g} is above --learning_rate {args.learning_rate:g}: "
                         "the schedule decays from --learning_rate down to --min_lr")
    if args.sample_length is None:
        args.sample_length = hparams.n_ctx - 1
    if args.sample_every and args.sample_length > hparams.n_ctx - 1:
        raise UsageError(f"Can't get samples longer than window size: {hparams.n_ctx} (--sample_length "
                         f"{args.sample_length} plus the one context token must fit in n_ctx)")
    return hparams, base


def scratch_hparams(args, hparams):
    """The shape of a model trained from scratch: the run's own hparams.json when the run exists
    (a resumed run keeps its shape), else the model folder's with the --n_* flags applied."""
    saved = os.path.join(args.checkpoint_dir, args.run_name, "hparams.json")
    if args.restore_from == "latest" and os.path.exists(saved):
        return load_hparams(saved)
    values = hparams.to_dict()
    values.update({k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None})
    return HParams.from_dict(values)


# Bytes per trained parameter of an optimizer's state (Adafactor keeps only row and column sums).
OPTIMIZER_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd": 0, "adafactor": 0}


def memory_warning(hparams, args, available=None):
    """A warning (or None) when the run is unlikely to fit in the memory available.

    The estimate counts only what the run certainly holds: the float32 weights, the optimizer's
    state, the bfloat16/float16 copies in mixed precision, and all the gradients at once unless
    --memory_saving_gradients applies each as it comes. Activations come on top, so a run near the
    limit is warned about too. `available`: bytes (default: MemAvailable of /proc/meminfo, where
    there is one).
    """
    if available is None:
        available = available_memory()
    if available is None:
        return None
    params = hparams.n_params()
    parts = {"weights": 4 * params, "optimizer state": OPTIMIZER_STATE_BYTES[args.optimizer] * params}
    if args.mixed_precision:
        parts["half-precision copies"] = 2 * params
    if not (args.memory_saving_gradients or args.twremat):
        parts["gradients"] = 4 * params
    needed = sum(parts.values())
    if needed < 0.9 * available:
        return None
    gib = 1 << 30
    said = ", ".join(f"{name} {size / gib:.1f}" for name, size in parts.items() if size)
    return (f"warning: this run holds at least {needed / gib:.1f} GiB ({said}) before activations, and "
            f"{available / gib:.1f} GiB of memory is available: it will likely run out of memory. Use "
            "--memory_saving_gradients, --optimizer sgd or adafactor, or a smaller model")


def available_memory():
    """Bytes of memory available to a new process (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
