#!/usr/bin/env python3
"""The accelerator path in one command: training and sampling speed, memory, and a correctness check.

    python bench/gpu_check.py            # on whatever accelerator TensorFlow sees (a few minutes)

On an accelerator it runs, with the default compile mode for the device (gpt2_tf.train.default_compile,
gpt2_tf.sample.default_jit_compile) and random weights:
- a few training updates of the 124M shape (batch 1 x 1024, Adam), in float32 and in bfloat16 mixed
  precision: tokens per second, model FLOPs utilisation against the device's peak, peak device memory;
- sampling at batch 1 and 8 (64 new tokens after a 16-token prompt): tokens per second;
- one --memory_saving_gradients update of the 1558M shape with SGD, when it fits;
- one update split across two replicas (MirroredStrategy), when there are two devices;
- a correctness line: a tiny model's logits, loss and gradients, and its greedy tokens, on the
  accelerator against the CPU.
Without an accelerator it says so, runs the same steps on tiny shapes on the CPU (a smoke run that the
test suite uses, so that the script cannot rot), and exits 0.

Model FLOPs per token: 6 x parameters + 12 x n_layer x n_ctx x n_embd (forward and backward, the
attention scores included). Peaks are the vendors' dense figures for the precision used (TF32 for
float32, as TensorFlow uses on recent GPUs unless told otherwise); --peak_tflops overrides.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2_tf.cli import Parser, integer, number, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow("--verbose" in sys.argv)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpt2_tf.hparams import HParams, released  # noqa: E402
from gpt2_tf.optim import make_optimizer  # noqa: E402
from gpt2_tf.sample import Generator, sample_sequence  # noqa: E402
from gpt2_tf.train import TrainStep, build_model, default_compile, trained_variables, window_scores  # noqa: E402

TINY = HParams(n_vocab=512, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
# Dense peak TFLOP/s by device name: (float32 as TF32, bfloat16/float16).
PEAKS = {"H200": (495, 989), "H100": (495, 989), "A100": (156, 312), "L4": (60, 121), "A10": (62, 125),
         "V100": (15.7, 125), "T4": (8.1, 65), "L40": (90, 181)}


def accelerator():
    """(device type, names of the devices, their description) of TensorFlow's accelerators, or None."""
    for kind in ("GPU", "TPU"):
        devices = tf.config.list_logical_devices(kind)
        if devices:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices(kind)[0]) \
                if kind == "GPU" else {}
            return kind, [d.name for d in devices], details.get("device_name", kind)
    return None


def flops_per_token(hp):
    return 6 * hp.n_params() + 12 * hp.n_layer * hp.n_ctx * hp.n_embd


def peak_memory_gib(device):
    try:
        return tf.config.experimental.get_memory_info(device)["peak"] / (1 << 30)
    except (ValueError, tf.errors.OpError):
        return float("nan")


def reset_memory(device):
    try:
        tf.config.experimental.reset_memory_stats(device)
    except (ValueError, tf.errors.OpError):
        pass


def train_speed(hp, precision=None, steps=3, batch=1, memory_saving=False, optimizer="adam", strategy=None):
    """Tokens per second of `steps` updates after one warm-up update (random weights and tokens)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(hp, precision, memory_saving=memory_saving)
        variables = trained_variables(model)
        opt = make_optimizer(optimizer, 1e-5, loss_scaling=precision == "fp16")
        opt.build(list(variables.values()))
    step = TrainStep(model, opt, variables.values(), strategy, batch, 1, hp.n_ctx,
                     jit_compile=default_compile() == "xla", loss_scaling=precision == "fp16",
                     xla_update=not memory_saving and optimizer != "adafactor")
    tokens = np.random.RandomState(0).randint(0, hp.n_vocab, (1, batch, hp.n_ctx)).astype(np.int32)
    loss, finite = step(tokens, tokens)
    start = time.perf_counter()
    for _ in range(steps):
        loss, finite = step(tokens, tokens)
    seconds = time.perf_counter() - start
    assert finite, f"the loss is not finite ({loss})"
    return steps * batch * hp.n_ctx / seconds


def sample_speed(hp, batch, new_tokens=64, prompt=16):
    new_tokens = min(new_tokens, hp.n_ctx - prompt)
    model = build_model(hp)
    generator = Generator(model)
    context = np.random.RandomState(1).randint(0, hp.n_vocab, (batch, prompt))
    sample_sequence(model, new_tokens, context=context, top_k=40, seed=1, generator=generator)  # compiles
    start = time.perf_counter()
    sample_sequence(model, new_tokens, context=context, top_k=40, seed=2, generator=generator)
    return batch * new_tokens / (time.perf_counter() - start)


def tiny_results(device):
    """The tiny model's logits, loss gradients and greedy tokens, computed on `device`."""
    with tf.device(device):
        keras.utils.set_random_seed(0)
        model = build_model(TINY)
        tokens = np.random.RandomState(2).randint(0, TINY.n_vocab, (2, TINY.n_ctx)).astype(np.int32)
        variables = list(trained_variables(model).values())
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(window_scores(model, tokens, tokens)["loss"])
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
        logits = model(tokens)["logits"].numpy()
        greedy = sample_sequence(model, 16, context=tokens[:, :8], temperature=0)
    return logits, float(loss), grads, greedy


def correctness(device):
    """One line: does `device` compute what the CPU does for the tiny model?"""
    ours, theirs = tiny_results(device), tiny_results("/CPU:0")
    logits = np.abs(ours[0] - theirs[0]).max() / np.abs(theirs[0]).max()
    grads = max(np.abs(a - b).max() / (np.abs(b).max() + 1e-12) for a, b in zip(ours[2], theirs[2]))
    same_tokens = (ours[3] == theirs[3]).mean()
    ok = logits < 1e-3 and grads < 1e-2 and abs(ours[1] - theirs[1]) < 1e-3 and same_tokens > 0.9
    return (f"correctness against the CPU: {'match' if ok else 'MISMATCH'} (logits {logits:.1e} relative, "
            f"loss {ours[1]:.5f} vs {theirs[1]:.5f}, gradients {grads:.1e} relative, greedy tokens "
            f"{same_tokens:.0%} equal)"), ok


def report(name, tokens_per_s, hp, peak, device):
    mfu = tokens_per_s * flops_per_token(hp) / (peak * 1e12) if peak else float("nan")
    memory = peak_memory_gib(device)
    print(f"{name}: {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}, peak memory {memory:.2f} GiB", flush=True)


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak_tflops", type=number(above=0), nargs=2, metavar=("FP32", "BF16"),
                        help="the device's dense peak TFLOP/s (default: from its name, where known)")
    parser.add_argument("--steps", type=integer(1), default=3,
                        help="timed training updates per configuration")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args()
    found = accelerator()
    ok = True
    if found is None:
        print("no accelerator found: a tiny smoke run on the CPU instead")
        device, hp, label, big, peaks = "CPU:0", TINY, "tiny", None, (None, None)
        line, ok = correctness("/CPU:0")
        print(line)
    else:
        kind, devices, name = found
        device = devices[0].split("device:")[-1]
        hp, label, big = released("124M"), "124M", released("1558M")
        peaks = args.peak_tflops or next((p for key, p in PEAKS.items() if key in name), (None, None))
        print(f"{len(devices)} x {name} ({kind}); compile: {default_compile()}; peak TFLOP/s: {peaks}")
        line, ok = correctness(devices[0])
        print(line, flush=True)
    for precision, peak in ((None, peaks[0]), ("bf16", peaks[1])):
        reset_memory(device)
        speed = train_speed(hp, precision, args.steps)
        report(f"train {label} {precision or 'fp32'}", speed, hp, peak, device)
    for batch in (1, 8):
        print(f"sample {label} batch {batch}: {sample_speed(hp, batch):,.0f} tokens/s", flush=True)
    if big is not None:
        reset_memory(device)
        try:
            speed = train_speed(big, steps=1, memory_saving=True, optimizer="sgd")
            report("train 1558M fp32, --memory_saving_gradients, SGD", speed, big, peaks[0], device)
        except tf.errors.ResourceExhaustedError:
            print("train 1558M: skipped, out of device memory")
        if len(found[1]) >= 2:
            strategy = tf.distribute.MirroredStrategy(found[1][:2])
            speed = train_speed(hp, steps=args.steps, batch=2, strategy=strategy)
            print(f"train 124M fp32 on 2 replicas (MirroredStrategy): {speed:,.0f} tokens/s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
