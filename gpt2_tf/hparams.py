"""Model hyperparameters, in the layout of the released `hparams.json`.

This module does not import TensorFlow.
"""

import dataclasses
import json
import os

from gpt2_tf.files import atomic_write

# The four released sizes, as their hparams.json files hold them.
RELEASED = {
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}

# Old names of the two smaller models, from before their parameters were recounted.
ALIASES = {"117M": "124M", "345M": "355M"}


def canonical_name(model_name):
    """'117M' -> '124M', '345M' -> '355M'; any other name unchanged."""
    return ALIASES.get(model_name, model_name)


@dataclasses.dataclass
class HParams:
    """GPT-2 hyperparameters. Field order is the key order of the released hparams.json."""

    n_vocab: int = 0
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"hparams: {field.name} must be a non-negative integer, got {value!r}")
        if self.n_head == 0 or self.n_embd % self.n_head:
            raise ValueError(f"hparams: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @classmethod
    def from_dict(cls, values):
        """Build from a dict such as the contents of hparams.json; unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"hparams: unknown keys {unknown}; expected {sorted(known)}")
        return cls(**values)

    def to_dict(self):
        return dataclasses.asdict(self)

    def n_params(self):
        """Parameter count: V*C + n_ctx*C + L*(12*C^2 + 13*C) + 2*C."""
        c = self.n_embd
        return self.n_vocab * c + self.n_ctx * c + self.n_layer * (12 * c * c + 13 * c) + 2 * c

    def variable_shapes(self):
        """{TF1 variable name: shape} of every tensor in a GPT-2 checkpoint."""
        c = self.n_embd
        shapes = {"model/wpe": [self.n_ctx, c], "model/wte": [self.n_vocab, c]}
        for i in range(self.n_layer):
            p = f"model/h{i}/"
            shapes.update({
                p + "ln_1/g": [c], p + "ln_1/b": [c],
                p + "attn/c_attn/w": [1, c, 3 * c], p + "attn/c_attn/b": [3 * c],
                p + "attn/c_proj/w": [1, c, c], p + "attn/c_proj/b": [c],
                p + "ln_2/g": [c], p + "ln_2/b": [c],
                p + "mlp/c_fc/w": [1, c, 4 * c], p + "mlp/c_fc/b": [4 * c],
                p + "mlp/c_proj/w": [1, 4 * c, c], p + "mlp/c_proj/b": [c],
            })
        shapes.update({"model/ln_f/g": [c], "model/ln_f/b": [c]})
        return shapes


def released(model_name):
    """HParams of a released size, by name or old alias."""
    name = canonical_name(model_name)
    if name not in RELEASED:
        raise ValueError(f"unknown model {model_name!r}; released models are {', '.join(RELEASED)}")
    return HParams(**RELEASED[name])


def load_hparams(path):
    """Read an hparams.json file (or the one inside a directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "hparams.json")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return HParams.from_dict(values)


def save_hparams(hparams, path):
    """Write hparams.json as the release does (2-space indent, trailing newline), atomically."""
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(hparams.to_dict(), f, indent=2)
        f.write("\n")


def missing_model(model_name, models_dir="models", files=("hparams.json", "checkpoint")):
    """Why `models_dir/model_name` cannot be used (None when it holds `files`), in one line that ends
    with what to do: the download command for a released model, else what the folder lacks."""
    path = model_dir(model_name, models_dir)
    released_name = canonical_name(model_name) in RELEASED
    download = f"python download_model.py {model_name}"
    if os.path.normpath(models_dir) != "models":
        download += f" --models_dir {models_dir}"
    if not os.path.isdir(path):
        if released_name:
            return f"model {model_name} not found in {models_dir}; download it first: {download}"
        folder = os.path.expanduser(os.path.expandvars(models_dir))
        have = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))) \
            if os.path.isdir(folder) else []
        return (f"no model {model_name} in {models_dir} (" + (f"it has {', '.join(have)}; " if have else "")
                + f"the released models are {', '.join(RELEASED)})")
    lacking = [name for name in files if not os.path.exists(os.path.join(path, name))]
    if not lacking:
        return None
    if released_name:
        return f"{path} is incomplete (no {lacking[0]}); finish the download: {download}"
    return f"{path} is not a model folder: it has no {lacking[0]}"


def model_dir(model_name, models_dir="models"):
    """The folder of a model: `models_dir/model_name`, or the folder of its new name for an old alias."""
    models_dir = os.path.expanduser(os.path.expandvars(models_dir))
    path = os.path.join(models_dir, model_name)
    if not os.path.isdir(path) and model_name in ALIASES:
        path = os.path.join(models_dir, ALIASES[model_name])
    return path
