"""archsearch: search and ablate hybrid vision-encoder architectures (FastViT / FastViTHD family)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="archsearch",
    version="0.1.0",
    description="Search and ablate hybrid RepMixer/attention vision encoders (FastViT, FastViTHD).",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8")
    if Path(__file__).with_name("README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["archsearch", "archsearch.*"]),
    install_requires=[
        # Loose on purpose: pip here is capped at the torch/torchvision that lie on local disk.
        "torch>=2.2",
        "timm>=1.0.9",
        "fvcore>=0.1.5",
        "ptflops>=0.7.4",
        "optuna>=4.0",
        "lightning>=2.2",
        "omegaconf>=2.3",
        "mlflow>=2.10",
        "rich>=13",
        "pyyaml>=6",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "transformers>=4.40",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "psycopg[binary]>=3.1",  # SQLAlchemy 2.1 maps postgresql:// to psycopg 3
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2.2", "pytest-xdist>=3", "ruff>=0.5", "mypy>=1.10", "types-PyYAML"],
        # What `archsearch device-serve` uses on a target device (it never imports torch; see README).
        "device": ["onnx>=1.15", "onnxruntime>=1.17", "numpy>=1.24", "pyyaml>=6", "omegaconf>=2.3"],
    },
    entry_points={"console_scripts": ["archsearch=archsearch.cli:entry"]},
)
