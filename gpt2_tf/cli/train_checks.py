"""The checks of train.py's flags and files, made before any work and before TensorFlow is imported, so
that a mistake is told at once, in one line. This module does not import TensorFlow."""

import dataclasses
import json
import os
import sys

from gpt2_tf.checkpoint_files import check_intact, latest_prefix, read_train_state
from gpt2_tf.cli import (
    UsageError,
    check_encoding,
    check_fits,
    check_folder_or_new,
    is_given,
    read_held_out,
)
from gpt2_tf.dataset import DatasetError, list_files
from gpt2_tf.documents import HELD_OUT_FILE
from gpt2_tf.files import FolderLock, Held
from gpt2_tf.hparams import HParams, load_hparams, missing_model, model_dir
from gpt2_tf.tasks import TASKS, TaskError, read_task

SHAPE_FLAGS = ("n_ctx", "n_embd", "n_head", "n_layer")

# The flags of the optimizer and its schedule that a run keeps (in each checkpoint's state.json): a
# resumed run goes on with them unless they are given again.
RUN_SETTINGS = ("optimizer", "learning_rate", "weight_decay", "warmup_steps", "min_lr", "lr_decay_steps",
                "grad_clip")


class TrainingError(Exception):
    """Training cannot go on (the loss or the gradients stay non-finite, a checkpoint cannot be
    written); the message is one line."""


@dataclasses.dataclass
class Checked:
    """What train.py's checks found: the model's shape, the base model's folder, the checkpoint to
    start from (None: a new model), and the hold on the run folder (None in a process that does not
    write, such as a worker that is not the chief)."""

    hparams: HParams
    base_dir: str
    start: "str | None"
    lock: "FolderLock | None"
    tasks: list = dataclasses.field(default_factory=list)  # --eval_task: [(task, file, [tasks.Item])]
    lora: "tuple | None" = None  # --lora_rank: (base checkpoint prefix, lora.LoraConfig)


def parse_memlimit(text):
    """--twremat_memlimit: an integer of bytes, or with suffix K, M, G (x 1000, 10^6, 10^9)."""
    factor = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:].upper(), 1)
    digits = text[:-1] if factor > 1 else text
    if not digits.isdigit():
        raise UsageError(f"--twremat_memlimit must be an integer with an optional K, M or G suffix, "
                         f"got {text!r}")
    return int(digits) * factor


def check_args(args):
    """Check what can be checked before any work; returns a Checked. Raises UsageError, and
    CheckpointError for a damaged checkpoint to start from.

    Numbers are checked by the parser (train.py); this checks how flags go together, the files, and
    takes the run folder for this process (another train.py on the same run is refused). A resumed
    run keeps its shape (its own hparams.json) and, unless they are given again, its optimizer and
    schedule (RUN_SETTINGS, from its newest checkpoint). Fills in the default of --sample_length
    (n_ctx - 1).
    """
    check_flags_and_paths(args)
    tasks = read_eval_tasks(args)
    run_dir = os.path.join(args.checkpoint_dir, args.run_name)
    resuming = args.restore_from == "latest" and os.path.exists(os.path.join(run_dir, "checkpoint"))
    from_base = args.restore_from == "fresh" or (args.restore_from == "latest" and not resuming)
    needed = ("hparams.json", "encoder.json", "vocab.bpe")
    if from_base and args.init == "pretrained":
        needed += ("checkpoint",)
    problem = missing_model(args.model_name, args.models_dir, needed)
    if problem:
        raise UsageError(problem)
    base = model_dir(args.model_name, args.models_dir)
    if resuming and args.val_split is None:
        check_no_split(args, run_dir)
    if resuming and args.val_split is not None and not os.path.exists(os.path.join(run_dir, HELD_OUT_FILE)):
        raise UsageError(f"--val_split: run {args.run_name} has trained on all of its data, so nothing can "
                         "be held out of it now; start another --run_name with --val_split")
    start = start_checkpoint(args, run_dir, base, resuming)
    lora = lora_settings(args, run_dir, start, resuming)
    saved = read_train_state(start) if start is not None and args.restore_from != "fresh" else None
    hparams = run_hparams(args, base, start, saved is not None or resuming)
    if saved is not None:
        keep_run_settings(args, saved)
    if start is not None:
        check_intact(start)
    check_schedule_and_sizes(args, hparams)
    lock = None
    if writes_the_run(args):
        try:
            lock = FolderLock(run_dir).acquire()
        except Held as e:
            raise UsageError(f"run {args.run_name} ({run_dir}) is being trained by "
                             + (f"process {e.pid}" if e.pid else "another process")
                             + "; wait for it to end, or give another --run_name") from None
    return Checked(hparams=hparams, base_dir=base, start=start, lock=lock, tasks=tasks, lora=lora)


def lora_settings(args, run_dir, start, resuming):
    """(base checkpoint, LoraConfig) of a LoRA run, None for a run of all weights. A run keeps what it
    is: a LoRA run resumes with its own rank, alpha, dropout and targets and its own base (lora.json;
    --lora_* flags that differ are refused), and neither kind becomes the other. LoRA's dropout does
    not go with --memory_saving_gradients."""
    lora = _lora_settings(args, run_dir, start, resuming)
    if lora is not None and lora[1].dropout and (args.memory_saving_gradients or args.twremat):
        raise UsageError(f"run {args.run_name} has LoRA dropout {lora[1].dropout:g}, and with "
                         "--memory_saving_gradients the recomputed blocks would draw other dropout masks "
                         "than the forward pass; leave one out")
    return lora


def _lora_settings(args, run_dir, start, resuming):
    from gpt2_tf.cli.train import LORA_TARGETS
    from gpt2_tf.lora import LoraConfig, read_record

    recorded = read_record(run_dir)
    wanted = None
    if args.lora_rank:
        if args.init == "scratch" or start is None:
            raise UsageError("--lora_rank fine-tunes a trained model; a new model (--init scratch) trains "
                             "all of its weights")
        if args.only_train_transformer_layers:
            raise UsageError("--lora_rank trains only the LoRA factors; leave out "
                             "--only_train_transformer_layers")
        wanted = LoraConfig(args.lora_rank, args.lora_alpha or float(args.lora_rank), args.lora_dropout,
                            tuple(LORA_TARGETS[t] for t in dict.fromkeys(args.lora_targets)))
    if recorded is not None and (resuming or args.restore_from == "fresh"):
        base, config = recorded
        if wanted is not None and wanted != config:
            raise UsageError(f"run {args.run_name} is a LoRA run of rank {config.rank}, alpha "
                             f"{config.alpha:g}, dropout {config.dropout:g} on {', '.join(config.targets)} "
                             f"({run_dir}/lora.json); resume it with those, or give another --run_name")
        return base, config
    if resuming and wanted is not None:
        raise UsageError(f"run {args.run_name} trains all of the model's weights; a LoRA run needs a "
                         "--run_name of its own")
    if wanted is not None and read_record(os.path.dirname(start)) is not None:
        raise UsageError(f"--restore_from {args.restore_from}: {start} is a LoRA adapter; LoRA adapts a "
                         "whole model (its base, or a model merged with convert.py)")
    return None if wanted is None else (start, wanted)


def read_eval_tasks(args):
    """--eval_task's TASK=FILE specifications, their files read (the first --eval_items items of each):
    [(task, file, [tasks.Item])]."""
    found = []
    for spec in args.eval_task or []:
        task, equals, path = spec.partition("=")
        if task not in TASKS or not equals or not path:
            raise UsageError(f"--eval_task {spec}: expected TASK=FILE with TASK one of {', '.join(TASKS)}, "
                             "e.g. --eval_task hellaswag=hellaswag_val.jsonl")
        try:
            items = read_task(task, path)
        except TaskError as e:
            raise UsageError(f"--eval_task: {e}") from None
        found.append((task, path, items[:args.eval_items or None]))
    return found


def check_no_split(args, run_dir):
    """A run that holds documents out (its held_out.json) resumes only with the same split: refuse to
    go on without --val_split, which would train on them."""
    split = read_held_out(run_dir)
    if split is None:
        return
    flags = f"--val_split {split['val_split']:g} --val_split_seed {split['val_split_seed']}"
    raise UsageError(f"run {args.run_name} holds out {len(split['held_out'])} documents of its dataset "
                     f"({os.path.join(run_dir, HELD_OUT_FILE)}); resume it with {flags}, or give another "
                     "--run_name")


def check_flags_and_paths(args):
    """The flags that go together, the encoding, the output folders (writable) and the datasets."""
    parse_memlimit(args.twremat_memlimit)
    if args.val_full and not args.val_every:
        raise UsageError("--val_full needs --val_every (how often to validate)")
    if args.val_split is not None and args.val_dataset is not None:
        raise UsageError("--val_split holds out part of --dataset for validation; --val_dataset names other "
                         "data: give one of them")
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


def check_schedule_and_sizes(args, hparams):
    """The learning-rate schedule, the windows held in memory, and --sample_length (its default,
    n_ctx - 1, filled in), once the model's shape is known."""
    if args.min_lr is not None and (args.lr_decay_steps or args.steps) is None:
        raise UsageError("--min_lr needs --steps or --lr_decay_steps (where the decay ends)")
    if args.min_lr is not None and args.min_lr > args.learning_rate:
        raise UsageError(f"--min_lr {args.min_lr:g} is above --learning_rate {args.learning_rate:g}: "
                         "the schedule decays from --learning_rate down to --min_lr")
    # The token windows of an update and of validation are held in memory as int32 arrays.
    check_fits(args.batch_size * args.accumulate_gradients * hparams.n_ctx * 8,
               f"--batch_size {args.batch_size} x --accumulate_gradients {args.accumulate_gradients} windows")
    if args.val_every:
        check_fits(args.val_batch_size * args.val_batch_count * hparams.n_ctx * 4,
                   f"--val_batch_size {args.val_batch_size} x --val_batch_count {args.val_batch_count} "
                   "windows")
    if args.sample_length is None:
        args.sample_length = hparams.n_ctx - 1
    if args.sample_every and args.sample_length > hparams.n_ctx - 1:
        raise UsageError(f"Can't get samples longer than window size: {hparams.n_ctx} (--sample_length "
                         f"{args.sample_length} plus the one context token must fit in n_ctx)")


def start_checkpoint(args, run_dir, base_dir, resuming):
    """The checkpoint prefix to load, per --restore_from (latest, fresh, or a folder or prefix), or
    None for a new model (--init scratch, unless the run has a checkpoint to resume)."""
    if args.init == "scratch" and not resuming and args.restore_from in ("latest", "fresh"):
        return None
    if args.restore_from == "fresh" or (args.restore_from == "latest" and not resuming):
        where = base_dir
    else:
        where = run_dir if args.restore_from == "latest" else args.restore_from
    try:
        return latest_prefix(where)
    except ValueError as e:
        flag = "" if args.restore_from in ("latest", "fresh") else f"--restore_from {args.restore_from}: "
        raise UsageError(f"{flag}{e}") from None


def run_hparams(args, base_dir, start, resuming):
    """The shape of the model to train: the hparams.json beside the checkpoint it resumes (a run keeps
    its shape; a shape flag that differs is refused), else the base model's, with the --n_* flags
    applied for --init scratch."""
    own = os.path.join(os.path.dirname(start), "hparams.json") if start is not None else None
    try:
        if resuming and own and os.path.exists(own):
            hparams = load_hparams(own)
            for key in SHAPE_FLAGS:
                value = getattr(args, key)
                if value is not None and value != getattr(hparams, key):
                    raise UsageError(f"--{key} {value}: the run {os.path.dirname(start)} has {key} = "
                                     f"{getattr(hparams, key)}, and a resumed run keeps its shape (give "
                                     "another --run_name, or --restore_from fresh)")
            return hparams
        if args.init != "scratch" and any(getattr(args, k) is not None for k in SHAPE_FLAGS):
            raise UsageError("--n_ctx, --n_embd, --n_head and --n_layer are for --init scratch only")
        hparams = load_hparams(base_dir)
        if args.init == "scratch" and start is None:
            values = hparams.to_dict()
            values.update({k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None})
            hparams = HParams.from_dict(values)
        return hparams
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None


def keep_run_settings(args, saved):
    """Give the flags of RUN_SETTINGS that were not given their values in the run's state (a run saved
    by an earlier version has none), and say so in one line."""
    settings = saved.get("settings") or {}
    kept = []
    for key in RUN_SETTINGS:
        if key in settings and not is_given(getattr(args, key)) and settings[key] != getattr(args, key):
            setattr(args, key, settings[key])
            kept.append(f"--{key} {settings[key]:g}" if isinstance(settings[key], float) else
                        f"--{key} {settings[key]}")
    if kept:
        print(f"Resuming with the run's own {' '.join(kept)}", file=sys.stderr, flush=True)


def run_settings(args):
    """The RUN_SETTINGS of this run, to save with each checkpoint; the cosine decay's end is kept as the
    update number it was (--lr_decay_steps, else --steps of the run's first part)."""
    settings = {key: getattr(args, key) for key in RUN_SETTINGS}
    if args.min_lr is not None:
        settings["lr_decay_steps"] = args.lr_decay_steps or args.steps
    return settings


def writes_the_run(args):
    """Whether this process writes the run (and holds it): every process but the workers of a
    multi-worker cluster that are not its chief (TF_CONFIG read without TensorFlow)."""
    if args.distribute not in ("auto", "multiworker") or not os.environ.get("TF_CONFIG"):
        return True
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        task = config.get("task") or {}
        cluster = config.get("cluster") or {}
    except (ValueError, AttributeError):
        raise UsageError("TF_CONFIG is not a JSON object with \"cluster\" and \"task\"") from None
    if not task.get("type"):
        return True
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


# Bytes per trained parameter of an optimizer's state (Adafactor keeps only row and column sums).
OPTIMIZER_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd": 0, "adafactor": 0}


def memory_warning(hparams, args, available=None, xla=False, lora=None):
    """A warning (or None) when the run is unlikely to fit in the memory available.

    The estimate counts only what each replica certainly holds: the float32 weights, the optimizer's
    state, the bfloat16/float16 copies in mixed precision, and all the gradients at once unless
    --memory_saving_gradients applies each as it comes, which it does in a TensorFlow graph only:
    under XLA (`xla`, the GPU and TPU default) one compiled computation returns them all. Activations
    come on top, so a run near the limit is warned about too. `available`: bytes of one replica's
    device (devices.device_memory: the GPU's, else the host's); None, where it is not known, warns of
    nothing. `lora`: a LoRA run's lora.LoraConfig, whose factors alone are trained.
    """
    if available is None:
        return None
    params = trained = hparams.n_params()
    if lora is not None:  # only LoRA's factors have gradients, optimizer state and copies
        from gpt2_tf.lora import factor_count

        trained = factor_count(hparams, lora.rank, lora.targets)
    parts = {"weights": 4 * params, "optimizer state": OPTIMIZER_STATE_BYTES[args.optimizer] * trained}
    if args.mixed_precision:
        parts["half-precision copies"] = 2 * trained
    if xla or not (args.memory_saving_gradients or args.twremat):
        parts["gradients"] = 4 * trained
    needed = sum(parts.values())
    if needed < 0.9 * available:
        return None
    gib = 1 << 30
    said = ", ".join(f"{name} {size / gib:.1f}" for name, size in parts.items() if size)
    return (f"warning: this run holds at least {needed / gib:.1f} GiB ({said}) before activations, and "
            f"{available / gib:.1f} GiB of memory is available: it will likely run out of memory. Use "
            "--memory_saving_gradients, --optimizer sgd or adafactor, or a smaller model")
