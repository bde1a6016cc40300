#!/usr/bin/env python3
"""The accelerator path in one command: training and sampling speed, memory, and what ran where.

    python bench/gpu_check.py            # on whatever accelerator TensorFlow sees (a few minutes)

On an accelerator it runs, with the default compile mode for the device (gpt2_tf.devices.default_compile,
gpt2_tf.sample.default_jit_compile) and random weights:
- a few training updates of the 124M shape (batch 1 x 1024, Adam) in float32 (TF32 off, as train.py
  has it), bfloat16 and float16 mixed precision: tokens per second, model FLOPs utilisation against the
  device's peak for that precision, peak device memory; bfloat16 is marked emulated on GPUs without it
  (compute capability below 8.0: T4, V100), and its MFU is then against the float32 peak;
- the same update under `--distribute mirrored` on one device, and with `--grad_clip 1.0`;
- sampling at batch 1 and 8 (64 new tokens after a 16-token prompt): tokens per second;
- one --memory_saving_gradients update of the 1558M shape with SGD, when it fits;
- one update split across two replicas (MirroredStrategy), when there are two devices;
- placement: the ragged bfloat16 decoding step and the training step, as TensorFlow graphs with soft
  device placement off, so that an op without a kernel on the device is an error instead of a silent
  copy to the CPU; and the products of the attention's backward pass in the device's optimized HLO (7
  when the recomputation is kept, 6 when XLA merged it with the forward pass);
- a correctness line: a tiny model's logits, loss and gradients, and its greedy tokens, on the
  accelerator against the CPU.
A TPU VM's TPU is found and initialised (TPU_NAME, else the local one). Without an accelerator it says
so, runs the same steps on tiny shapes on the CPU (a smoke run that the test suite uses, so that the
script cannot rot), and exits 0.

Model FLOPs per token: 6 x parameters + 12 x n_layer x n_ctx x n_embd (forward and backward, the
attention scores included). Peaks are the vendors' dense figures: float32 without TF32, and bfloat16 /
float16 on tensor cores; --peak_tflops overrides.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2_tf.cli import Parser, integer, number, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow("--verbose" in sys.argv)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpt2_tf import ops  # noqa: E402
from gpt2_tf.devices import default_compile, emulated_bfloat16  # noqa: E402
from gpt2_tf.hparams import HParams, released  # noqa: E402
from gpt2_tf.optim import make_optimizer  # noqa: E402
from gpt2_tf.sample import Generator, sample_sequence  # noqa: E402
from gpt2_tf.score import window_scores  # noqa: E402
from gpt2_tf.train_step import TrainStep, build_model, trained_variables  # noqa: E402

TINY = HParams(n_vocab=512, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
# Dense peak TFLOP/s by device name, most specific names first: (float32 without TF32, bfloat16 or
# float16 on tensor cores; None where the device has no bfloat16). Vendors' data sheets.
PEAKS = [(r"H100 PCIe", (51, 756)), (r"H100 NVL", (60, 835)), (r"H100|H200|GH200", (67, 989)),
         (r"A100", (19.5, 312)), (r"L40S", (91.6, 362)), (r"L40\b", (90.5, 181)), (r"L4\b", (30.3, 121)),
         (r"A10G", (31.2, 70)), (r"A10\b", (31.2, 125)), (r"V100", (15.7, 125)), (r"T4\b", (8.1, 65))]


def find_tpu():
    """Initialise a TPU (TPU_NAME's, else a TPU VM's own) when there is one; True if it worked."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", "local"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError):
        return False
    return bool(tf.config.list_logical_devices("TPU"))


def accelerator():
    """(device type, names of the devices, their description) of TensorFlow's accelerators, or None."""
    if tf.config.list_logical_devices("GPU"):
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        return "GPU", names, details.get("device_name", "GPU")
    if tf.config.list_logical_devices("TPU") or find_tpu():
        return "TPU", [d.name for d in tf.config.list_logical_devices("TPU")], "TPU"
    return None


def peaks_for(name):
    return next((peak for pattern, peak in PEAKS if re.search(pattern, name)), (None, None))


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


def train_speed(hp, precision=None, steps=3, batch=1, memory_saving=False, optimizer="adam", strategy=None,
                grad_clip=None, compile_mode=None):
    """Tokens per second of `steps` updates after one warm-up update (random weights and tokens)."""
    strategy = strategy or tf.distribute.get_strategy()
    compile_mode = compile_mode or default_compile()
    with strategy.scope():
        model = build_model(hp, precision, memory_saving=memory_saving)
        variables = trained_variables(model)
        opt = make_optimizer(optimizer, 1e-5, loss_scaling=precision == "fp16")
        opt.build(list(variables.values()))
    step = TrainStep(model, opt, variables.values(), strategy, batch, 1, hp.n_ctx,
                     jit_compile=compile_mode == "xla", loss_scaling=precision == "fp16",
                     xla_update=not memory_saving and optimizer != "adafactor", grad_clip=grad_clip)
    tokens = np.random.RandomState(0).randint(0, hp.n_vocab, (1, batch, hp.n_ctx)).astype(np.int32)
    for _ in range(4 if precision == "fp16" else 1):  # float16: the loss scale settles in a few steps
        loss, finite = step(tokens, tokens)
    start = time.perf_counter()
    for _ in range(steps):
        loss, finite = step(tokens, tokens)
    seconds = time.perf_counter() - start
    assert finite, f"the loss or the gradients are not finite ({loss})"
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


def placement(device, hp):
    """One line: do the graph-mode decoding step (ragged, bfloat16) and training step run on `device`
    with soft placement off (an op without a kernel there is then an error)?"""
    tf.config.set_soft_device_placement(False)
    try:
        with tf.device(device):
            model = build_model(hp)
            generator = Generator(model, jit_compile=False)
            sample_sequence(model, 4, context=[[1, 2, 3], [4, 5]], top_k=40, top_p=0.9, seed=1,
                            generator=generator)
            train_speed(hp, steps=1, compile_mode="graph")
        return "placement: the graph-mode decoding and training steps run on the device", True
    except (tf.errors.OpError, ValueError) as e:
        return f"placement: MISMATCH, an op has no kernel on the device: {e.message.splitlines()[0]}", False
    finally:
        tf.config.set_soft_device_placement(True)


def recomputation(device):
    """One line: the products in the device's optimized HLO of the attention's forward and backward pass."""
    q, k, v, w = (tf.constant(np.random.RandomState(i).randn(2, 4, 128, 64), tf.float32) for i in range(4))
    b = ops.lower_triangle(128)

    def step(q, k, v, w):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(ops.attend(ops.scaled(q), k, v, b) * w)
        return tape.gradient(loss, [q, k, v])

    with tf.device(device):
        compiled = tf.function(step, jit_compile=True).experimental_get_compiler_ir(q, k, v, w)
        hlo = compiled(stage="optimized_hlo")
    dots = len(re.findall(r" dot\(", hlo))
    kept = "kept" if dots >= 7 else "merged with the forward pass: the attention weights stay in memory"
    return f"attention backward under XLA: {dots} products ({kept})"


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
    tf.config.experimental.enable_tensor_float_32_execution(False)  # float32 means float32, as train.py
    found = accelerator()
    ok = True
    if found is None:
        print("no accelerator found: a tiny smoke run on the CPU instead")
        devices, device, hp, label, big, peaks = ["/CPU:0"], "CPU:0", TINY, "tiny", None, (None, None)
        line, ok = correctness("/CPU:0")
        print(line)
    else:
        kind, devices, name = found
        device = devices[0].split("device:")[-1]
        hp, label, big = released("124M"), "124M", released("1558M")
        peaks = tuple(args.peak_tflops or peaks_for(name))
        print(f"{len(devices)} x {name} ({kind}); compile: {default_compile()}; peak TFLOP/s (fp32, "
              f"bf16/fp16): {peaks}")
        line, ok = correctness(devices[0])
        print(line, flush=True)
    emulated = emulated_bfloat16()
    half_peak = peaks[1]
    for precision, peak in ((None, peaks[0]), ("bf16", peaks[0] if emulated else half_peak),
                            ("fp16", half_peak)):
        reset_memory(device)
        speed = train_speed(hp, precision, args.steps)
        note = " (emulated on this GPU)" if emulated and precision == "bf16" else ""
        report(f"train {label} {precision or 'fp32'}{note}", speed, hp, peak, device)
    one_device = tf.distribute.MirroredStrategy(devices[:1])
    report(f"train {label} fp32, --distribute mirrored on one device",
           train_speed(hp, steps=args.steps, strategy=one_device), hp, peaks[0], device)
    report(f"train {label} fp32, --grad_clip 1.0", train_speed(hp, steps=args.steps, grad_clip=1.0), hp,
           peaks[0], device)
    for batch in (1, 8):
        print(f"sample {label} batch {batch}: {sample_speed(hp, batch):,.0f} tokens/s", flush=True)
    line, placed = placement(devices[0], hp)
    print(line, flush=True)
    ok = ok and placed
    print(recomputation(devices[0]), flush=True)
    if big is not None:
        reset_memory(device)
        try:
            speed = train_speed(big, steps=1, memory_saving=True, optimizer="sgd")
            report("train 1558M fp32, --memory_saving_gradients, SGD", speed, big, peaks[0], device)
        except tf.errors.ResourceExhaustedError:
            print("train 1558M: skipped, out of device memory")
        if len(devices) >= 2:
            strategy = tf.distribute.MirroredStrategy(devices[:2])
            speed = train_speed(hp, steps=args.steps, batch=2, strategy=strategy)
            print(f"train 124M fp32 on 2 replicas (MirroredStrategy): {speed:,.0f} tokens/s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
