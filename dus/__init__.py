"""dus: depth up-scaling for Hugging Face decoder models."""

__version__ = "0.1.0"
