"""Language models: any `AutoModelForCausalLM` with its tokenizer and chat template."""

from vlmlab.models.llms.language_model import LanguageModel

__all__ = ["LanguageModel"]
