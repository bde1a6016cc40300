"""LoRA (Hu et al., 2021): the base weights frozen, a low-rank update trained beside some conv1d layers.

A layer `w` [nx, nf] gains `lora_a` [nx, r] and `lora_b` [r, nf]; it computes x w + b + dropout(x)
lora_a lora_b * alpha / r (model.Conv1D.enable_lora). Which layers: `TARGETS`, by their names in the
original checkpoint, "attn/c_attn" by default. An adapter is {TF1 name: array}, e.g.
"model/h0/attn/c_attn/lora_a" [nx, r], with its `LoraConfig`.

The adapter as peft writes it for transformers' GPT-2 (`to_peft` / `from_peft`): adapter_config.json
(peft_type LORA, r, lora_alpha, lora_dropout, target_modules, fan_in_fan_out true: GPT-2's Conv1D
stores its weight as [in, out]) and adapter_model.safetensors with
"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" [r, nx] (= lora_a transposed) and
"...lora_B.weight" [nf, r] (= lora_b transposed). This module does not import TensorFlow.
"""

import dataclasses
import json
import os

import numpy as np

from gpt2_tf.checkpoint_files import CheckpointError

TARGETS = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
LORA_FILE = "lora.json"  # in a run's folder: {"base": the checkpoint adapted, and the LoraConfig}


@dataclasses.dataclass
class LoraConfig:
    """An adapter's shape: rank r, alpha (the update is scaled by alpha / r), dropout, the targeted
    layers (names of TARGETS)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple = ("attn/c_attn",)

    @property
    def scale(self):
        return self.alpha / self.rank

    def to_dict(self):
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values):
        return cls(int(values["rank"]), float(values["alpha"]), float(values.get("dropout", 0.0)),
                   tuple(values["targets"]))


def read_record(run_dir):
    """(base checkpoint prefix, LoraConfig) of a LoRA run's folder, or None for a run of all weights.
    A record that cannot be read is a CheckpointError."""
    path = os.path.join(run_dir, LORA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        return record["base"], LoraConfig.from_dict(record)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def write_record(run_dir, base, config):
    """Write a run's lora.json, atomically."""
    from gpt2_tf.files import atomic_write

    with atomic_write(os.path.join(run_dir, LORA_FILE), encoding="utf-8") as f:
        json.dump({"base": os.path.abspath(base), **config.to_dict()}, f, indent=1)
        f.write("\n")


def adapter_arrays(variables, prefix):
    """{TF1 name: float32 array} of an adapter's variables, to save at `prefix`; factors that are not all
    finite are refused (CheckpointError), so that a run's newest checkpoint is one it can go on from."""
    arrays = {name: np.asarray(v, np.float32) for name, v in variables.items()}
    damaged = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
    if damaged:
        raise CheckpointError(f"not saving {prefix}: {damaged[0]} holds values that are not finite")
    return arrays


def merge_into(model, adapter, config):
    """Add an adapter ({TF1 name: array}) to a GPT2's weights in place: each targeted w += alpha / r
    lora_a lora_b. Returns the model."""
    for name, layer in layers(model, config.targets).items():
        layer.w.assign(updated(np.asarray(layer.w), adapter[f"{name}/lora_a"], adapter[f"{name}/lora_b"],
                               config.scale))
    return model


def factor_count(hparams, rank, targets):
    """How many numbers the factors of rank `rank` on `targets` hold in a model of `hparams`."""
    c = hparams.n_embd
    sizes = {"attn/c_attn": (c, 3 * c), "attn/c_proj": (c, c), "mlp/c_fc": (c, 4 * c),
             "mlp/c_proj": (4 * c, c)}
    return hparams.n_layer * sum(rank * sum(sizes[t]) for t in dict.fromkeys(targets))


def layer_names(hparams, targets):
    """The TF1 names of the targeted layers of a model of `hparams`: ["model/h0/attn/c_attn", ...]."""
    return [f"model/h{i}/{target}" for i in range(hparams.n_layer) for target in targets]


def layers(model, targets):
    """{TF1 name of the layer, e.g. "model/h0/attn/c_attn": its Conv1D} of a GPT2's targeted layers."""
    found = {}
    for i, block in enumerate(model.blocks):
        for target in targets:
            group, name = target.split("/")
            found[f"model/h{i}/{target}"] = getattr(getattr(block, group), name)
    return found


def enable_lora(model, config, seed=None):
    """Freeze all of a GPT2's weights and give its targeted layers LoRA factors; returns their
    variables, {TF1 name ("model/h0/attn/c_attn/lora_a", ".../lora_b"): variable}."""
    for variable in model.variables_by_name().values():
        variable.trainable = False
    found = {}
    for i, (name, layer) in enumerate(layers(model, config.targets).items()):
        layer.enable_lora(config.rank, config.alpha, config.dropout, None if seed is None else seed + i)
        found[f"{name}/lora_a"], found[f"{name}/lora_b"] = layer.lora["a"], layer.lora["b"]
    return found


def merged(weights, adapter, config):
    """The base weights {TF1 name: array} with the adapter's update added to each targeted `w`
    ([1, nx, nf] as in checkpoints, or [nx, nf]); computed in float64, stored in the weight's type."""
    out = dict(weights)
    for name in adapter:
        if name.endswith("/lora_a"):
            layer = name[:-len("/lora_a")]
            out[f"{layer}/w"] = updated(weights[f"{layer}/w"], adapter[name], adapter[f"{layer}/lora_b"],
                                        config.scale)
    return out


def updated(w, lora_a, lora_b, scale):
    """w + scale lora_a lora_b for w [nx, nf] (or [1, nx, nf]), lora_a [nx, r], lora_b [r, nf]: computed
    in float64, returned in w's shape and type."""
    delta = np.asarray(lora_a, np.float64) @ np.asarray(lora_b, np.float64)
    return (np.asarray(w, np.float64) + scale * delta.reshape(w.shape)).astype(w.dtype)


def peft_name(name):
    """The peft tensor name of an adapter's TF1 name: model/h3/mlp/c_fc/lora_a ->
    base_model.model.transformer.h.3.mlp.c_fc.lora_A.weight."""
    _, block, group, layer, factor = name.split("/")
    return (f"base_model.model.transformer.h.{block[1:]}.{group}.{layer}."
            f"lora_{factor[-1].upper()}.weight")


def to_peft(adapter, config, base_model=None):
    """(adapter_config.json's dict, {peft name: float32 array}) of an adapter, as peft saves one."""
    tensors = {peft_name(name): np.ascontiguousarray(np.asarray(value, np.float32).T)
               for name, value in adapter.items()}
    settings = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
                "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
                "target_modules": [target.replace("/", ".") for target in config.targets],
                "fan_in_fan_out": True, "bias": "none", "inference_mode": True, "use_rslora": False,
                "init_lora_weights": True, "modules_to_save": None}
    return settings, tensors
