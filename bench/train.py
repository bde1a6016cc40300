#!/usr/bin/env python3
"""Training speed and memory: gpt2-tf's update against Hugging Face transformers and KerasHub.

One update = forward + backward + Adam on a batch of 1 x 1024 tokens of the 124M shape, fp32, random
weights (speed does not depend on their values). Each configuration runs in its own process, so that
its peak resident memory (ru_maxrss) is its own. Reported: tokens per second after warm-up, and
peak RSS. Then, for ours only, peak RSS of the 355M / 774M / 1558M shapes with memory saving.

    python bench/train.py                          # the full comparison (takes a while)
    python bench/train.py --steps 3 --warmup 1     # a quick check
    python bench/train.py --peers ours --large ""  # only ours, no large shapes
    python bench/train.py --large "" --repeats 3   # three interleaved rounds, medians compared

The peers need their own environments, never the project's; bench/setup_peers.sh makes them under
$GPT2_BENCH_ENVS (default ~/.cache/gpt2-tf-bench):
    Hugging Face: a venv with torch==2.13.0 (CPU) and transformers, --hf_python (default
        $GPT2_BENCH_ENVS/torch/bin/python).
    KerasHub: keras-hub installed with `pip install --no-deps --target DIR keras-hub tensorflow-text`,
        run by this project's Python with PYTHONPATH=DIR, --kerashub_path (default
        $GPT2_BENCH_ENVS/kerashub-lib).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
SHAPES = {
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(step, steps, warmup):
    """Run step() warmup + steps times; {tokens_per_s, cpu_s_per_step} over the timed steps.

    tokens_per_s is wall-clock (1024 tokens per step). cpu_s_per_step is the process's CPU time
    per step (all threads): on a machine shared with other work it shows the cost of a step
    better than the wall clock does.
    """
    for _ in range(warmup):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"tokens_per_s": steps * 1024 / (time.perf_counter() - start),
            "cpu_s_per_step": (time.process_time() - cpu) / steps}


# ---------------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process and prints one RESULT line.


def worker_ours(opts, steps, warmup):
    import numpy as np
    import tensorflow as tf

    from gpt2_tf.hparams import HParams
    from gpt2_tf.optim import make_optimizer
    from gpt2_tf.train_step import TrainStep, build_model, trained_variables

    hparams = HParams(**SHAPES[opts.get("shape", "124M")])
    mixed = opts.get("mixed_precision")
    model = build_model(hparams, mixed, memory_saving=opts.get("memory_saving", False))
    variables = trained_variables(model)
    optimizer = make_optimizer(opts.get("optimizer", "adam"), 2e-5, loss_scaling=mixed == "fp16")
    optimizer.build(list(variables.values()))
    step = TrainStep(model, optimizer, variables.values(), tf.distribute.get_strategy(), 1, 1,
                     hparams.n_ctx, jit_compile=opts.get("compile") == "xla", loss_scaling=mixed == "fp16",
                     xla_update=opts.get("xla_update", not opts.get("memory_saving")
                                         and opts.get("optimizer", "adam") != "adafactor"))
    tokens = np.random.RandomState(0).randint(0, hparams.n_vocab, (1, 1, 1024)).astype(np.int32)
    losses = []
    return {**timed(lambda: losses.append(step(tokens, tokens)[0]), steps, warmup), "loss": losses[-1]}


def worker_hf(opts, steps, warmup):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # 124M, no dropout
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-8)
    tokens = torch.randint(0, config.vocab_size, (1, 1024))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {**timed(step, steps, warmup), "torch": torch.__version__}


def worker_kerashub(opts, steps, warmup):
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50257, num_layers=12, num_heads=12,
                                             hidden_dim=768, intermediate_dim=3072,
                                             max_sequence_length=1024, dropout=0.0)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.Adam(2e-5, epsilon=1e-8),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               weighted_metrics=[], jit_compile=opts.get("jit_compile", True))
    tokens = np.random.RandomState(0).randint(0, 50257, (1, 1025)).astype(np.int32)
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones([1, 1024], bool)}
    y = tokens[:, 1:]
    return {**timed(lambda: lm.train_on_batch(x, y), steps, warmup), "keras_hub": keras_hub.__version__}


WORKERS = {"ours": worker_ours, "hf": worker_hf, "kerashub": worker_kerashub}


# ---------------------------------------------------------------------------------------------------
# The driver.


def launch(name, opts, args):
    """Run one worker in a subprocess; its result dict, with peak_rss_mib, or {"error": ...}."""
    python = args.hf_python if name == "hf" else sys.executable
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if name == "kerashub":
        env["PYTHONPATH"] = args.kerashub_path + os.pathsep + env.get("PYTHONPATH", "")
    command = [python, HERE, "--worker", name, "--opts", json.dumps(opts),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if not os.path.exists(python):
        return {"error": f"{python} not found"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def estimate_mib(shape, optimizer):
    """A rough need for training a shape: weights, gradients and optimizer state, plus 3 GiB."""
    h = SHAPES[shape]
    c = h["n_embd"]
    params = h["n_vocab"] * c + h["n_ctx"] * c + h["n_layer"] * (12 * c * c + 13 * c)
    copies = {"adam": 4, "sgd": 2, "adafactor": 2}[optimizer]
    return params * 4 * copies / 2**20 + 3072


def median_result(results):
    """One result from the runs of a configuration: median speed, largest peak RSS."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    middle = statistics.median_low(r["tokens_per_s"] for r in good)
    chosen = next(r for r in good if r["tokens_per_s"] == middle)
    return {**chosen, "peak_rss_mib": max(r["peak_rss_mib"] for r in good)}


def report(label, result):
    if "error" in result:
        print(f"{label:40s} failed: {result['error']}", flush=True)
        return
    speed = f"{result['tokens_per_s']:8.1f} tokens/s {result['cpu_s_per_step']:6.2f} CPU s/step"
    print(f"{label:40s} {speed} {result['peak_rss_mib']:7.0f} MiB peak RSS", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed updates per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first (compilation)")
    p.add_argument("--peers", default="ours,hf,kerashub", help="which implementations to run")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds over all configurations, one process each; medians are compared")
    p.add_argument("--large", default="355M:adam,774M:adam,1558M:sgd,1558M:adafactor",
                   help="SHAPE:OPTIMIZER pairs measured with memory saving ('' for none)")
    envs = os.environ.get("GPT2_BENCH_ENVS", os.path.expanduser("~/.cache/gpt2-tf-bench"))
    p.add_argument("--hf_python", default=os.path.join(envs, "torch", "bin", "python"))
    p.add_argument("--kerashub_path", default=os.path.join(envs, "kerashub-lib"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        result = WORKERS[args.worker](json.loads(args.opts), args.steps, args.warmup)
        result["peak_rss_mib"] = peak_rss_mib()
        print("RESULT " + json.dumps(result), flush=True)
        return

    peers = args.peers.split(",")
    print(f"124M shape, batch 1 x 1024 tokens, Adam; {args.warmup} warm-up + {args.steps} timed updates; "
          f"{os.cpu_count()} CPUs", flush=True)
    results = {}
    configs = []
    if "ours" in peers:
        configs += [("ours graph fp32", "ours", {"compile": "graph"}),
                    ("ours xla fp32", "ours", {"compile": "xla"}),
                    ("ours graph fp32 memory saving", "ours", {"compile": "graph", "memory_saving": True}),
                    ("ours graph bf16", "ours", {"compile": "graph", "mixed_precision": "bf16"}),
                    ("ours xla bf16", "ours", {"compile": "xla", "mixed_precision": "bf16"})]
    if "kerashub" in peers:
        configs += [("KerasHub GPT2CausalLM jit_compile", "kerashub", {"jit_compile": True}),
                    ("KerasHub GPT2CausalLM graph", "kerashub", {"jit_compile": False})]
    if "hf" in peers:
        configs += [("HF GPT2LMHeadModel torch eager", "hf", {})]
    runs = {label: [] for label, _, _ in configs}
    for round_ in range(args.repeats):
        if args.repeats > 1:
            print(f"round {round_ + 1} of {args.repeats}:", flush=True)
        for label, name, opts in configs:
            runs[label].append(launch(name, opts, args))
            report(label, runs[label][-1])
    if args.repeats > 1:
        print(f"\nMedians of {args.repeats} processes (peak RSS: the largest):")
    for label in runs:
        results[label] = median_result(runs[label])
        if args.repeats > 1:
            report(label, results[label])

    def value(labels, key="tokens_per_s", pick=max):
        found = [results[label][key] for label in labels if key in results.get(label, {})]
        return pick(found) if found else None

    def speed(labels):
        """(best tokens/s, tokens per CPU second of the same configuration) among labels."""
        found = [results[label] for label in labels if "tokens_per_s" in results.get(label, {})]
        if not found:
            return None, None
        top = max(found, key=lambda r: r["tokens_per_s"])
        return top["tokens_per_s"], 1024 / top["cpu_s_per_step"]

    kerashub = [label for label in results if label.startswith("KerasHub")]
    ours_fp32 = speed(["ours graph fp32", "ours xla fp32"])
    speeds = [("ours fp32 / KerasHub best (target >= 1.1)", ours_fp32, speed(kerashub)),
              ("ours fp32 / HF eager (target >= 2)", ours_fp32, speed(["HF GPT2LMHeadModel torch eager"])),
              ("ours bf16 / ours fp32 (target >= 1.6)", speed(["ours graph bf16", "ours xla bf16"]),
               ours_fp32),
              ("ours xla / ours graph, fp32", speed(["ours xla fp32"]), speed(["ours graph fp32"]))]
    print("\nSpeed ratios (wall-clock tokens/s; tokens per CPU second):")
    for label, a, b in speeds:
        text = [f"{x / y:.2f}" if x and y else "n/a" for x, y in zip(a, b)]
        print(f"  {label:52s} {text[0]:>6s}; {text[1]:>6s}", flush=True)

    ours_rss = value(["ours graph fp32"], "peak_rss_mib")
    saving_rss = value(["ours graph fp32 memory saving"], "peak_rss_mib")
    kerashub_rss = value(kerashub, "peak_rss_mib", min)
    print("Memory ratios (peak RSS):")
    for label, a, b in [("ours graph fp32 / KerasHub (target <= 0.75)", ours_rss, kerashub_rss),
                        ("ours memory saving / KerasHub", saving_rss, kerashub_rss),
                        ("ours memory saving / ours plain", saving_rss, ours_rss)]:
        print(f"  {label:52s} " + (f"{a / b:6.2f}" if a and b else "   n/a"), flush=True)

    large = [pair.split(":") for pair in args.large.split(",") if pair]
    if large and "ours" in peers:
        print("\nLarger shapes with --memory_saving_gradients (graph, fp32, batch 1 x 1024), peak RSS:")
        for shape, optimizer in large:
            label = f"ours {shape} {optimizer} memory saving"
            need = estimate_mib(shape, optimizer)
            if need > available_mib():
                print(f"{label:40s} skipped: needs about {need:.0f} MiB, {available_mib():.0f} available")
                continue
            result = launch("ours", {"shape": shape, "optimizer": optimizer, "memory_saving": True,
                                     "compile": "graph"},
                            argparse.Namespace(**{**vars(args), "steps": min(args.steps, 2),
                                                  "warmup": 1}))
            report(label, result)


if __name__ == "__main__":
    main()
