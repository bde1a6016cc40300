from setuptools import find_packages, setup

setup(
    name="gpt2-tf",
    version="0.1.0",
    description="OpenAI's GPT-2 (and the nshepperd fine-tuning tools) on TensorFlow 2 and Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gpt2_tf", "gpt2_tf.*"]),
    py_modules=["download_model", "encode", "train", "sample", "train_bpe", "lens", "attention", "score",
                "convert"],
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "regex",
        "numpy",
        "tqdm",
        "requests",
        "urllib3>=2",  # the downloader reads partial bodies with read1()
    ],
    extras_require={
        # tiktoken and tokenizers are test oracles; transformers (on torch), keras-hub and safetensors are
        # the clients that prove convert.py's formats (docs/convert.md); gpt-2-simple proves the CSV reading,
        # lm-evaluation-harness score.py --task
        "test": ["pytest", "hypothesis", "ruff", "tiktoken", "tokenizers", "matplotlib", "torch",
                 "transformers", "keras-hub", "safetensors", "ai-edge-litert", "gpt-2-simple", "lm-eval[hf]"],
        "fast": ["tiktoken"],  # encode.py about 6x faster, same tokens (docs/encode.md)
        "lens": ["matplotlib"],  # lens.py --png and attention.py --png only
        "keras-hub": ["keras-hub"],  # convert.py --to keras_hub, and reading KerasHub presets
        "litert": ["ai-edge-litert"],  # sample.py and score.py on LiteRT models (docs/litert.md)
    },
    entry_points={
        "console_scripts": [
            "gpt2-download=download_model:main",
            "gpt2-encode=encode:main",
            "gpt2-train=train:main",
            "gpt2-sample=sample:main",
            "gpt2-train-bpe=train_bpe:main",
            "gpt2-lens=lens:main",
            "gpt2-attention=attention:main",
            "gpt2-score=score:main",
            "gpt2-convert=convert:main",
        ],
    },
)
