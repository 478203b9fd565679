"""Chat templates: a conversation rendered with the model's own Jinja template (llama-cpp-python's sandboxed
formatter), or a generic ChatML one for a model that carries none."""

from __future__ import annotations

from infer.errors import UsageError

# Used when a model carries no chat template (documented in the README).
GENERIC_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render(template: str | None, messages: list[dict], *, bos_token: str, eos_token: str) -> str:
    """The prompt text for `messages` through `template` (the generic one when None), ending with the assistant's
    turn. A template that refuses the conversation (raise_exception on a role it lacks) is a usage error."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template or GENERIC_CHAT_TEMPLATE, eos_token=eos_token, bos_token=bos_token)
    try:
        return formatter(messages=messages).prompt
    except Exception as e:  # a template may raise_exception() on roles it does not support
        raise UsageError(f"the model's chat template rejected the conversation: {e}",
                         hint="try --raw, or leave out --system if the model has no system role") from e
