#!/usr/bin/env python3
"""Sampling speed: gpt2-tf (TensorFlow, and LiteRT int8 and float32) against Hugging Face transformers
(PyTorch), KerasHub and CTranslate2 (float32 and int8), in the same run.

A model with the 124M shape and random weights, a 16-token prompt, 256 new tokens, top_k 40, at batch
1 and batch 8 (`-ragged`: at batch 8, prompts of 9 to 23 tokens, 16 on average). Reported: new
tokens per second (the median of 3 calls after a warm-up call) and time
to first token, cold (first call in a fresh process, compilation included) and warm. Every
configuration runs in its own process; with --repeats N each is run N times and the median is shown.

    bash bench/setup_peers.sh        # once: the peers' environments, outside the repository
    python bench/sample.py           # all of ours and both peers
    python bench/sample.py --only ours-xla-float32 --repeats 3
    python bench/sample.py --only ours-xla-float32-controls litert-int8-controls   # the controls' cost

`-controls`: every generation control on (repetition 1.2, frequency 0.5, presence 0.5, no-repeat 3,
min_p 0.05), against the same generation without them, timed in turn in the same process (5 calls of
each, alternating; "vs no controls" is the ratio of the medians).

The LiteRT and CTranslate2 models are converted once (convert.py's LiteRT writer; transformers'
model through ct2-transformers-converter) and kept in GPT2_BENCH_ENVS.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT, NEW, TOP_K = 16, 256, 40
ENVS = os.environ.get("GPT2_BENCH_ENVS", os.path.expanduser("~/.cache/gpt2-tf-bench"))
CONFIGS = {
    "ours-xla-float32": sys.executable,
    "ours-graph-float32": sys.executable,
    "ours-xla-bfloat16": sys.executable,
    "ours-graph-bfloat16": sys.executable,
    "ours-xla-float32-ragged": sys.executable,
    "ours-xla-float32-controls": sys.executable,
    "ours-graph-float32-controls": sys.executable,
    "litert-int8": sys.executable,
    "litert-float32": sys.executable,
    "litert-int8-controls": sys.executable,
    "hf-transformers": os.path.join(ENVS, "torch", "bin", "python"),
    "kerashub": os.path.join(ENVS, "kerashub", "bin", "python"),
    "ct2-float32": os.path.join(ENVS, "torch", "bin", "python"),
    "ct2-int8": os.path.join(ENVS, "torch", "bin", "python"),
}
PEERS = ("hf-transformers", "kerashub", "ct2-float32", "ct2-int8")
BANDWIDTH_LIMIT_NOTE = "batch-1 fp32 bound: ~495 MB of weights read per token"


def controls(on):
    """`-controls`: every penalty on (docs/sample.md's figures), else none."""
    from gpt2_tf.decoding import Controls

    every = Controls(repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.5,
                     no_repeat_ngram_size=3, min_p=0.05)
    return every if on else None


def prompt(batch, ragged=False):
    """[batch, PROMPT] token ids; `ragged`: a list of prompts of PROMPT - 7 .. PROMPT + 7 tokens (as
    many tokens in all at batch 8), for the cost of a batch of prompts of different lengths."""
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, 50257, size=(batch, PROMPT + 8))
    if not ragged:
        return tokens[:, :PROMPT]
    if batch == 1:
        return [tokens[0, :PROMPT]]
    return [row[:PROMPT - 8 + (2 * i + 1) % 16] for i, row in enumerate(tokens)]


def measure(first_token, generate, calls=3, without=None):
    """Times a generate(batch) callable: cold and warm time to first token, then new tokens/s.

    Tokens/s is the median of `calls` timed calls (this shared machine's speed drifts within seconds).
    `without`: the same generation without the controls, timed in turn with `generate` in the same
    process (one call of each, `calls` times), as tokens_per_s_without: processes run one after the
    other differed by more than the controls cost.
    """
    results = {}
    for batch in (1, 8):
        start = time.perf_counter()
        first_token(batch)
        cold = time.perf_counter() - start
        generate(batch)  # compile / warm up the whole loop
        if without:
            without(batch)
        start = time.perf_counter()
        first_token(batch)
        warm = time.perf_counter() - start
        seconds, plain = [], []
        for _ in range(calls):
            for call, times in ((without, plain), (generate, seconds)):
                if call:
                    start = time.perf_counter()
                    call(batch)
                    times.append(time.perf_counter() - start)
        results[batch] = {"ttft_cold": cold, "ttft_warm": warm,
                          "tokens_per_s": batch * NEW / statistics.median(seconds)}
        if without:
            results[batch]["tokens_per_s_without"] = batch * NEW / statistics.median(plain)
    return results


def run_ours(compile_mode, dtype, ragged=False, with_controls=False):
    import tensorflow as tf

    from gpt2_tf.hparams import released
    from gpt2_tf.model import GPT2
    from gpt2_tf.sample import Generator

    model = GPT2(released("124M"), dtype=dtype)
    generator = Generator(model, jit_compile=compile_mode == "xla")
    settings = dict(top_k=TOP_K, seed=1, controls=controls(with_controls))

    def first_token(batch):
        state = generator.start(prompt(batch, ragged), NEW, **settings)
        state.tokens.numpy()

    def generation(on):
        def generate(batch):
            state = generator.start(prompt(batch, ragged), NEW, **{**settings, "controls": controls(on)})
            generator.extend(state, NEW - 1)
            state.new_tokens()
        return generate

    tf.random.set_seed(0)
    return measure(first_token, generation(with_controls), calls=5 if with_controls else 3,
                   without=generation(False) if with_controls else None)


def litert_model(quantize):
    """The 124M shape with random weights (seed 0) as a LiteRT generation file (model.tflite), converted
    once for each version of the code that writes it (its folder's name holds a digest of that code;
    older folders are removed)."""
    import glob
    import hashlib
    import shutil

    library = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpt2_tf")
    digest = hashlib.sha256()
    for name in ("litert.py", "controls.py", "sample.py", "model.py", "streams.py"):
        with open(os.path.join(library, name), "rb") as f:
            digest.update(f.read())
    folder = os.path.join(ENVS, f"litert-124M-{quantize}-{digest.hexdigest()[:10]}")
    path = os.path.join(folder, "model.tflite")
    if not os.path.exists(path):
        import tensorflow as tf

        from gpt2_tf.hparams import released
        from gpt2_tf.litert import write_litert
        from gpt2_tf.model import GPT2

        for old in glob.glob(os.path.join(ENVS, f"litert-124M-{quantize}*")):
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        tf.random.set_seed(0)
        os.makedirs(folder, exist_ok=True)
        write_litert(GPT2(released("124M")), folder, quantize, files=["model.tflite"])
    return path


def run_litert(quantize, with_controls=False):
    from gpt2_tf.hparams import released
    from gpt2_tf.litert_runtime import LiteRTGenerator

    generator = LiteRTGenerator(litert_model(quantize), released("124M"))
    settings = dict(top_k=TOP_K, seed=1, controls=controls(with_controls))

    def first_token(batch):
        generator.start(prompt(batch), NEW, **settings)

    def generation(on):
        def generate(batch):
            state = generator.start(prompt(batch), NEW, **{**settings, "controls": controls(on)})
            generator.extend(state, NEW - 1)
        return generate

    return measure(first_token, generation(with_controls), calls=5 if with_controls else 3,
                   without=generation(False) if with_controls else None)


def ct2_model(quantization):
    """transformers' GPT-2 (124M, random weights, seed 0, GPT-2's vocabulary) through CTranslate2's
    converter, once."""
    import json as json_module

    folder = os.path.join(ENVS, f"ct2-124M-{quantization}")
    if os.path.exists(folder):
        return folder
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = os.path.join(ENVS, "hf-124M-random")
    if not os.path.exists(hf):
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(hf)
        vocab = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "gpt2-vocab")
        with open(os.path.join(vocab, "encoder.json"), encoding="utf-8") as f, \
                open(os.path.join(hf, "vocab.json"), "w", encoding="utf-8") as g:
            json_module.dump(json_module.load(f), g)
        with open(os.path.join(vocab, "vocab.bpe"), encoding="utf-8") as f, \
                open(os.path.join(hf, "merges.txt"), "w", encoding="utf-8") as g:
            g.write(f.read())
    TransformersConverter(hf).convert(folder, quantization=quantization)
    return folder


def run_ct2(quantization):
    import ctranslate2

    generator = ctranslate2.Generator(ct2_model(quantization), device="cpu", compute_type=quantization,
                                      intra_threads=len(os.sched_getaffinity(0)))
    vocabulary = json.load(open(os.path.join(ENVS, "hf-124M-random", "vocab.json"), encoding="utf-8"))
    names = {i: token for token, i in vocabulary.items()}

    def call(batch, new):
        tokens = [[names[int(i)] for i in row] for row in prompt(batch)]
        generator.generate_batch(tokens, max_length=new, min_length=new, sampling_topk=TOP_K,
                                 include_prompt_in_result=False, end_token=[])

    return measure(lambda b: call(b, 1), lambda b: call(b, NEW))


def run_hf():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()

    def call(batch, new):
        with torch.no_grad():
            ids = torch.tensor(prompt(batch))
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=TOP_K,
                           max_new_tokens=new, min_new_tokens=new, pad_token_id=50256)

    return measure(lambda b: call(b, 1), lambda b: call(b, NEW))


def run_kerashub():
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50257, num_layers=12, num_heads=12,
                                             hidden_dim=768, intermediate_dim=3072, max_sequence_length=1024)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler=keras_hub.samplers.TopKSampler(k=TOP_K, seed=1))

    def call(batch, new):
        ids = np.zeros((batch, PROMPT + new), np.int32)
        ids[:, :PROMPT] = prompt(batch)
        mask = np.zeros_like(ids, bool)
        mask[:, :PROMPT] = True
        model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)

    return measure(lambda b: call(b, 1), lambda b: call(b, NEW))


def worker(name):
    if name.startswith("ours-"):
        _, mode, dtype, *options = name.split("-")
        return run_ours(mode, dtype, "ragged" in options, "controls" in options)
    if name.startswith("litert-"):
        _, precision, *options = name.split("-")
        return run_litert(precision, "controls" in options)
    if name.startswith("ct2-"):
        return run_ct2(name.split("-")[1])
    return {"hf-transformers": run_hf, "kerashub": run_kerashub}[name]()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to run")
    parser.add_argument("--repeats", type=int, default=1, help="processes per configuration (median shown)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker)))
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    rows = {}
    for name in args.only or CONFIGS:
        python = CONFIGS[name]
        if not os.path.exists(python):
            print(f"{name}: skipped, no environment at {python} (run bench/setup_peers.sh)")
            continue
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([python, os.path.abspath(__file__), "--worker", name], env=env,
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{name}: failed\n{out.stderr[-2000:]}")
                break
            runs.append(json.loads(line[0][7:]))
        if runs:
            rows[name] = {b: {k: statistics.median(r[b][k] for r in runs) for k in runs[0][b]}
                          for b in runs[0]}
            print(name, json.dumps(rows[name]), flush=True)
    peers = [rows[p] for p in PEERS if p in rows]
    # Ratios against the best peer, and against our TensorFlow float32 and CTranslate2 int8 rows.
    against = [("best peer", lambda b: max(p[b]["tokens_per_s"] for p in peers) if peers else None)]
    against += [(ref, lambda b, ref=ref: rows[ref][b]["tokens_per_s"])
                for ref in ("ours-xla-float32", "ct2-int8") if ref in rows]
    # and a -controls row against the same generation without them, timed in turn in its process
    against.append(("no controls", lambda b, name: rows[name][b].get("tokens_per_s_without")))
    heads = "".join(f" {f'b{b} vs {title}':>22}" for title, _ in against for b in ("1", "8"))
    print(f"\n{'configuration':24} {'b1 tok/s':>9} {'b8 tok/s':>9} {'ttft cold':>10} {'ttft warm':>10}"
          + heads)
    for name, r in rows.items():
        ratios = ""
        for title, reference in against:
            for b in ("1", "8"):
                base = reference(b, name) if title == "no controls" else reference(b)
                ratios += f" {r[b]['tokens_per_s'] / base:>21.2f}x" if base else f" {'-':>22}"
        print(f"{name:24} {r['1']['tokens_per_s']:9.1f} {r['8']['tokens_per_s']:9.1f} "
              f"{r['1']['ttft_cold']:9.2f}s {r['1']['ttft_warm']:9.3f}s{ratios}")
    print(f"({BANDWIDTH_LIMIT_NOTE}; tokens/s: median of 3 calls after a warm-up call; ttft at batch 1)")


if __name__ == "__main__":
    main()
