from setuptools import find_packages, setup

setup(
    name="infodec",
    version="0.1.0",
    description="Language-model decoding as optimisation: value-function decoders and DAEMON in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infodec", "infodec.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "safetensors>=0.4",
        "ml_dtypes>=0.4",  # bfloat16 on the host (a jax dependency; the loader uses it directly)
        "tokenizers>=0.20",
        # Chat templates run in Jinja's sandbox; 3.1.6 closes known sandbox escapes (transformers requires it too).
        "jinja2>=3.1.6",
        "gguf>=0.10",
        "huggingface_hub>=0.24",
        "tqdm>=4.66",
        "flatbuffers>=24.3",  # jax.export's serialisation (infodec.compilation's saved programs)
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch is pinned to the CPU build this project tests against; install it first (README).
        # MAUVE (infodec.eval.mauve): the mauve-text library imports torch at import time.
        "eval": ["torch==2.13.0", "mauve-text>=0.4", "faiss-cpu>=1.8", "scikit-learn>=1.4"],
        "test": [
            "pytest>=8",
            # The suite runs on two workers (README's test command): it is compile-bound, and one process
            # leaves a core idle while XLA compiles.
            "pytest-xdist>=3.6",
            "chex>=0.1.87",
            "torch==2.13.0",
            "transformers>=4.50",
            "accelerate>=1.0",
            # Trains the tiny SentencePiece models tests/test_chat_template.py loads (and is transformers'
            # reader for them); the library parses tokenizer.model itself and needs neither it nor protobuf.
            "sentencepiece>=0.2",
            "mauve-text>=0.4",
            "faiss-cpu>=1.8",
            "scikit-learn>=1.4",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        "bench": ["torch==2.13.0", "transformers>=4.50", "accelerate>=1.0", "psutil>=5.9"],
        # Lint, format, type-check, hooks (CONTRIBUTING.md). ruff and pyright are pinned: a new release can
        # change the formatting or add findings, and CI must not change verdict by itself. Keep ruff's pin
        # equal to the ruff-pre-commit rev in .pre-commit-config.yaml. pyright[nodejs] brings Node as a wheel.
        "dev": ["ruff==0.17.6", "pyright[nodejs]==1.1.414", "pre-commit>=4.0", "nbstripout>=0.8", "pytest>=8"],
        # The documentation site: mkdocs build --strict (mkdocs.yml).
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=1.0"],
    },
)
