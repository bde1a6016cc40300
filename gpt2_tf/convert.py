"""Move a GPT-2 model between this project's TF1 checkpoints, Hugging Face and KerasHub.

The three formats:
- "tf1": a model folder as OpenAI released them (hparams.json, encoder.json, vocab.bpe, checkpoint,
  model.ckpt.*), a training run's folder (its newest checkpoint), or a checkpoint prefix;
- "hf": a Hugging Face folder: config.json (model_type gpt2), model.safetensors or the shards named by
  model.safetensors.index.json, and the tokenizer as vocab.json + merges.txt or as tokenizer.json;
- "keras_hub": a KerasHub preset folder (GPT2Backbone or GPT2CausalLM).
Two more are written, never read: "saved_model" (gpt2_tf/serving.py) and "litert" (a LiteRT model
folder: model.tflite and score.tflite beside hparams.json and the tokenizer; gpt2_tf/litert.py).

Each reader gives a `ModelData`: hyperparameters, the weights by TF1 name in the original's shapes, and
the BPE vocabulary. Each writer takes one and writes a complete folder, atomically (under a temporary
name beside it, renamed into place when complete). The weights are the same numbers in all three:

    TF1 (OpenAI, this project)   Hugging Face (GPT2LMHeadModel)     KerasHub (GPT2Backbone)
    model/wte [V, C]             transformer.wte.weight             token_embedding/embeddings
    model/wpe [n_ctx, C]         transformer.wpe.weight             position_embedding/embeddings
    model/hI/ln_1/g, b [C]       transformer.h.I.ln_1.weight, bias  transformer_layer_I/
                                                                      self_attention_layer_norm/gamma, beta
    model/hI/attn/c_attn/w       transformer.h.I.attn.c_attn.weight transformer_layer_I/self_attention/
      [1, C, 3C]                   [C, 3C]                            {query,key,value}/kernel [C, H, C/H]
    model/hI/attn/c_proj/w       transformer.h.I.attn.c_proj.weight transformer_layer_I/self_attention/
      [1, C, C]                    [C, C]                             attention_output/kernel [H, C/H, C]
    model/hI/ln_2                transformer.h.I.ln_2               feedforward_layer_norm
    model/hI/mlp/c_fc, c_proj    transformer.h.I.mlp.c_fc, c_proj   feedforward_{intermediate,output}_dense
    model/ln_f/g, b              transformer.ln_f.weight, bias      layer_norm/gamma, beta

Hugging Face's Conv1D keeps the original's [nx, nf] order, so only the leading 1 goes; KerasHub splits the
heads out of the same matrices. Both tie the output head to wte, as GPT-2 does.

Reading TF1 and Hugging Face folders, and writing Hugging Face folders, memory-maps the weights and needs
no TensorFlow; writing TF1 imports TensorFlow, and KerasHub needs keras-hub.
"""

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from gpt2_tf import lora, safetensors_file
from gpt2_tf.checkpoint_files import latest_prefix, read_bundle
from gpt2_tf.cli import describe
from gpt2_tf.encoder import ENDOFTEXT, load_encoder_files
from gpt2_tf.files import WriteError, atomic_write
from gpt2_tf.hparams import HParams, load_hparams, save_hparams

FORMATS = ("tf1", "hf", "keras_hub", "saved_model", "litert")  # saved_model and litert are written, not read

# Hugging Face's names for the tanh approximation of GELU that GPT-2 uses (the same function).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class ConvertError(ValueError):
    """A model that cannot be read or written, or that this model cannot represent."""


@dataclasses.dataclass
class ModelData:
    """A GPT-2 model in the original's terms, whatever folder it came from.

    weights: {TF1 name: float32 array in the original's shape (Conv1D weights [1, nx, nf])}; readers
             give memory-mapped views where the stored bytes are float32.
    encoder: encoder.json's {token: id}; merges: vocab.bpe's [(first, second)].
    notes: what was lost or changed on the way in (e.g. "bfloat16 weights widened"), for a warning.
    """

    hparams: HParams
    weights: dict
    encoder: dict
    merges: list
    notes: list = dataclasses.field(default_factory=list)
    adapter: "tuple | None" = None  # a LoRA run: (its factors {TF1 name: array}, lora.LoraConfig, base)

    @property
    def eot(self):
        """The id of <|endoftext|>."""
        return self.encoder[ENDOFTEXT]


def detect_format(path):
    """"tf1", "hf" or "keras_hub": what `path` holds. Raises ConvertError when it is none of them."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "hparams.json")):
            return "tf1"
        config_path = os.path.join(path, "config.json")
        if os.path.exists(config_path):
            config = read_json(config_path)
            if str(config.get("registered_name", "")).startswith("keras_hub>") or \
                    os.path.exists(os.path.join(path, "metadata.json")):
                return "keras_hub"
            return "hf"
        if os.path.exists(os.path.join(path, "saved_model.pb")) or glob.glob(os.path.join(path, "*",
                                                                                           "saved_model.pb")):
            raise ConvertError(f"{path} is a TensorFlow SavedModel, which is only written here; convert the "
                               "model it was made from")
        raise ConvertError(f"{path} is not a model folder: it has no hparams.json (TF1) and no config.json "
                           f"(Hugging Face, KerasHub)")
    if os.path.exists(path + ".index"):
        return "tf1"
    if os.path.exists(path):
        raise ConvertError(f"{path} is a file; give a model folder or a checkpoint prefix (without .index)")
    raise ConvertError(f"{path} does not exist")


def read(path, fmt=None):
    """Read a model in any of FORMATS (detected unless `fmt` is given); returns a ModelData."""
    fmt = fmt or detect_format(path)
    return {"tf1": read_tf1, "hf": read_hf, "keras_hub": read_keras_hub}[fmt](path)


def write(data, dst, fmt, progress=True, quantize="int8", merge=False):
    """Write a ModelData as a new folder `dst` in one of FORMATS. `dst` must not exist, or be empty.
    `quantize`: the weights of a LiteRT model, "int8" or "float32". A LoRA run's data (`adapter`) is
    written as its merged model, except to "hf" without `merge`: the adapter alone, as peft writes it."""
    if fmt == "hf" and data.adapter is not None and not merge:
        return write_peft(data, dst)
    if fmt == "litert":
        return write_litert(data, dst, progress=progress, quantize=quantize)
    writers = {"tf1": write_tf1, "hf": write_hf, "keras_hub": write_keras_hub,
               "saved_model": write_saved_model}
    writers[fmt](data, dst, progress=progress)


def convert(src, dst, to=None, progress=True, merge=False):
    """Read `src` (any format) and write it to the new folder `dst` in format `to` (default tf1; from TF1
    to TF1 makes a model folder of a run's checkpoint; `merge`: see `write`). Returns the ModelData,
    whose `notes` say what was lossy."""
    data = read(src)
    write(data, dst, to or "tf1", progress=progress, merge=merge)
    return data


# ---------------------------------------------------------------------------------------------------
# TF1: OpenAI's layout, this project's own.

def read_tf1(path):
    """A model folder, a training run's folder (its newest checkpoint) or a checkpoint prefix. The
    folder must hold hparams.json, encoder.json and vocab.bpe. Tensors other than the model's weights
    (an optimizer's) are left out."""
    prefix = latest_prefix(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    hparams = load_hparams(folder)
    try:
        encoder, merges = load_encoder_files(folder)
    except FileNotFoundError as e:
        raise ConvertError(f"{folder} has no {os.path.basename(e.filename)}: the vocabulary is "
                           f"needed") from None
    shapes = hparams.variable_shapes()
    record = lora.read_record(os.path.dirname(prefix))
    weights = read_bundle(record[0] if record else prefix, shapes)
    for name, array in weights.items():
        if list(array.shape) != shapes[name]:
            raise ConvertError(f"checkpoint {prefix}: {name} has shape {list(array.shape)}, hparams.json "
                               f"needs {shapes[name]}")
    if record is None:
        return checked(ModelData(hparams, weights, encoder, merges), path)
    # A LoRA run: its base with the update merged, the factors kept for --to hf.
    base, config = record
    factors = read_bundle(prefix, [f"{layer}/lora_{f}" for layer in lora.layer_names(hparams, config.targets)
                                   for f in "ab"])
    data = ModelData(hparams, lora.merged(weights, factors, config), encoder, merges,
                     adapter=(factors, config, base))
    return checked(data, path)


def write_tf1(data, dst, progress=True):
    """A complete model folder that download_model.py's checks accept and every tool here reads as is:
    hparams.json, encoder.json, vocab.bpe, checkpoint, model.ckpt.{index,data-00000-of-00001,meta}."""
    from gpt2_tf import checkpoint
    from gpt2_tf.download import BadModelDir, verify_model_dir

    with new_folder(dst) as folder:
        say(progress, f"writing {dst} (TF1 checkpoint, {data.hparams.n_params() / 1e6:.0f}M parameters)")
        save_hparams(data.hparams, os.path.join(folder, "hparams.json"))
        write_vocabulary(data, os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe"))
        prefix = os.path.join(folder, "model.ckpt")
        checkpoint.save_tensors(data.weights, prefix)
        checkpoint.save_meta_graph(prefix, data.hparams)
        try:
            verify_model_dir(folder, data.hparams)
        except BadModelDir as e:
            raise ConvertError(f"not writing {dst}: {e}") from None


def write_saved_model(data, dst, progress=True):
    """A TensorFlow SavedModel that generates text by itself (gpt2_tf/serving.py), in dst/1/ as TF
    Serving loads it. It cannot be read back here: keep the model it came from."""
    from gpt2_tf.checkpoint import model_from_weights
    from gpt2_tf.serving import export

    with new_folder(dst) as folder:
        say(progress, f"writing {dst} (TensorFlow SavedModel, {data.hparams.n_params() / 1e6:.0f}M "
                      "parameters)")
        export(model_from_weights(data.hparams, data.weights), data.encoder, data.merges, folder)


def write_litert(data, dst, progress=True, quantize="int8"):
    """A LiteRT model folder (gpt2_tf/litert.py): model.tflite (generation), score.tflite (scoring),
    hparams.json, encoder.json and vocab.bpe, which sample.py and score.py run without TensorFlow.
    It cannot be read back here: keep the model it came from."""
    from gpt2_tf.checkpoint import model_from_weights
    from gpt2_tf.litert import write_litert as write_file

    with new_folder(dst) as folder:
        say(progress, f"writing {dst} (LiteRT, {quantize} weights, {data.hparams.n_params() / 1e6:.0f}M "
                      "parameters)")
        save_hparams(data.hparams, os.path.join(folder, "hparams.json"))
        write_vocabulary(data, os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe"))
        model = model_from_weights(data.hparams, data.weights)
        write_file(model, folder, quantize)


# ---------------------------------------------------------------------------------------------------
# Hugging Face: config.json, safetensors, vocab.json + merges.txt.

def hf_name(name):
    """Hugging Face's name (without the `transformer.` prefix) of a TF1 weight:
    'model/h3/attn/c_attn/w' -> 'h.3.attn.c_attn.weight', 'model/wte' -> 'wte.weight'."""
    path = name.split("/")[1:]
    if len(path) == 1:
        return path[0] + ".weight"
    block = re.fullmatch(r"h(\d+)", path[0])
    head = f"h.{block.group(1)}" if block else path[0]
    leaf = {"w": "weight", "g": "weight", "b": "bias"}[path[-1]]
    return ".".join([head, *path[1:-1], leaf])


def hf_hparams(config, where):
    """HParams from a Hugging Face config.json, refusing (ConvertError naming the field) what GPT-2 as
    written here cannot compute."""
    def refuse(field, why):
        raise ConvertError(f"{where}: {field} is {config.get(field)!r}; {why}, so this model cannot be "
                           f"represented here")

    if config.get("model_type") != "gpt2":
        refuse("model_type", "only GPT-2 (gpt2) is read")
    c = config.get("n_embd", 768)
    if config.get("n_inner") not in (None, 4 * c):
        refuse("n_inner", f"GPT-2's MLP is 4 * n_embd = {4 * c} wide")
    if config.get("activation_function", "gelu_new") not in TANH_GELU:
        refuse("activation_function", "GPT-2 uses the tanh approximation of GELU (gelu_new)")
    if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        refuse("layer_norm_epsilon", "GPT-2's layer norm adds 1e-5")
    for field in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if config.get(field, False):
            refuse(field, "GPT-2 has no such option")
    if not config.get("scale_attn_weights", True):
        refuse("scale_attn_weights", "GPT-2 divides attention scores by sqrt(head size)")
    try:
        return HParams(n_vocab=config.get("vocab_size", 50257), n_ctx=config.get("n_positions", 1024),
                       n_embd=c, n_head=config.get("n_head", 12), n_layer=config.get("n_layer", 12))
    except ValueError as e:
        raise ConvertError(f"{where}: {e}") from None


def hf_config(hparams, eot):
    """config.json of a GPT2LMHeadModel with these hyperparameters (dropout as Hugging Face's GPT-2)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": hparams.n_vocab, "n_positions": hparams.n_ctx, "n_ctx": hparams.n_ctx,
        "n_embd": hparams.n_embd, "n_layer": hparams.n_layer, "n_head": hparams.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "initializer_range": 0.02,
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "scale_attn_weights": True,
        "tie_word_embeddings": True, "use_cache": True, "bos_token_id": eot, "eos_token_id": eot,
        "dtype": "float32",
    }


def read_hf(folder):
    """A Hugging Face GPT-2 folder. Tensor names may have the `transformer.` prefix (save_pretrained of a
    GPT2LMHeadModel) or not (GPT2Model, the Hub's openai-community/gpt2); the attention-mask buffers
    are ignored; lm_head.weight is accepted only when it equals wte."""
    config = read_json(os.path.join(folder, "config.json"))
    hparams = hf_hparams(config, os.path.join(folder, "config.json"))
    try:
        _, stored = safetensors_file.read_folder(folder)
    except FileNotFoundError:
        bin_file = os.path.join(folder, "pytorch_model.bin")
        hint = (" (it has pytorch_model.bin: save it again as safetensors with transformers' "
                "save_pretrained)") if os.path.exists(bin_file) else ""
        raise ConvertError(f"{folder} has no model.safetensors or {safetensors_file.INDEX_FILE}"
                           f"{hint}") from None
    shapes = hparams.variable_shapes()
    by_hf_name = {hf_name(name): name for name in shapes}
    weights, dtypes, head = {}, set(), None
    for stored_name, (dtype, array) in stored.items():
        name = stored_name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal mask, stored by old versions of transformers
        if name == "lm_head.weight":
            head = (dtype, array)
            continue
        if name not in by_hf_name:
            raise ConvertError(f"{folder}: {stored_name} is not a weight of a GPT-2 language model")
        tf1 = by_hf_name[name]
        want = shapes[tf1][1:] if len(shapes[tf1]) == 3 else shapes[tf1]  # Conv1D: [nx, nf]
        if list(array.shape) != want:
            raise ConvertError(f"{folder}: {stored_name} has shape {list(array.shape)}; config.json needs "
                               f"{want}")
        dtypes.add(dtype)
        weights[tf1] = safetensors_file.to_float32(dtype, array).reshape(shapes[tf1])
    missing = [hf_name(name) for name in shapes if name not in weights]
    if missing:
        raise ConvertError(f"{folder} has no tensor {missing[0]} (nor transformer.{missing[0]})")
    if head is not None and not np.array_equal(safetensors_file.to_float32(*head), weights["model/wte"]):
        raise ConvertError(f"{folder}: lm_head.weight differs from wte.weight: the output head is untied, "
                           f"and GPT-2 ties it to the token embedding, so this model cannot be represented "
                           f"here")
    if not config.get("tie_word_embeddings", True) and head is None:
        raise ConvertError(f"{folder}: tie_word_embeddings is false and there is no lm_head.weight: the "
                           f"output head is untied, which GPT-2 cannot represent")
    encoder, merges = read_hf_tokenizer(folder)
    data = ModelData(hparams, weights, encoder, merges, notes=precision_notes(dtypes, folder))
    return checked(data, folder)


def read_hf_tokenizer(folder):
    """(encoder, merges) of a Hugging Face folder: vocab.json + merges.txt, or tokenizer.json holding a
    byte-level BPE model. Any other tokenizer is refused."""
    vocab, merges_txt = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if os.path.exists(vocab) and os.path.exists(merges_txt):
        encoder = read_json(vocab)
        with open(merges_txt, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        added = os.path.join(folder, "added_tokens.json")
        if os.path.exists(added):
            encoder.update(read_json(added))
    elif os.path.exists(os.path.join(folder, "tokenizer.json")):
        encoder, merges = bpe_from_tokenizer_json(read_json(os.path.join(folder, "tokenizer.json")), folder)
    else:
        others = [n for n in ("vocab.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")
                  if os.path.exists(os.path.join(folder, n))]
        if others:
            raise ConvertError(f"{folder}: its tokenizer ({others[0]}) is not GPT-2's byte-level BPE, which "
                               f"every tool here uses")
        raise ConvertError(f"{folder} has no tokenizer: expected vocab.json and merges.txt, or "
                           f"tokenizer.json")
    odd = [pair for pair in merges if len(pair) != 2]
    if odd:
        raise ConvertError(f"{folder}: a merge is not two symbols: {' '.join(odd[0])!r}")
    return encoder, merges


def bpe_from_tokenizer_json(tokenizer, folder):
    """(encoder, merges) of a `tokenizers` tokenizer.json, refused unless it is a byte-level BPE."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"{folder}: tokenizer.json holds a {model.get('type')} model, not GPT-2's "
                           f"byte-level BPE, which every tool here uses")
    pre = tokenizer.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if "ByteLevel" not in kinds:
        raise ConvertError(f"{folder}: tokenizer.json is a BPE without the byte-level pre-tokenizer "
                           f"(it has {kinds}); GPT-2's BPE works on bytes")
    encoder = dict(model.get("vocab") or {})
    for token in tokenizer.get("added_tokens", []):
        encoder.setdefault(token["content"], token["id"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return encoder, merges


def write_peft(data, dst):
    """A LoRA run's adapter as peft saves one (adapter_config.json, adapter_model.safetensors; see
    lora.py), for peft.PeftModel.from_pretrained on the base model's Hugging Face folder."""
    factors, config, base = data.adapter
    settings, tensors = lora.to_peft(factors, config, base)
    with new_folder(dst) as folder:
        write_json(os.path.join(folder, "adapter_config.json"), settings)
        safetensors_file.write(os.path.join(folder, "adapter_model.safetensors"), tensors, {"format": "pt"})


def write_hf(data, dst, progress=True):
    """A folder that transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained load:
    config.json, generation_config.json, model.safetensors ({"format": "pt"}, float32, the names that
    save_pretrained gives a GPT2LMHeadModel), vocab.json, merges.txt, tokenizer_config.json."""
    hp, eot = data.hparams, data.eot
    tensors = {"transformer." + hf_name(name): array[0] if array.ndim == 3 else array  # Conv1D: [nx, nf]
               for name, array in data.weights.items()}
    with new_folder(dst) as folder:
        write_json(os.path.join(folder, "config.json"), hf_config(hp, eot))
        write_json(os.path.join(folder, "generation_config.json"), {"bos_token_id": eot, "eos_token_id": eot})
        write_json(os.path.join(folder, "tokenizer_config.json"), {
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": hp.n_ctx, "add_prefix_space": False,
            "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT, "errors": "replace"})
        write_vocabulary(data, os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
        with progress_bar(progress, sum(a.size * 4 for a in tensors.values()), f"writing {dst}") as bar:
            safetensors_file.write(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"},
                                   progress=bar.update)


# ---------------------------------------------------------------------------------------------------
# KerasHub: a preset folder, written and read by keras-hub itself.

def to_keras_hub(weights, hparams):
    """{KerasHub GPT2Backbone variable path: array} of TF1 weights."""
    c, h = hparams.n_embd, hparams.n_head
    values = {"token_embedding/embeddings": weights["model/wte"],
              "position_embedding/embeddings": weights["model/wpe"],
              "layer_norm/gamma": weights["model/ln_f/g"], "layer_norm/beta": weights["model/ln_f/b"]}
    for i in range(hparams.n_layer):
        src, dst = f"model/h{i}/", f"transformer_layer_{i}/"
        w, b = weights[src + "attn/c_attn/w"][0], weights[src + "attn/c_attn/b"]
        for k, part in enumerate(("query", "key", "value")):
            values[dst + f"self_attention/{part}/kernel"] = w[:, k * c:(k + 1) * c].reshape(c, h, c // h)
            values[dst + f"self_attention/{part}/bias"] = b[k * c:(k + 1) * c].reshape(h, c // h)
        values[dst + "self_attention/attention_output/kernel"] = \
            weights[src + "attn/c_proj/w"][0].reshape(h, c // h, c)
        values[dst + "self_attention/attention_output/bias"] = weights[src + "attn/c_proj/b"]
        for tf1, keras_name in KERAS_HUB_LAYERS:
            if tf1.startswith("ln"):
                values[dst + keras_name + "/gamma"] = weights[src + tf1 + "/g"]
                values[dst + keras_name + "/beta"] = weights[src + tf1 + "/b"]
            else:
                values[dst + keras_name + "/kernel"] = weights[src + tf1 + "/w"][0]
                values[dst + keras_name + "/bias"] = weights[src + tf1 + "/b"]
    return values


def from_keras_hub(values, hparams):
    """TF1 weights {name: array in the original's shape} of {KerasHub variable path: array}."""
    c = hparams.n_embd
    weights = {"model/wte": values["token_embedding/embeddings"],
               "model/wpe": values["position_embedding/embeddings"],
               "model/ln_f/g": values["layer_norm/gamma"], "model/ln_f/b": values["layer_norm/beta"]}
    for i in range(hparams.n_layer):
        src, dst = f"transformer_layer_{i}/self_attention/", f"model/h{i}/"
        parts = ("query", "key", "value")
        weights[dst + "attn/c_attn/w"] = np.concatenate(
            [values[f"{src}{p}/kernel"].reshape(c, c) for p in parts], axis=1)[None]
        weights[dst + "attn/c_attn/b"] = np.concatenate([values[f"{src}{p}/bias"].reshape(c) for p in parts])
        weights[dst + "attn/c_proj/w"] = values[src + "attention_output/kernel"].reshape(1, c, c)
        weights[dst + "attn/c_proj/b"] = values[src + "attention_output/bias"]
        for tf1, keras_name in KERAS_HUB_LAYERS:
            path = f"transformer_layer_{i}/{keras_name}/"
            if tf1.startswith("ln"):
                weights[dst + tf1 + "/g"] = values[path + "gamma"]
                weights[dst + tf1 + "/b"] = values[path + "beta"]
            else:
                weights[dst + tf1 + "/w"] = values[path + "kernel"][None]
                weights[dst + tf1 + "/b"] = values[path + "bias"]
    return weights


# TF1 scope in a block -> KerasHub layer in a TransformerDecoder, for the pieces that map one to one.
KERAS_HUB_LAYERS = (("ln_1", "self_attention_layer_norm"), ("ln_2", "feedforward_layer_norm"),
                    ("mlp/c_fc", "feedforward_intermediate_dense"),
                    ("mlp/c_proj", "feedforward_output_dense"))


def import_keras_hub(what):
    try:
        import keras_hub
    except ImportError:
        raise ConvertError(f"{what} needs keras-hub: pip install 'gpt2-tf[keras-hub]'") from None
    return keras_hub


def read_keras_hub(folder):
    """A KerasHub preset of a GPT2Backbone (a GPT2CausalLM's preset holds one), loaded by keras-hub."""
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path)
    if config.get("class_name") != "GPT2Backbone":
        raise ConvertError(f"{config_path}: class_name is {config.get('class_name')!r}; only GPT2Backbone "
                           f"presets hold GPT-2")
    c = config.get("config", {})
    if c.get("intermediate_dim") != 4 * c.get("hidden_dim", 0):
        raise ConvertError(f"{config_path}: intermediate_dim is {c.get('intermediate_dim')}; GPT-2's MLP is "
                           f"4 * hidden_dim = {4 * c.get('hidden_dim', 0)} wide, so this model cannot be "
                           f"represented here")
    keras_hub = import_keras_hub("reading a KerasHub preset")
    backbone = keras_hub.models.GPT2Backbone.from_preset(folder)
    tokenizer = keras_hub.models.GPT2Tokenizer.from_preset(folder)
    hparams = HParams(n_vocab=backbone.vocabulary_size, n_ctx=backbone.max_sequence_length,
                      n_embd=backbone.hidden_dim, n_head=backbone.num_heads, n_layer=backbone.num_layers)
    dtypes = {str(v.dtype) for v in backbone.weights}
    values = {v.path.removeprefix(backbone.name + "/"): np.asarray(v.numpy()).astype(np.float32, copy=False)
              for v in backbone.weights}
    weights = from_keras_hub(values, hparams)
    merges = [tuple(m.split(" ")) for m in tokenizer.merges]
    stored = {"BF16" if "bfloat16" in d else "F16" if "float16" in d else "F32" for d in dtypes}
    notes = precision_notes(stored, folder)
    return checked(ModelData(hparams, weights, dict(tokenizer.vocabulary), merges, notes), folder)


def write_keras_hub(data, dst, progress=True):
    """A preset folder that keras_hub.models.GPT2CausalLM.from_preset loads, with its tokenizer and a
    preprocessor of n_ctx tokens, float32; written by keras-hub's own save_to_preset."""
    keras_hub = import_keras_hub("writing a KerasHub preset")
    hp = data.hparams
    say(progress, f"writing {dst} (KerasHub preset, {hp.n_params() / 1e6:.0f}M parameters)")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=hp.n_vocab, num_layers=hp.n_layer, num_heads=hp.n_head, hidden_dim=hp.n_embd,
        intermediate_dim=4 * hp.n_embd, dropout=0.1, max_sequence_length=hp.n_ctx, dtype="float32")
    values = to_keras_hub(data.weights, hp)
    for variable in backbone.weights:
        variable.assign(values[variable.path.removeprefix(backbone.name + "/")])
    merges = [" ".join(pair) for pair in data.merges]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=data.encoder, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=hp.n_ctx)
    with new_folder(dst) as folder:
        keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor).save_to_preset(folder)


# ---------------------------------------------------------------------------------------------------
# Shared pieces.

def checked(data, where):
    """`data`, once its vocabulary is known to fit: tokens 0 to n_vocab - 1, <|endoftext|> among them."""
    n_vocab = data.hparams.n_vocab
    if ENDOFTEXT not in data.encoder:
        raise ConvertError(f"{where}: the vocabulary has no {ENDOFTEXT}, which GPT-2 needs")
    if len(data.encoder) != n_vocab or set(data.encoder.values()) != set(range(n_vocab)):
        raise ConvertError(f"{where}: the vocabulary has {len(data.encoder)} tokens, but the model's "
                           f"vocab_size (n_vocab) is {n_vocab}; they must be tokens 0 to {n_vocab - 1}")
    return data


def precision_notes(dtypes, where):
    """Warnings for weights that were not stored as float32."""
    notes = []
    for dtype, name in (("BF16", "bfloat16"), ("F16", "float16")):
        if dtype in dtypes:
            notes.append(f"{where} stores {name} weights: they are widened to float32 exactly, but keep "
                         f"{name}'s precision (about {3 if dtype == 'BF16' else 4} significant digits)")
    if "F64" in dtypes:
        notes.append(f"{where} stores float64 weights: they are rounded to float32")
    return notes


def write_vocabulary(data, encoder_path, merges_path):
    """encoder.json (vocab.json) and vocab.bpe (merges.txt), byte for byte as the release writes them."""
    with atomic_write(encoder_path, encoding="utf-8") as f:
        f.write(json.dumps(data.encoder))
    with atomic_write(merges_path, encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in data.merges))


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path} must hold a JSON object")
    return value


def write_json(path, value):
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


@contextlib.contextmanager
def new_folder(dst):
    """A temporary folder beside `dst` to write into; renamed to `dst` when the block completes, removed
    if it fails. `dst` must not exist, or be an empty folder. A failed write (a full disk) is a
    WriteError about `dst`, never naming the temporary folder."""
    if os.path.exists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
        raise ConvertError(f"{dst} already exists; give a new folder")
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dst))}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.isdir(dst):
            os.rmdir(dst)
        os.rename(tmp, dst)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, BrokenPipeError) or not (isinstance(e, OSError) or type(e).__name__ ==
                                                  "ResourceExhaustedError"):
            raise
        errno = getattr(e, "errno", None)
        reason = os.strerror(errno) if isinstance(errno, int) else describe(e)
        raise WriteError(errno, f"cannot write {dst}: {reason}") from None


def say(progress, message):
    if progress:
        print(message, file=sys.stderr)


@contextlib.contextmanager
def progress_bar(progress, total, description):
    """A tqdm bar over `total` bytes (or a bar that shows nothing)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="B", unit_scale=True, disable=not progress,
              file=sys.stderr, leave=False) as bar:
        yield bar
