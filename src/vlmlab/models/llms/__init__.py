"""Language models: any `AutoModelForCausalLM` with its tokenizer and chat template."""

from vlmlab.models.llms.language_model import LanguageModel
from vlmlab.models.llms.varlen_attention import NAME as VARLEN_ATTENTION  # registers `sdpa_varlen`

__all__ = ["VARLEN_ATTENTION", "LanguageModel"]
