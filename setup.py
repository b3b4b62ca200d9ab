"""Installable package of the RADIO TorchHub reimplementation: ``pip install -e .``."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="radio-hub",
    version="0.1.0",
    description="Clean, safe, fast TorchHub implementation of NVIDIA's RADIO vision foundation models",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["radio", "radio.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",
        "timm>=1.0.16",
        "huggingface_hub>=0.23",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "text": ["open_clip_torch>=2.24", "transformers>=4.51", "sentencepiece"],
        "plots": ["matplotlib"],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        "test": [
            "pytest>=7",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "onnxscript>=0.2",
            "open_clip_torch>=2.24",
            "transformers>=4.51",
            "sentencepiece",
            "matplotlib",
        ],
    },
    entry_points={"console_scripts": ["radio = radio.tools.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
