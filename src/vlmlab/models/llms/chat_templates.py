"""Named chat templates for tokenizers that ship none (base models, Vicuna, our tiny tokenizers).

A model's own template always wins; these are used only when the tokenizer has none. Each template
ends an assistant turn with the EOS token so that generation knows where to stop.
"""

from __future__ import annotations

CHAT_TEMPLATES: dict[str, str] = {
    # Vicuna v1.1 / v1.5, as LLaVA-1.5 formats its conversations ("conv_vicuna_v1").
    "vicuna_v1": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{% else %}A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %} USER: {{ message['content'] }}"
        "{% elif message['role'] == 'assistant' %} ASSISTANT: {{ message['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    ),
    # A short template for tiny models: no system prompt, so the sequence is mostly image and answer.
    "simple": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
        "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
        "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}{{ eos_token }}\n"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
}


def resolve_chat_template(template: str) -> str:
    """A template name from `CHAT_TEMPLATES`, or a Jinja template string given as is."""
    if template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[template]
    if "{%" in template or "{{" in template:
        return template
    raise ValueError(
        f"chat_template '{template}' is neither a known name ({', '.join(CHAT_TEMPLATES)}) nor a Jinja template"
    )
