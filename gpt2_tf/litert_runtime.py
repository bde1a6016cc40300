"""Sampling and scoring with a LiteRT GPT-2 file (written by gpt2_tf/litert.py), without TensorFlow:
LiteRT's interpreter (`pip install 'gpt2-tf[litert]'`, the ai-edge-litert package) and NumPy.
`LiteRTScorer` is score.py's scoring function on such a file.

`LiteRTGenerator` has the interface of sample.py's Generator (`start`, `extend`, and `draws` from
decoding.Drawing), so generate.generate_texts and sample.py use either alike.

The cache lives in the `decode` signature's input tensors, one [B * H, S, D] per layer for keys and
one for values: each step reads it there and returns only the fed token's keys and values, which
are written into those inputs in place, through NumPy views of the interpreter's own buffers.
Nothing whole is copied per token. The interpreter is resized (and its buffers reallocated) only
when the batch or the cache size changes, at the start of a generation.
"""

import os

import numpy as np

from gpt2_tf.decoding import Controls, Drawing, GenerationState, padded_sequences

INSTALL = "pip install 'gpt2-tf[litert]'"


def interpreter(path, threads=None):
    """LiteRT's Interpreter for the file at `path`, with XNNPACK's CPU kernels on `threads` threads
    (default: every core this process may use)."""
    from ai_edge_litert.interpreter import Interpreter

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Interpreter(model_path=path, num_threads=threads)


class Signature:
    """One signature of an interpreter, run with its inputs resized only when their shapes change.
    `view(name)` is a writable NumPy view of an input's buffer, valid until the next `run` (the
    buffers may move when a run meets a tensor whose shape depends on values, as top-k's with a
    tensor k, though their contents stay). An input keeps its value from one `run` to the next
    (LiteRT never reuses a graph input's memory within a run), so what does not change is set
    once."""

    def __init__(self, interp, key):
        self.interpreter = interp  # kept alive: it owns the delegate and the buffers the views point into
        self.wrapper = interp._interpreter  # the signature's own subgraph, which SignatureRunner hides
        self.subgraph = self.wrapper.GetSubgraphIndexFromSignature(key)
        definition = interp._get_full_signature_list()[key]
        self.inputs, self.outputs = definition["inputs"], definition["outputs"]
        self.shapes = {}

    def resize(self, shapes):
        """Give the inputs these shapes ({name: shape}); the buffers are reallocated (their contents
        lost) when any changed."""
        changed = {n: s for n, s in shapes.items() if self.shapes.get(n) != tuple(s)}
        for name, shape in changed.items():
            self.wrapper.ResizeInputTensor(self.inputs[name], np.array(shape, np.int32), False, self.subgraph)
            self.shapes[name] = tuple(shape)
        if changed:
            self.wrapper.AllocateTensors(self.subgraph)

    def view(self, name):
        return self.wrapper.tensor(self.wrapper, self.inputs[name], self.subgraph)

    def set(self, **inputs):
        """Set `inputs` (NumPy arrays of the shapes given to `resize`)."""
        for name, value in inputs.items():
            self.wrapper.SetTensor(self.inputs[name], value, self.subgraph)

    def run(self, outputs, **inputs):
        """Set `inputs`, invoke, and return the named outputs."""
        self.set(**inputs)
        self.wrapper.Invoke(self.subgraph)
        return [self.wrapper.GetTensor(self.outputs[name], self.subgraph) for name in outputs]


class LiteRTGenerator(Drawing):
    """sample.py's Generator, on a LiteRT file: `start`, `extend`, `draws` as there. One generation at a
    time: a `start` ends the state of the one before (its cache is overwritten)."""

    def __init__(self, path, hparams, threads=None):
        self.hparams = hparams
        interp = interpreter(path, threads)
        self.prompt = Signature(interp, "prompt")
        self.decode = Signature(interp, "decode")
        self.depth = hparams.n_embd // hparams.n_head

    def start(self, prompts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None, rows=None, keys=None,
              step=0, controls=None, drawn_from=None):
        """As sample.Generator.start."""
        hp = self.hparams
        prompts, lengths, size, keys = self.prepared(prompts, length, seed, rows, keys)
        batch, longest = len(prompts), int(lengths.max())
        padded = np.zeros([batch, longest], np.int32)
        for b, p in enumerate(prompts):
            padded[b, :len(p)] = p
        state = GenerationState(keys, lengths, (temperature, top_k, top_p), controls, drawn_from)
        state.settings = {**settings(temperature, top_k, top_p, state.controls), "keys": keys,
                          "drawn_from": np.asarray(state.drawn_from, np.int32)}
        shapes = {name: value.shape for name, value in state.settings.items()}
        self.prompt.resize({"tokens": [batch, longest], "last": [batch], **shapes})
        token, present, *scores = self.prompt.run(["token", "present", *SCORES], tokens=padded,
                                                  last=lengths - 1, draw=np.array(step, np.int32),
                                                  **state.settings)
        cache = [batch * hp.n_head, size, self.depth]
        self.decode.resize({"token": [batch], "position": [batch], "context": [batch, size + 1], **shapes,
                            **{f"{kind}_{i}": cache for i in range(hp.n_layer) for kind in ("key", "value")}})
        self.decode.set(**state.settings)  # for the whole generation
        # present [B, L, 2, H, T, D] -> each layer's [B * H, T, D], at the start of its cache; the rest
        # zeroed, for the attention weighs the positions it masks by 0 (and 0 x NaN from a reused
        # buffer's garbage would be NaN).
        for i in range(hp.n_layer):
            for j, kind in enumerate(("key", "value")):
                view = self.decode.view(f"{kind}_{i}")
                view[:, :longest] = present[:, i, j].reshape(-1, longest, self.depth)
                view[:, longest:] = 0
        state.tokens = np.zeros([batch, size + 1], np.int32)
        state.tokens[:, :longest] = padded
        state.tokens[np.arange(batch), lengths] = token
        self.decode.view("context")[...] = state.tokens
        if state.controls.logprobs is not None:
            n = state.controls.logprobs
            state.scores = (np.zeros([batch, size + 1], np.float32),
                            np.zeros([batch, size + 1, n], np.float32),
                            np.zeros([batch, size + 1, n], np.int32))
            write_scores(state.scores, scores, lengths)
        state.step = step
        state.drawn = 1
        state.cache = self
        return state

    def extend(self, state, n):
        """As sample.Generator.extend."""
        if n <= 0:
            return state
        if state.cache is not self:
            raise ValueError("this generation's cache was replaced by a later start()")
        if state.lengths.max() + state.drawn + n > state.tokens.shape[1]:
            raise ValueError(f"cannot extend to {state.lengths.max() + state.drawn + n} tokens: the cache "
                             f"holds {state.tokens.shape[1]}")
        heads = np.arange(len(state.lengths) * self.hparams.n_head)
        batch = np.arange(len(state.lengths))
        outputs = ["next", "new", *SCORES] if state.scores else ["next", "new"]
        for _ in range(n):
            # [B]: each row's last token, not yet in the cache
            position = (state.lengths + state.drawn - 1).astype(np.int32)
            token, new, *scores = self.decode.run(outputs, token=state.tokens[batch, position],
                                                  position=position,
                                                  draw=np.array(state.step + state.drawn, np.int32))
            if state.scores:
                write_scores(state.scores, scores, position + 1)
            at = np.repeat(position, self.hparams.n_head)
            for layer, (k, v) in enumerate(new):
                self.decode.view(f"key_{layer}")[heads, at] = k
                self.decode.view(f"value_{layer}")[heads, at] = v
            state.tokens[batch, position + 1] = token
            self.decode.view("context")[batch, position + 1] = token
            state.drawn += 1
        return state


class LiteRTScorer:
    """score.py's next_token_scores (the `score` or `score_details` signature) on a LiteRT file:
    scorer(inputs [B, T], targets [B, T]) -> {name: NumPy array}."""

    def __init__(self, path, details=False, threads=None):
        self.signature = Signature(interpreter(path, threads), "score_details" if details else "score")

    def __call__(self, inputs, targets):
        self.signature.resize({"inputs": inputs.shape, "targets": targets.shape})
        names = list(self.signature.outputs)
        return dict(zip(names, self.signature.run(names, inputs=inputs, targets=targets)))


SCORES = ("token_logprob", "top_logprobs", "top_ids")


def write_scores(buffers, scores, positions):
    """Write one step's scores (token_logprob [B], top_logprobs and top_ids [B, n]) into the state's
    buffers ([B, S + 1], [B, S + 1, n] twice) at positions [B]."""
    rows = np.arange(len(positions))
    for buffer, score in zip(buffers, scores):
        buffer[rows, positions] = score if score.ndim == 1 else score[:, :buffer.shape[2]]


def settings(temperature, top_k, top_p, controls=None):
    """The sampling settings and the generation controls (a decoding.Controls) as the signatures
    take them (controls.INPUTS: what is off given its off value)."""
    c = controls or Controls()
    bias = c.logit_bias or ((0, 0.0),)
    f32, i32 = np.float32, np.int32
    return {"temperature": np.array(temperature, f32), "top_k": np.array(top_k, i32),
            "top_p": np.array(top_p, f32), "repetition_penalty": np.array(c.repetition_penalty, f32),
            "frequency_penalty": np.array(c.frequency_penalty, f32),
            "presence_penalty": np.array(c.presence_penalty, f32),
            "no_repeat_ngram_size": np.array(c.no_repeat_ngram_size, i32), "min_p": np.array(c.min_p, f32),
            "logit_bias_ids": np.array([i for i, _ in bias], i32),
            "logit_bias_values": np.array([v for _, v in bias], f32), "banned": padded_sequences(c.banned),
            "logprobs": np.array(max(1, c.logprobs or 0), i32)}  # LiteRT reads no empty output
