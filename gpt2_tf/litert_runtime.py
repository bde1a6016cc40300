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

from gpt2_tf.decoding import Drawing, GenerationState

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
    `view(name)` is a writable NumPy view of an input's buffer (drop it before `run`)."""

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

    def run(self, outputs, **inputs):
        """Set `inputs` (NumPy arrays of the shapes given to `resize`), invoke, and return the named
        outputs."""
        for name, value in inputs.items():
            self.wrapper.SetTensor(self.inputs[name], value, self.subgraph)
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
              step=0):
        """As sample.Generator.start."""
        hp = self.hparams
        prompts, lengths, size, keys = self.prepared(prompts, length, seed, rows, keys)
        batch, longest = len(prompts), int(lengths.max())
        padded = np.zeros([batch, longest], np.int32)
        for b, p in enumerate(prompts):
            padded[b, :len(p)] = p
        state = GenerationState(keys, lengths, (temperature, top_k, top_p))
        state.settings = settings(temperature, top_k, top_p)
        self.prompt.resize({"tokens": [batch, longest], "last": [batch], "keys": [batch]})
        token, present = self.prompt.run(["token", "present"], tokens=padded, last=lengths - 1, keys=keys,
                                         draw=np.array(step, np.int32), **state.settings)
        cache = [batch * hp.n_head, size, self.depth]
        self.decode.resize({"token": [batch], "position": [batch], "keys": [batch],
                            **{f"{kind}_{i}": cache for i in range(hp.n_layer) for kind in ("key", "value")}})
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
        for _ in range(n):
            # [B]: each row's last token, not yet in the cache
            position = (state.lengths + state.drawn - 1).astype(np.int32)
            token, new = self.decode.run(["next", "new"], token=state.tokens[batch, position],
                                         position=position, keys=state.keys,
                                         draw=np.array(state.step + state.drawn, np.int32), **state.settings)
            at = np.repeat(position, self.hparams.n_head)
            for layer in range(self.hparams.n_layer):
                self.decode.view(f"key_{layer}")[heads, at] = new[layer, 0]
                self.decode.view(f"value_{layer}")[heads, at] = new[layer, 1]
            state.tokens[batch, position + 1] = token
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


def settings(temperature, top_k, top_p):
    """The sampling settings as the signatures take them (scalars)."""
    return {"temperature": np.array(temperature, np.float32), "top_k": np.array(top_k, np.int32),
            "top_p": np.array(top_p, np.float32)}
