"""train.py's work once its flags are checked: the nshepperd trainer on TensorFlow 2, step by step.

`run(args)` does what the original train.py did, in the same order and with the same console lines:

    Loading checkpoint <prefix>           the base model, or the newest checkpoint of the run
    Loading dataset...
    dataset has <N> tokens
    Training...
    [1 | 2.53] loss=3.21 avg=3.21         after each update: step, seconds, loss, running average
    Generating samples...                 every --sample_every steps, into samples/<run>/samples-<step>
    Calculating validation loss...        every --val_every steps (and before the first update)
    [100 | 250.10] validation loss = 3.10
    [250 | 600.20] hellaswag acc = 28.92% acc_norm = 31.14% (10042 items)   every --eval_every steps
    Saving checkpoint/<run>/model-<step>  every --save_every steps, at --steps, and on Ctrl-C / SIGTERM
    interrupted

What changed (see docs/train.md): model-N holds exactly N updates; a checkpoint also stores the
optimizer state, the step and the random states, so a resumed run continues exactly as if it had not
stopped; saving is atomic; --accumulate_gradients averages; the update is one compiled function,
optionally in mixed precision, with recomputed blocks, and split across devices by tf.distribute.

Shapes: A = --accumulate_gradients, B = --batch_size (the global batch, over all replicas),
T = n_ctx (the window length), V = n_vocab.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

from gpt2_tf import checkpoint, checkpoint_files, lora, tasks
from gpt2_tf.checkpoint_files import CheckpointMismatch
from gpt2_tf.cli import Interrupted, UsageError, describe, read_held_out, text_format
from gpt2_tf.cli.train_checks import TrainingError, check_args, memory_warning, run_settings
from gpt2_tf.dataset import DatasetError, Sampler, count_documents, default_jobs, list_files, load_dataset
from gpt2_tf.devices import (
    default_compile,
    device_memory,
    emulated_bfloat16,
    is_chief,
    make_strategy,
    num_workers,
    summary,
)
from gpt2_tf.documents import HELD_OUT_FILE, Numbered, held_out
from gpt2_tf.encoder import Encoder, get_encoder
from gpt2_tf.files import WriteError, atomic_write
from gpt2_tf.hparams import HParams, save_hparams
from gpt2_tf.model import GPT2
from gpt2_tf.optim import DISPLAY_NAMES, learning_rate_schedule, make_optimizer
from gpt2_tf.run_checkpoints import (
    RunCheckpoints,
    load_train_state,
    read_counter,
    restore_optimizer,
    rng_state_from_json,
    rng_state_to_json,
)
from gpt2_tf.sample import Generator, sample_sequence
from gpt2_tf.score import WindowScorer, load_documents, score_documents, totals
from gpt2_tf.train_step import Evaluator, TrainStep, build_model, randomize, trained_variables

CURES = "Lower --learning_rate, set --grad_clip, or check the data"  # for a loss that is not finite


def say(*values):
    """Print a console line at once (the lines are read by people and by scripts). When the reader of
    the console has gone (`train.py | head`), the run goes on without it."""
    try:
        print(*values, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def current_learning_rate(optimizer):
    """The learning rate of the next update (a schedule evaluated at the optimizer's step)."""
    return float(tf.convert_to_tensor(optimizer.learning_rate).numpy())


class Events:
    """The run's TensorBoard event file (none when `folder` is None: a worker that is not the chief).

    Scalars are written with TensorFlow alone (tf.summary.scalar needs TensorBoard). A write that fails
    (a full disk) warns once and the run goes on without events; `failure` then says so.
    """

    def __init__(self, folder):
        self.failure = None
        self.writer = tf.summary.create_noop_writer()
        if folder is not None:
            self._try(lambda: setattr(self, "writer", tf.summary.create_file_writer(folder)), folder)
        self.folder = folder
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR)

    def scalar(self, tag, value, step):
        def write():
            with self.writer.as_default():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=self.metadata)

        self._try(write, self.folder)

    def flush(self):
        self._try(self.writer.flush, self.folder)

    def _try(self, write, folder):
        if self.failure:
            return
        try:
            write()
        except (OSError, tf.errors.OpError) as e:
            reason = f"cannot write the TensorBoard events in {folder}: {describe(e)}"
            print(f"warning: {reason}; training goes on without them", file=sys.stderr, flush=True)
            self.failure = f"the TensorBoard events could not be written ({reason})"
            self.writer = tf.summary.create_noop_writer()


# ---------------------------------------------------------------------------------------------------
# Data.


def load_chunks(enc, path, args, n_ctx, what="dataset", wanted=None):
    """load_dataset(...) -> (chunks, total tokens); problems, and data too small for n_ctx-token
    windows, become UsageError. `wanted`: which documents to keep (see load_dataset)."""
    try:
        chunks = load_dataset(enc, path, args.combine, encoding=args.encoding, errors=args.errors,
                              literal_endoftext=args.literal_endoftext, jobs=default_jobs(),
                              bin_dtype=args.bin_dtype, text_format=text_format(args), wanted=wanted)
        if not chunks:
            raise ValueError("no data found (does the path or pattern match any file?)")
        Sampler(chunks, seed=0).sample(n_ctx)  # the sampler's own check that windows fit
    except (OSError, ValueError) as e:
        message = str(e) if str(e).startswith(f"{path}:") else f"{path}: {e}"  # the path said once
        raise UsageError(f"{what} {message}") from None
    return chunks, sum(len(c) for c in chunks)


# ---------------------------------------------------------------------------------------------------
# Stopping on request.


class StopRequest:
    """Turns SIGINT and SIGTERM into a request to save and stop after the current step.

    A second SIGINT stops at once (KeyboardInterrupt) without saving; the last saved checkpoint
    stays intact.
    """

    def __init__(self):
        self.requested = False
        self.signum = None  # the first signal received
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = self.signum or signum


# ---------------------------------------------------------------------------------------------------
# The run: set-up, the loop, and what the loop does every so many steps.


class Progress:
    """Where the run is, as a checkpoint keeps it besides the weights and the optimizer: the step,
    the random states of the data sampler and of the input noise, and the running average loss."""

    def __init__(self, sampler, seed):
        self.step = 0
        self.sampler = sampler
        self.noise_rng = np.random.RandomState(None if seed is None else [seed, 1])
        self.avg_loss = (0.0, 0.0)  # decayed sums of the losses and of the counts
        self.last_saved = 0  # the step of the run's newest checkpoint

    def restore(self, state):
        """Continue from a checkpoint's state.json."""
        self.step = state["step"]
        self.sampler.rs.set_state(rng_state_from_json(state["sampler_rng"]))
        self.noise_rng.set_state(rng_state_from_json(state["noise_rng"]))
        self.avg_loss = tuple(state["avg_loss"])

    def state(self):
        """The JSON-friendly part of state.json that `restore` reads."""
        return {"sampler_rng": rng_state_to_json(self.sampler.rs),
                "noise_rng": rng_state_to_json(self.noise_rng), "avg_loss": list(self.avg_loss)}

    def update(self, loss):
        """Count one update and its loss."""
        self.step += 1
        self.avg_loss = (self.avg_loss[0] * 0.99 + loss, self.avg_loss[1] * 0.99 + 1.0)

    def average(self):
        return self.avg_loss[0] / self.avg_loss[1]


@dataclasses.dataclass
class Run:
    """What the loop's helpers share, made by `run` once everything is set up."""

    args: argparse.Namespace  # train.py's flags
    hparams: HParams
    enc: Encoder
    model: GPT2
    optimizer: keras.optimizers.Optimizer
    variables: dict  # {TF1 name: variable} of the trained variables
    train_step: TrainStep
    progress: Progress
    chief: bool  # whether this process writes (see is_chief)
    run_dir: str  # checkpoint/<run>
    sample_dir: str  # samples/<run>
    checkpoints: RunCheckpoints
    writer: Events
    evaluator: "Evaluator | None"
    val_batches: list  # sampled validation windows, or
    val_documents: "list | None"  # with --val_full, the whole validation data
    tasks: list  # --eval_task: [(task, [tasks.Item], their tasks.requests)]
    task_scorer: "WindowScorer | None"
    lora: "tuple | None"  # a LoRA run: (base checkpoint, lora.LoraConfig); `variables` are its factors
    generator: Generator
    sample_failure: "str | None" = None  # what could not be written, once a sample file could not
    start_time: float = dataclasses.field(default_factory=time.time)

    def elapsed(self):
        return time.time() - self.start_time


def run(args, checked=None):
    """Fine-tune as the parsed flags of train.py say. Returns the step reached.

    Raises UsageError (before any work) for bad flags or inputs. `checked`: what `check_args(args)`
    returned, when the caller has already checked the flags (train.py does, before importing
    TensorFlow); otherwise they are checked here. The run folder is held by this process until the
    run ends. Stopped by SIGINT or SIGTERM, it saves and raises cli.Interrupted.
    """
    checked = checked or check_args(args)
    with checked.lock or contextlib.nullcontext():
        r = set_up(args, checked)
        progress = r.progress

        # The loop: one update per step until --steps more, a stop request, or too many bad updates.
        say("Training...")
        end = None if args.steps is None else progress.step + args.steps
        skipped = 0  # steps in a row whose update was skipped
        data_problem = None  # a token file that changed or holds bad ids, found before its window was used
        with StopRequest() as stop:
            if args.val_every > 0 and progress.step == 0:
                validate(r)
            if r.tasks and progress.step == 0:
                evaluate_tasks(r)
            while not stop.requested and (end is None or progress.step < end):
                try:
                    batch = next_batch(r)
                except DatasetError as e:
                    data_problem = e
                    break
                loss, finite = r.train_step(*batch)
                if not finite:
                    skipped += 1
                    warn_nonfinite(r, loss, skipped)
                    if skipped > args.max_nonfinite:
                        break
                    continue
                skipped = 0
                progress.update(loss)
                step = progress.step
                r.writer.scalar("loss", loss, step)
                r.writer.scalar("learning_rate", current_learning_rate(r.optimizer), step)
                if step % args.print_every == 0 or step == end:
                    say(f"[{step} | {r.elapsed():2.2f}] loss={loss:2.2f} avg={progress.average():2.2f}")
                if args.sample_every and step % args.sample_every == 0:
                    generate_samples(r)
                if args.val_every > 0 and step % args.val_every == 0:
                    validate(r)
                if r.tasks and step % args.eval_every == 0:
                    evaluate_tasks(r)
                if args.save_every and step % args.save_every == 0:
                    save(r)
            if stop.requested:
                say("interrupted")
            # The end: the last steps are saved, whatever stopped the loop.
            if progress.step != progress.last_saved:
                save(r)
        r.writer.flush()
        say_how_it_ended(r, data_problem, skipped, stop)
        return progress.step


def set_up(args, checked):
    """The Run, ready for its first step: the devices, the tokenizer, the data, the model from where
    it starts, the optimizer and the compiled update."""
    hparams, base_dir, start = checked.hparams, checked.base_dir, checked.start
    strategy, compile_mode = choose_devices(args, hparams, checked.lora[1] if checked.lora else None)
    enc = load_encoder(base_dir, hparams)
    run_dir = os.path.join(args.checkpoint_dir, args.run_name)
    memory_saving = args.memory_saving_gradients or args.twremat
    announce(args, hparams, start, memory_saving)
    split = held_out_split(args, run_dir)
    chunks, val_chunks, val_documents = load_data(args, enc, hparams, split)

    with strategy.scope():
        model = build_model(hparams, args.mixed_precision, memory_saving=memory_saving,
                            residual_scaling=args.init == "scratch", restored=start is not None)
        if checked.lora:  # the base model frozen, LoRA's factors trained
            variables = lora.enable_lora(model, checked.lora[1], seed=args.seed)
        else:
            variables = trained_variables(model, args.only_train_transformer_layers)
        optimizer = build_optimizer(args, variables)
    chief = is_chief(strategy)
    if split and chief:
        record_split(split, run_dir)
    if checked.lora:
        restore_weights(model, checked.lora[0])
        if os.path.abspath(os.path.dirname(start)) == os.path.abspath(run_dir):  # resumed: its factors
            restore_adapter(variables, start)
    elif start is not None:
        restore_weights(model, start)
    elif chief:
        os.makedirs(run_dir, exist_ok=True)
        save_hparams(hparams, os.path.join(run_dir, "hparams.json"))  # the run's own shape
    progress = resume(args, start, run_dir, chunks, hparams.n_vocab, optimizer)

    train_step = TrainStep(model, optimizer, variables.values(), strategy, args.batch_size,
                           args.accumulate_gradients, hparams.n_ctx, jit_compile=compile_mode == "xla",
                           loss_scaling=args.mixed_precision == "fp16",
                           xla_update=not memory_saving and args.optimizer != "adafactor",
                           grad_clip=args.grad_clip)
    val_batches = []
    if val_documents is None:
        val_batches = validation_batches(args, val_chunks, hparams.n_ctx, hparams.n_vocab)
    evaluator = Evaluator(model, strategy, jit_compile=compile_mode == "xla") if val_batches else None
    eval_tasks = task_requests(checked.tasks, enc, hparams.n_ctx)
    task_scorer = WindowScorer(model, hparams.n_ctx, args.eval_batch_size) if eval_tasks else None
    checkpoints = RunCheckpoints(run_dir, max_to_keep=args.max_to_keep or None, keep_every_hours=2,
                                 aux_files={name: os.path.join(base_dir, name)
                                            for name in ("hparams.json", "encoder.json", "vocab.bpe")},
                                 new_count=args.restore_from == "fresh")
    return Run(args=args, hparams=hparams, enc=enc, model=model, optimizer=optimizer, variables=variables,
               train_step=train_step, progress=progress, chief=chief, run_dir=run_dir,
               checkpoints=checkpoints, writer=Events(run_dir if chief else None), evaluator=evaluator,
               val_batches=val_batches, val_documents=val_documents, tasks=eval_tasks,
               task_scorer=task_scorer, lora=checked.lora, generator=Generator(model),
               sample_dir=os.path.join(args.sample_dir, args.run_name))


def choose_devices(args, hparams, lora=None):
    """(strategy, compile mode) of the run, said on stderr with what the run will likely not fit
    (`lora`: a LoRA run's LoraConfig)."""
    strategy = make_strategy(args.distribute)
    check_replicas(args, strategy)
    compile_mode = args.compile if args.compile != "auto" else default_compile()
    print(f"Training on {summary(strategy, compile_mode)}", file=sys.stderr, flush=True)
    warning = memory_warning(hparams, args, device_memory(), xla=compile_mode == "xla", lora=lora)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    emulated = emulated_bfloat16() if args.mixed_precision == "bf16" else None
    if emulated:
        print(f"warning: {emulated} has no bfloat16 arithmetic (it is emulated, slower than float32); "
              "--mixed_precision fp16 is its half precision", file=sys.stderr, flush=True)
    if args.mixed_precision is None:
        tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 means fp32, as NS-2021
    return strategy, compile_mode


def check_replicas(args, strategy):
    """Refuse a batch that does not split among the replicas, and several workers without a seed."""
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        raise UsageError(f"--batch_size {args.batch_size} must be a multiple of the {replicas} replicas")
    if num_workers(strategy) > 1 and args.seed is None:
        raise UsageError("--seed is needed with several workers: they draw the same batches")
    if replicas > 1:
        print(f"Training on {replicas} replicas, {args.batch_size // replicas} windows each",
              file=sys.stderr)


def load_encoder(base_dir, hparams):
    """The base model's tokenizer; refused when it has more tokens than the model's vocabulary."""
    enc = get_encoder(os.path.basename(base_dir), os.path.dirname(base_dir))
    if len(enc.encoder) > hparams.n_vocab:
        raise UsageError(f"the tokenizer of {base_dir} has {len(enc.encoder)} tokens, more than n_vocab = "
                         f"{hparams.n_vocab}")
    return enc


def announce(args, hparams, start, memory_saving):
    """The first lines of a run: the optimizer, memory saving, and the model it starts from."""
    print(f"Using {DISPLAY_NAMES[args.optimizer]} optimizer", file=sys.stderr)
    if memory_saving:
        print("Recomputing each block in the backward pass (memory saving)", file=sys.stderr)
    if start is None:
        say(f"Initialising a new model: {hparams.n_layer} layers, n_embd {hparams.n_embd}, n_head "
            f"{hparams.n_head}, n_ctx {hparams.n_ctx}, n_vocab {hparams.n_vocab} "
            f"({hparams.n_params():,} parameters)")
    else:
        say(f"Loading checkpoint {start}")


def load_data(args, enc, hparams, split=None):
    """(training chunks, validation chunks, validation documents or None): --dataset, and for
    validation --val_dataset, the documents `split` holds out (see held_out_split; they are then left
    out of training) or the training data; with --val_full, whole documents to score."""
    say("Loading dataset...")
    kept = Numbered(split["held_out"], inside=False) if split else None
    chunks, total_tokens = load_chunks(enc, args.dataset, args, hparams.n_ctx, wanted=kept)
    val_chunks, val_documents = chunks, None
    if args.val_every > 0 and args.val_full:
        val_documents = load_validation_documents(enc, args, hparams.n_vocab, split)
    elif args.val_every > 0 and split:
        val_chunks, _ = load_chunks(enc, args.dataset, args, hparams.n_ctx, "held-out documents of",
                                    Numbered(split["held_out"], inside=True))
    elif args.val_every > 0 and args.val_dataset:
        val_chunks, _ = load_chunks(enc, args.val_dataset, args, hparams.n_ctx, "validation dataset")
    say(f"dataset has {total_tokens} tokens")
    return chunks, val_chunks, val_documents


def held_out_split(args, run_dir):
    """--val_split's record of the run, None without it: {"dataset" (its absolute path), "val_split",
    "val_split_seed", "documents" (how many --dataset holds), "held_out" (their numbers, from 0, in
    the order of dataset.count_documents), "text_format", "encoding", "errors", "bin_dtype"}. A run that
    already holds documents out (its held_out.json) must hold out the same ones (UsageError)."""
    if args.val_split is None:
        return None
    fmt = text_format(args)
    try:
        n = count_documents(args.dataset, args.encoding, args.errors, fmt, args.bin_dtype)
    except DatasetError as e:
        raise UsageError(f"dataset {e}") from None
    if n < 2:
        raise UsageError(f"--val_split: --dataset {args.dataset} is one document; a split needs at least two "
                         "(a folder of files, a .csv or .jsonl file, or --line_by_line)")
    split = {"dataset": os.path.abspath(args.dataset), "val_split": args.val_split,
             "val_split_seed": args.val_split_seed, "documents": n,
             "held_out": held_out(n, args.val_split, args.val_split_seed), "text_format": fmt._asdict(),
             "encoding": args.encoding, "errors": args.errors, "bin_dtype": args.bin_dtype}
    recorded = read_held_out(run_dir)
    if recorded is None:
        return split
    if [recorded["documents"], recorded["held_out"]] != [n, split["held_out"]]:
        was = f"{len(recorded['held_out'])} of {recorded['documents']}"
        path = os.path.join(run_dir, HELD_OUT_FILE)
        raise UsageError(f"run {args.run_name} held out other documents ({path}: {was}; now "
                         f"{len(split['held_out'])} of {n}): the dataset, --val_split or --val_split_seed "
                         "changed; resume with those of the run, or give another --run_name")
    return split


def record_split(split, run_dir):
    """Write the run's held_out.json (see held_out_split), which score.py --held_out reads."""
    os.makedirs(run_dir, exist_ok=True)
    with atomic_write(os.path.join(run_dir, HELD_OUT_FILE), "utf-8") as f:
        json.dump(split, f, indent=1)
        f.write("\n")


def build_optimizer(args, variables):
    """The optimizer of --optimizer with its learning-rate schedule, built for `variables` {name: var}."""
    learning_rate = learning_rate_schedule(args.learning_rate, args.warmup_steps,
                                           args.lr_decay_steps or args.steps, args.min_lr)
    optimizer = make_optimizer(args.optimizer, learning_rate, args.mixed_precision == "fp16",
                               args.weight_decay)
    if args.optimizer == "adamw":  # no decay of biases and norm gains, as usual for GPT models
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables.values() if len(v.shape) == 1])
    optimizer.build(list(variables.values()))
    return optimizer


def restore_adapter(variables, start):
    """Load a LoRA run's checkpoint (its factors alone) into the factors {TF1 name: variable}."""
    stored = checkpoint.read(start)
    if set(stored) != set(variables) or any(stored[n].shape != tuple(v.shape) for n, v in variables.items()):
        raise UsageError(f"checkpoint {start} does not hold the LoRA factors of this run's lora.json")
    for name, variable in variables.items():
        variable.assign(stored[name])


def restore_weights(model, start):
    """Load the checkpoint to start from; one of another shape is bad usage (UsageError)."""
    try:
        checkpoint.restore(model, start)
    except CheckpointMismatch as e:
        raise UsageError(str(e)) from None


def resume(args, start, run_dir, chunks, n_vocab, optimizer):
    """The run's Progress: from the checkpoint's state when it has one (written by this trainer),
    with its optimizer state loaded; from the run's counter for a run of the original trainer;
    otherwise a new count."""
    progress = Progress(Sampler(chunks, seed=args.seed, n_vocab=n_vocab), args.seed)
    saved = load_train_state(start) if start is not None and args.restore_from != "fresh" else None
    in_run_dir = start is not None and os.path.abspath(os.path.dirname(start)) == os.path.abspath(run_dir)
    if saved is not None:
        state, arrays = saved
        progress.restore(state)
        with checkpoint.readable(start):
            problem = restore_optimizer(optimizer, args.optimizer, state, arrays)
        if problem:
            print(f"warning: the optimizer state of {start} is not used: {problem}", file=sys.stderr)
    elif args.restore_from != "fresh" and in_run_dir:
        progress.step = read_counter(run_dir) or 0
    progress.last_saved = progress.step if in_run_dir else 0
    return progress


def validation_batches(args, chunks, n_ctx, n_vocab):
    """The fixed validation windows: --val_batch_count batches of --val_batch_size, drawn with seed 1."""
    if args.val_every <= 0:
        return []
    sampler = Sampler(chunks, seed=1, n_vocab=n_vocab)
    # Copies: windows of a memory-mapped file would be read again at each validation.
    return [[np.array(sampler.sample(n_ctx)) for _ in range(args.val_batch_size)]
            for _ in range(args.val_batch_count)]


def next_batch(r):
    """(inputs, labels) [A, B, T] int32: the next windows of the data, and them with the input noise."""
    args, n_ctx = r.args, r.hparams.n_ctx
    count = args.accumulate_gradients * args.batch_size
    windows = np.stack([r.progress.sampler.sample(n_ctx) for _ in range(count)]).astype(np.int32)
    labels = windows.reshape(args.accumulate_gradients, args.batch_size, n_ctx)
    return randomize(labels, args.noise, r.hparams.n_vocab, r.progress.noise_rng), labels


def warn_nonfinite(r, loss, skipped):
    """The warning for a step whose loss or gradients were not finite on some replica: its update was
    skipped (and with float16 loss scaling, which overflows now and then by design, the scale halved)."""
    step = r.progress.step + 1
    what = "the loss or the gradients are not finite"
    if r.args.mixed_precision == "fp16":
        scale = float(tf.convert_to_tensor(r.optimizer.dynamic_scale))
        what = f"the loss or the float16 gradients are not finite; the loss scale is now {scale:g}"
    print(f"warning: [{step} | {r.elapsed():2.2f}] loss={loss:2.2f}: {what}; update skipped ({skipped} in a "
          "row)", file=sys.stderr, flush=True)


def save(r):
    """Write checkpoint model-<step> of the run (the chief does; every worker says it). A write that
    fails (a full disk) stops the run with a TrainingError; the run's newest complete checkpoint stays
    its newest, and nothing of the failed one is left."""
    step = r.progress.step
    prefix = os.path.join(r.run_dir, f"model-{step}")
    say(f"Saving {prefix}")
    if r.chief:
        state = {**r.progress.state(), "optimizer": r.args.optimizer, "seed": r.args.seed,
                 "trained_variables": list(r.variables), "settings": run_settings(r.args)}
        try:
            if r.lora:
                lora.write_record(r.run_dir, *r.lora)
            r.checkpoints.save(step, r.model, r.optimizer, state, adapter=r.variables if r.lora else None)
        except (OSError, tf.errors.OpError) as e:
            newest = checkpoint_files.read_state_file(r.run_dir)
            kept = (f"its newest checkpoint is still {os.path.join(r.run_dir, newest[-1])}" if newest
                    else "it has no checkpoint")
            raise TrainingError(f"could not save {prefix}: {describe(e)}; the run stopped at step {step}, "
                                f"and {kept}") from None
    r.progress.last_saved = step


def generate_samples(r):
    """--sample_num samples after a token drawn from the training data, into samples/<run>/samples-<step>."""
    args = r.args
    say("Generating samples...")
    context_token = r.progress.sampler.sample(1)  # from the training sampler, as in the original
    if not r.chief:
        return
    if args.top_p > 0:
        top_k, top_p = 0, args.top_p  # as in the original trainer, --top_p > 0 overrides --top_k
    else:
        top_k, top_p = args.top_k, 1.0
    context = np.tile(np.asarray(context_token, np.int32)[None, :1], [args.batch_size, 1])
    texts = []
    while len(texts) < args.sample_num:
        seed = None
        if args.seed is not None:
            seed = int(np.random.RandomState([args.seed, r.progress.step, len(texts)]).randint(2**31))
        out = sample_sequence(r.model, args.sample_length, context=context, temperature=1.0,
                              top_k=top_k, top_p=top_p, seed=seed, generator=r.generator)
        for row in out[:min(args.sample_num - len(texts), args.batch_size)]:
            texts.append(f"======== SAMPLE {len(texts) + 1} ========\n{r.enc.decode(row)}\n")
    if texts:
        say(texts[-1])
    path = os.path.join(r.sample_dir, f"samples-{r.progress.step}")
    try:
        os.makedirs(r.sample_dir, exist_ok=True)
        with atomic_write(path, encoding=args.encoding, errors="replace") as f:
            f.write("\n".join(texts))
    except OSError as e:  # a full disk: the run goes on, and ends saying what was not written
        reason = str(e) if isinstance(e, WriteError) else f"cannot write {path}: {describe(e)}"
        print(f"warning: {reason}; training goes on", file=sys.stderr, flush=True)
        r.sample_failure = r.sample_failure or (f"the samples of step {r.progress.step} and after could not "
                                                f"be written ({reason})")


def validate(r):
    """The validation loss, printed, and written to TensorBoard with val_ppl and val_accuracy: over the
    sampled batches (the original's estimate), or with --val_full over all of the validation data, each
    document scored as score.py scores it (n_ctx windows, stride n_ctx // 2, after <|endoftext|>)."""
    say("Calculating validation loss...")
    if r.val_documents is not None:
        n_ctx = r.hparams.n_ctx
        with tqdm(total=sum(len(d.tokens) for d in r.val_documents), unit="tok") as bar:
            scored = score_documents(r.model, r.val_documents, n_ctx, n_ctx // 2, progress=bar.update,
                                     eot=r.enc.eot_token)
        total = totals(scored)
        loss, accuracy = total["loss"], total["accuracy"]
    else:
        results = [r.evaluator(batch) for batch in tqdm(r.val_batches)]
        loss, accuracy = (float(np.mean(values)) for values in zip(*results))
    step = r.progress.step
    r.writer.scalar("val_loss", loss, step)
    r.writer.scalar("val_ppl", float(np.exp(min(loss, 700))), step)
    r.writer.scalar("val_accuracy", accuracy, step)
    r.writer.flush()
    say(f"[{step} | {r.elapsed():2.2f}] validation loss = {loss:2.2f}")


def task_requests(specs, enc, n_ctx):
    """--eval_task's items (specs: Checked.tasks) tokenized once: [(task, items, their tasks.requests)]."""
    from gpt2_tf.fast_encoder import fastest_encode

    encode = fastest_encode(enc)
    try:
        return [(task, items, tasks.requests(items, encode, enc.eot_token, n_ctx))
                for task, _, items in specs]
    except tasks.TaskError as e:
        raise UsageError(f"--eval_task: {e}") from None


def evaluate_tasks(r):
    """Each --eval_task, scored as score.py --task scores it, printed and written to TensorBoard as
    TASK/acc, and TASK/acc_norm (HellaSwag) or TASK/ppl (LAMBADA)."""
    step = r.progress.step
    for task, items, found in r.tasks:
        with tqdm(total=sum(count for _, count in found), unit="tok", desc=f"Evaluating {task}") as bar:
            figures = tasks.summary(task, tasks.evaluate(r.task_scorer, task, items, found, bar.update))
        shown = [f"acc = {100 * figures['acc']:.2f}%"]
        if tasks.multiple_choice(task):
            shown.append(f"acc_norm = {100 * figures['acc_norm']:.2f}%")
        else:
            shown.append(f"ppl = {figures['ppl']:.3f}")
        for name in ("acc", "acc_norm", "ppl"):
            if name in figures:
                r.writer.scalar(f"{task}/{name}", figures[name], step)
        say(f"[{step} | {r.elapsed():2.2f}] {task} {' '.join(shown)} ({len(items)} items)")
    r.writer.flush()


def load_validation_documents(enc, args, n_vocab, split=None):
    """--val_full's documents: those of --val_dataset (default --dataset: with a `split`, the documents
    it holds out), as score.py reads them."""
    path = args.val_dataset or args.dataset
    wanted = Numbered(split["held_out"], inside=True) if split else None
    try:
        documents = load_documents(enc, list_files(path, args.encoding), text_format(args), args.encoding,
                                   args.errors, n_vocab=n_vocab, bin_dtype=args.bin_dtype, wanted=wanted)
    except DatasetError as e:
        raise UsageError(f"validation dataset {e}") from None
    if not any(len(d.tokens) for d in documents):
        raise UsageError(f"validation dataset {path}: no tokens to score")
    return documents


def say_how_it_ended(r, data_problem, skipped, stop):
    """Raise what ended the run early (its last steps are saved by then): a token file that changed,
    too many non-finite steps, a signal (cli.Interrupted), outputs that could not be written."""
    step, run_dir = r.progress.step, r.run_dir
    if data_problem is not None:
        raise TrainingError(f"{data_problem} (stopped at step {step}, saved in {run_dir})")
    if skipped > r.args.max_nonfinite:
        raise TrainingError(f"the loss or the gradients were not finite at {skipped} steps in a row; "
                            f"stopped with the weights of step {step}, the last good ones (in {run_dir}). "
                            + CURES)
    if stop.requested:
        raise Interrupted(f"interrupted; saved {os.path.join(run_dir, f'model-{step}')}", stop.signum)
    unwritten = [what for what in (r.sample_failure, r.writer.failure) if what]
    if unwritten:
        raise TrainingError(f"trained to step {step} and saved it in {run_dir}, but "
                            + " and ".join(unwritten))
