"""vlmlab: an experiment platform for LLaVA-style vision-language models."""

__version__ = "0.1.0"
