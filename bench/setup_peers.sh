#!/usr/bin/env bash
# Create the environments of the peers that the benchmarks compare against, outside the repository:
#   torch:    PyTorch 2.13.0 (CPU build) + Hugging Face transformers (GPT2LMHeadModel), and
#             CTranslate2 (bench/sample.py's ct2 rows, converted from a transformers model)
#   kerashub: TensorFlow + KerasHub (GPT2CausalLM, bench/sample.py); tensorflow-text without its
#             dependencies, so that pip does not replace the TensorFlow that keras-hub runs on
#   kerashub-lib: keras-hub and tensorflow-text alone, for the project's own Python (bench/train.py)
# Set GPT2_BENCH_ENVS to choose where (default ~/.cache/gpt2-tf-bench).
set -euo pipefail
envs=${GPT2_BENCH_ENVS:-$HOME/.cache/gpt2-tf-bench}
mkdir -p "$envs"
if [ ! -x "$envs/torch/bin/python" ]; then
    python3 -m venv "$envs/torch"
    "$envs/torch/bin/pip" install --quiet torch==2.13.0 transformers psutil numpy
fi
if ! "$envs/torch/bin/python" -c "import ctranslate2" 2>/dev/null; then
    "$envs/torch/bin/pip" install --quiet ctranslate2
fi
if [ ! -x "$envs/kerashub/bin/python" ]; then
    tf_version=$(python -c "import tensorflow as tf; print(tf.__version__)" 2>/dev/null || echo 2.21.0)
    python3 -m venv "$envs/kerashub"
    "$envs/kerashub/bin/pip" install --quiet "tensorflow==$tf_version" keras-hub psutil
    "$envs/kerashub/bin/pip" install --quiet --no-deps tensorflow-text
fi
# bench/train.py runs KerasHub with the project's own Python and this folder on PYTHONPATH.
if [ ! -d "$envs/kerashub-lib" ]; then
    python -m pip install --quiet --no-deps --target "$envs/kerashub-lib" keras-hub tensorflow-text
fi
echo "$envs"
