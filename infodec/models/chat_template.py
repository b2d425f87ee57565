"""Renders a checkpoint's Jinja chat template the way HF transformers does, without transformers.

A chat template is untrusted code from a checkpoint, so it runs in Jinja's
``ImmutableSandboxedEnvironment`` (jinja2 >= 3.1.6, as transformers requires), configured as
transformers' ``chat_template_utils`` configures it:

* ``trim_blocks=True``, ``lstrip_blocks=True``, the ``loopcontrols`` extension (``break``/``continue``)
  and a ``{% generation %} ... {% endgeneration %}`` tag that renders its body unchanged (transformers
  uses it to mark assistant tokens);
* globals ``raise_exception(message)`` (raises ``jinja2.TemplateError``), ``strftime_now(format)`` (the
  local time, as Llama 3.x stamps its system prompt), ``dict`` and a ``namespace`` that refuses
  underscore-prefixed attributes;
* a ``tojson`` filter that does not HTML-escape (``json.dumps(x, ensure_ascii=False, ...)`` with
  ``indent``, ``separators`` and ``sort_keys``).

The variables are those transformers passes: ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, the special tokens (``bos_token``, ``eos_token``, ...) and any extra keyword
arguments, which override the special tokens. Messages lose their ``None``-valued keys, every value is
rebuilt from plain JSON types, and a message's reasoning under ``reasoning_content``, ``thinking`` or
``reasoning`` is copied to ``reasoning_content`` and ``thinking`` -- all as transformers does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names a message's reasoning is passed under; the first is the one templates read (transformers' order).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` without underscore-prefixed attributes (no reach into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: ``namespace(self=...)`` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
            )


class _Dict:
    """The ``dict`` global: builds dicts, exposes nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached per source string); a syntax error raises ``jinja2.TemplateSyntaxError``."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env.from_string(source)


def plain_data(value: Any) -> Any:
    """``value`` rebuilt from JSON types (str, int, float, bool, None, dict, list, tuple; dataclasses and
    pydantic models become dicts, numpy scalars Python scalars); anything else becomes the placeholder
    ``"<TypeName>"`` (transformers' ``_plain_template_data``), so the sandbox never sees rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain_data(getattr(value, field.name)) for field in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic models (e.g. OpenAI SDK messages)
        return plain_data(dump())
    return f"<{type(value).__name__}>"


def _normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Messages as the template sees them: no ``None`` values, plain data, reasoning fields aliased."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, got " + type(messages).__name__
        )
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation; pass at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        message = plain_data({key: value for key, value in message.items() if value is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str],
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **template_kwargs: Any,
) -> str:
    """The text of ``source`` rendered for one conversation (transformers' ``render_jinja_template``).

    Args:
      source: the Jinja template.
      messages: the conversation, ``[{"role": ..., "content": ...}, ...]`` (non-empty).
      add_generation_prompt: end with the header that opens the assistant's turn.
      special_tokens: ``{"bos_token": "<s>", ...}``, visible to the template.
      tools, documents: JSON-schema dicts / ``{"title", "text"}`` dicts for templates that take them.
      template_kwargs: further variables (e.g. ``enable_thinking``, ``date_string``); they override
        ``special_tokens``.

    Raises:
      ValueError: malformed messages, tools or documents.
      jinja2.TemplateError: the template's own ``raise_exception`` (e.g. roles that do not alternate) or
        an error in the template.
    """
    chat = _normalise_messages(messages)
    for name, items in (("tools", tools), ("documents", documents)):
        if items is not None and (isinstance(items, (str, Mapping)) or not all(isinstance(x, Mapping) for x in items)):
            raise ValueError(f"{name} must be a list of dicts (JSON schemas for tools), got {items!r:.200}")
    variables = plain_data({**special_tokens, **template_kwargs})
    return compile_template(source).render(
        messages=chat,
        tools=plain_data(None if tools is None else list(tools)),
        documents=plain_data(None if documents is None else list(documents)),
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
