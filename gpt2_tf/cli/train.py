"""train.py: fine-tune GPT-2, or train one from scratch, with the nshepperd trainer's flags and files.
The flags, their checks (gpt2_tf/cli/train_checks.py, before TensorFlow is imported), then `train`,
the work (gpt2_tf/cli/train_loop.py). This module does not import TensorFlow.
"""

import os
import sys

from gpt2_tf.checkpoint_files import CheckpointError
from gpt2_tf.cli import (
    Parser,
    add_bin_dtype_flag,
    add_document_flags,
    add_text_flags,
    default,
    integer,
    number,
    run_script,
)

COUNT = integer(0)
# --lora_targets: the names of the flag, the layers of lora.TARGETS.
LORA_TARGETS = {"c_attn": "attn/c_attn", "c_proj": "attn/c_proj", "c_fc": "mlp/c_fc",
                "mlp/c_proj": "mlp/c_proj"}
POSITIVE = integer(1)


def make_parser():
    p = Parser(description="Fine-tune GPT-2 on your custom dataset.")
    add_data_flags(p)
    add_update_flags(p)
    add_scratch_flags(p)
    add_run_flags(p)
    p.add_verbose()
    return p


def add_data_flags(p):
    """--dataset and how it is read, the base model."""
    add = p.add_argument
    add("--dataset", metavar="PATH", required=True,
        help="training data: a text file, a folder, a glob pattern, .npz files from encode.py (memory-mapped "
             "when written uncompressed), or nanoGPT's .bin files (memory-mapped)")
    add("--model_name", metavar="MODEL", default="124M", help="base model, a folder in --models_dir")
    add("--models_dir", metavar="PATH", default="models",
        help="folder of downloaded models (hparams, weights and tokenizer are read from it)")
    add("--combine", metavar="CHARS", type=COUNT, default=50000,
        help="join small text files (separated by <|endoftext|>) into chunks of at least CHARS characters")
    add_text_flags(p)
    add_bin_dtype_flag(p)
    add("--literal_endoftext", action="store_true",
        help="separate text files by the text <|endoftext|> (7 tokens, as the original) instead of "
             "the <|endoftext|> token")
    add_document_flags(p)


def add_update_flags(p):
    """The update: batch, optimizer, precision, compile mode, devices, seed, steps."""
    add = p.add_argument
    add("--batch_size", metavar="SIZE", type=POSITIVE, default=1,
        help="windows per update (the global batch, split across devices); also samples per batch")
    add("--learning_rate", metavar="LR", type=number(above=0), default=default(0.00002),
        help="constant learning rate (a resumed run keeps its own, unless given)")
    add("--accumulate_gradients", metavar="N", type=POSITIVE, default=1,
        help="average the gradients of N batches per update (N x batch_size windows per update)")
    add("--memory_saving_gradients", action="store_true",
        help="recompute each block's activations in the backward pass: same results, less memory")
    add("--twremat", action="store_true", help="same as --memory_saving_gradients (per-block recomputation)")
    add("--twremat_memlimit", default="12G",
        help="accepted for compatibility (bytes, or with K/M/G suffix); recomputation is per block")
    add("--only_train_transformer_layers", action="store_true",
        help="train only the transformer blocks (not wte, wpe, ln_f)")
    add("--lora_rank", metavar="R", type=COUNT, default=0,
        help="LoRA: freeze the model and train rank-R factors beside --lora_targets (0: train the weights)")
    add("--lora_alpha", metavar="ALPHA", type=number(above=0), default=None,
        help="LoRA's update is scaled by ALPHA / R (default ALPHA = R)")
    add("--lora_dropout", metavar="P", type=number(low=0, below=1), default=0.0,
        help="dropout on the input of LoRA's factors while training")
    add("--lora_targets", nargs="+", choices=list(LORA_TARGETS), default=["c_attn"],
        help="the layers of each block that get LoRA factors")
    add("--optimizer", default=default("adam"), choices=["adam", "sgd", "adafactor", "adamw"],
        help="adafactor and sgd need less memory than adam; adamw (with --weight_decay) is for "
             "training from scratch (a resumed run keeps its own optimizer and schedule, unless given)")
    add("--noise", type=number(low=0, high=1), default=0.0,
        help="replace each input token by a random one with this probability (labels stay clean)")
    add("--mixed_precision", choices=["bf16", "fp16"], default=None,
        help="compute in bfloat16 or float16 (with loss scaling); weights stay float32")
    add("--compile", choices=["auto", "xla", "graph"], default="auto",
        help="compile the update with XLA or as a TensorFlow graph (auto: XLA on GPU/TPU, graph on CPU)")
    add("--distribute", choices=["auto", "none", "mirrored", "multiworker", "tpu"], default="auto",
        help="tf.distribute strategy (auto: TPU if TPU_NAME, workers if TF_CONFIG, all GPUs if several)")
    add("--seed", type=integer(0, 2**31 - 1), default=None,
        help="seed for the data sampler, the noise and the samples (default: random); "
             "a resumed run keeps its saved random state")
    add("--steps", metavar="N", type=COUNT, default=None,
        help="stop after N updates in this run and save (default: run until interrupted)")

    add("--print_every", metavar="N", type=POSITIVE, default=1, help="print the loss line every N steps")


def add_scratch_flags(p):
    """Training from scratch: the shape of a new model, and the schedule."""
    scratch = p.add_argument_group("training from scratch")
    scratch.add_argument("--init", choices=["pretrained", "scratch"], default="pretrained",
                         help="scratch: a new model initialised as GPT-2 was, with the tokenizer and "
                              "hparams.json of --model_name (e.g. a folder written by train_bpe.py)")
    for key in ("n_ctx", "n_embd", "n_head", "n_layer"):
        scratch.add_argument(f"--{key}", type=POSITIVE, default=None,
                             help=f"with --init scratch: override {key} of hparams.json")
    scratch.add_argument("--weight_decay", type=number(low=0), default=default(0.1),
                         help="for --optimizer adamw")
    scratch.add_argument("--warmup_steps", metavar="N", type=COUNT, default=default(0),
                         help="raise the learning rate linearly over the first N updates")
    scratch.add_argument("--min_lr", metavar="LR", type=number(low=0), default=None,
                         help="decay the learning rate to LR along a cosine, reaching it at update "
                              "--lr_decay_steps (default: constant learning rate)")
    scratch.add_argument("--lr_decay_steps", metavar="N", type=POSITIVE, default=None,
                         help="update at which the cosine decay ends (default: --steps)")
    scratch.add_argument("--grad_clip", metavar="NORM", type=number(above=0), default=None,
                         help="clip the gradients to this global norm (default: no clipping)")


def add_run_flags(p):
    """What a run writes and reads: samples, checkpoints, validation, when to give up."""
    add = p.add_argument
    add("--top_k", type=COUNT, default=40, help="top-k for the samples made during training")
    add("--top_p", type=number(low=0, high=1), default=0.0,
        help="top-p for those samples; > 0 overrides --top_k")
    add("--restore_from", default="latest",
        help='"latest" (of this run, else the base model), "fresh" (the base model, a new count), '
             "or a checkpoint folder or prefix")
    add("--run_name", default="run1", help="subfolder of --checkpoint_dir and --sample_dir")
    add("--checkpoint_dir", metavar="PATH", default="checkpoint", help="folder of run checkpoints")
    add("--sample_dir", metavar="PATH", default="samples", help="folder of run samples")
    add("--sample_every", metavar="N", type=COUNT, default=100, help="write samples every N steps (0: never)")
    add("--sample_length", metavar="TOKENS", type=POSITIVE, default=None,
        help="tokens per sample (default: n_ctx - 1, 1023 for the released models)")
    add("--sample_num", metavar="N", type=COUNT, default=1, help="samples each time")
    add("--save_every", metavar="N", type=COUNT, default=1000,
        help="save a checkpoint every N steps (0: only at the end)")
    add("--max_to_keep", metavar="N", type=COUNT, default=5,
        help="keep the N newest checkpoints (0: all), plus one every two hours")

    add("--val_dataset", metavar="PATH", default=None, help="validation data (default: --dataset)")
    add("--val_split", metavar="F", type=number(above=0, below=1), default=None,
        help="hold out this fraction of --dataset's documents (files, CSV rows, JSON Lines records, lines "
             "with --line_by_line, arrays of token files): validate on them, never train on them")
    add("--val_split_seed", metavar="SEED", type=COUNT, default=0,
        help="which documents --val_split holds out (independent of --seed)")
    add("--val_batch_size", metavar="SIZE", type=POSITIVE, default=2, help="windows per validation batch")
    add("--val_batch_count", metavar="N", type=POSITIVE, default=40, help="validation batches")
    add("--val_every", metavar="STEPS", type=COUNT, default=0, help="validate every STEPS steps (0: never)")
    add("--val_full", action="store_true",
        help="validate on all of the validation data, scored as score.py does, instead of sampled batches")
    add("--eval_task", metavar="TASK=FILE", action="append", default=None,
        help="evaluate a benchmark as score.py --task does, every --eval_every steps: hellaswag=FILE "
             "(hellaswag_val.jsonl) or lambada=FILE (lambada_test.jsonl); may be given more than once")
    add("--eval_every", metavar="STEPS", type=POSITIVE, default=250,
        help="evaluate --eval_task every STEPS steps (and before the first update)")
    add("--eval_items", metavar="N", type=COUNT, default=0,
        help="evaluate the first N items of each --eval_task file (0: all of them)")
    add("--eval_batch_size", metavar="SIZE", type=POSITIVE, default=8, help="sequences scored together")
    add("--max_nonfinite", metavar="N", type=COUNT, default=10,
        help="an update whose loss or gradients are not finite (NaN or infinity) is skipped; after N "
             "such steps in a row, save the last good weights and stop with an error (0: at the first)")


def parse_args(argv=None):
    return make_parser().parse_args(argv)


def check_args(args):
    from gpt2_tf.cli.train_checks import check_args

    return check_args(args)  # before TensorFlow is imported: bad usage is told at once


def train(args, checked):
    """What train.py does once its flags are checked (gpt2_tf/cli/train_loop.py)."""
    if checked.lora or args.memory_saving_gradients or args.twremat:
        # Runs sized to the memory: TensorFlow's x86 builds give oneDNN an allocator that keeps freed
        # memory in a pool, which held a 1558M LoRA run at 11.0 GiB instead of 9.4; the system allocator
        # returns it, for 0.88-0.95x the speed of a 124M update (docs/performance.md). Read when
        # TensorFlow makes its first tensor; TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0 keeps the pool.
        os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    from gpt2_tf.cli.train_loop import run

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    return run(args, checked)


def main(argv=None):
    from gpt2_tf.cli.train_checks import TrainingError
    from gpt2_tf.dataset import DatasetError

    return run_script("train.py", make_parser, check_args, train, (CheckpointError, TrainingError),
                      "the newest checkpoint of the run stays as it was", argv, bad_input=(DatasetError,))

