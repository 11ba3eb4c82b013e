"""Language models: any `AutoModelForCausalLM` with its tokenizer and chat template (Qwen2-VL's language model
included: `qwen2_vl_text`)."""

from vlmlab.models.llms.language_model import LanguageModel
from vlmlab.models.llms.qwen2_vl_text import Qwen2VLTextForCausalLM  # registered with AutoModelForCausalLM
from vlmlab.models.llms.varlen_attention import NAME as VARLEN_ATTENTION  # registers `sdpa_varlen`

__all__ = ["VARLEN_ATTENTION", "LanguageModel", "Qwen2VLTextForCausalLM"]
