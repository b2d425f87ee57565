# ruff: noqa: E501 -- the chat templates below are verbatim, long lines included
"""Tiny HF tokenizer folders with real chat templates, and tiny SentencePiece models trained on the spot.

:func:`save_tiny_tokenizer` writes what an instruct checkpoint ships beside its weights --
``tokenizer.json``, ``tokenizer_config.json`` (special tokens and the ``chat_template``) and
``generation_config.json`` (its stop ids) -- in one of three styles, each with its family's real template,
copied verbatim from the published checkpoints (Llama-3.2-1B-Instruct, Qwen2.5-0.5B-Instruct,
gemma-3-*-it). The vocabulary is byte-level BPE over the 256 bytes plus the family's special tokens, so
transformers' ``AutoTokenizer`` reads the same folder as the independent reference.

:func:`train_sentencepiece` trains a SentencePiece model (the ``sentencepiece`` trainer, offline) on
text that ships with the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

ROOT = Path(__file__).resolve().parents[1]

# meta-llama/Llama-3.2-1B-Instruct's tokenizer.chat_template (it stamps today's date through strftime_now
# unless date_string is passed).
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Qwen/Qwen2.5-0.5B-Instruct's tokenizer.chat_template (ChatML, a default system prompt, tools as JSON).
QWEN2_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# google/gemma-3-*-it's chat template (system prompt folded into the first user turn; roles must alternate).
GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Per style: special tokens (ids 256, 257, ... in this order), the named ones, whether a post-processor
# prepends BOS (Llama 3's TemplateProcessing), the template, and generation_config.json's eos_token_id.
STYLES: dict[str, dict] = {
    "llama3": dict(
        specials=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
        ],
        named=dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
        prepend_bos=True,
        template=LLAMA3_TEMPLATE,
        generation_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
    ),
    "qwen2": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        named=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        prepend_bos=False,
        template=QWEN2_TEMPLATE,
        generation_eos=["<|im_end|>", "<|endoftext|>"],
    ),
    "gemma3": dict(
        specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"],
        named=dict(
            bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", boi_token="<start_of_image>"
        ),
        prepend_bos=True,
        template=GEMMA3_TEMPLATE,
        generation_eos=["<eos>", "<end_of_turn>"],
    ),
}


def byte_level_backend(specials: list[str], prepend_bos: str | None = None) -> BackendTokenizer:
    """Byte-level BPE over the 256 bytes (ids 0..255, a few merges) with ``specials`` at ids 256, ..."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = BackendTokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if prepend_bos is not None:
        bos = backend.token_to_id(prepend_bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{prepend_bos} $A", pair=f"{prepend_bos} $A {prepend_bos} $B", special_tokens=[(prepend_bos, bos)]
        )
    return backend


def save_tiny_tokenizer(directory: Path, style: str) -> Path:
    """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json`` of ``style``
    (a key of ``STYLES``) into ``directory``; returns it."""
    spec = STYLES[style]
    directory.mkdir(parents=True, exist_ok=True)
    named = spec["named"]
    backend = byte_level_backend(spec["specials"], named.get("bos_token") if spec["prepend_bos"] else None)
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": spec["template"], **named}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    eos = [backend.token_to_id(t) for t in spec["generation_eos"]]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return directory


def train_sentencepiece(directory: Path, **options) -> Path:
    """Trains a 400-piece SentencePiece model on the repository's README (about 20 KB of text) into
    ``directory/tokenizer.model``; ``options`` go to ``SentencePieceTrainer.train`` (``model_type``,
    ``byte_fallback``, ...). One thread, so the model is the same on every run."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = dict(
        vocab_size=400,
        num_threads=1,
        user_defined_symbols=["<|user|>"],
        control_symbols=["<ctrl>"],
        minloglevel=2,
    )
    settings.update(options)
    sentencepiece.SentencePieceTrainer.train(
        input=str(ROOT / "README.md"), model_prefix=str(directory / "m"), **settings
    )
    (directory / "m.model").replace(directory / "tokenizer.model")
    (directory / "m.vocab").unlink()
    return directory / "tokenizer.model"


# ------------------------------------------------------------------------------------------------
# Tiny tokenizers of each model family, saved by transformers itself
#
# Each family's tokenizer is wrapped in the transformers class its checkpoints name
# (``tokenizer_class``), with the ``tokenizer_config.json`` fields those checkpoints set, and written
# with ``save_pretrained`` -- so the folder holds what transformers writes for that family
# (``tokenizer.json`` with its post-processor, ``tokenizer_config.json``), plus the
# ``generation_config.json`` (and ``config.json`` ids) the real checkpoints ship. Only the vocabulary is
# tiny: the special tokens are the family's own, in the family's order, at small ids.

# A few SentencePiece-style pieces: the letters and some merges (every other character falls back to
# its UTF-8 bytes, as in Llama 2 / Mistral / Phi-3 / Gemma).
_SPM_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("e", "r")]


def _spm_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``specials`` at ids 0, 1, ..., then the 256 byte pieces ``<0x00>``..., ``▁``, letters, merges."""
    pieces = [*specials, *(f"<0x{b:02X}>" for b in range(256)), "▁"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += [left + right for left, right in _SPM_MERGES]
    return {piece: i for i, piece in enumerate(pieces)}, list(_SPM_MERGES)


def _byte_level_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``specials`` at ids 0, 1, ..., then the 256 byte-level characters and a few merges."""
    pieces = [*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")]
    pieces += [left + right for left, right in merges]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def _llama3_backend(specials: list[str]) -> BackendTokenizer:
    """Llama 3's tokenizer.json pipeline: the Llama 3 split regex, byte-level BPE, and a post-processor
    ``Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")]``."""
    vocab, merges = _byte_level_vocab(specials)
    backend = BackendTokenizer(models.BPE(vocab, merges, ignore_merges=True))
    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, vocab[bos])],
            ),
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return backend


_LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
]
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
_PHI3_ADDED = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]

# Per family: how to build the transformers tokenizer, the checkpoint's generation_config.json
# eos_token_id (as token strings), and what the real checkpoints do, for the tests to check:
# ``adds_bos`` (is BOS the first id of a plain encode) and ``eos`` (the tokenizer's eos_token).
FAMILY_TOKENIZERS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B: PreTrainedTokenizerFast, BOS by the tokenizer.json post-processor.
    "llama3": dict(
        kind="llama3",
        specials=_LLAMA3_SPECIALS,
        kwargs=dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
        generation_eos=["<|end_of_text|>"],
        adds_bos=True,
    ),
    # meta-llama/Llama-3.1-8B-Instruct: eos_token <|eot_id|>; generate stops on 128001, 128008, 128009.
    "llama3_instruct": dict(
        kind="llama3",
        specials=_LLAMA3_SPECIALS,
        kwargs=dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
        generation_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        adds_bos=True,
    ),
    # meta-llama/Llama-2-7b-hf (and Mistral-7B, Mixtral-8x7B): LlamaTokenizer, add_bos_token, legacy=False.
    "llama2": dict(
        kind="spm",
        cls="LlamaTokenizer",
        specials=["<unk>", "<s>", "</s>"],
        kwargs=dict(
            unk_token="<unk>", bos_token="<s>", eos_token="</s>", add_bos_token=True, add_eos_token=False, legacy=False
        ),
        generation_eos=["</s>"],
        adds_bos=True,
    ),
    # microsoft/Phi-3-mini-4k-instruct: LlamaTokenizer, eos <|endoftext|>; generate stops on
    # <|endoftext|>, <|assistant|> and <|end|> (32000, 32001, 32007).
    "phi3": dict(
        kind="spm",
        cls="LlamaTokenizer",
        specials=["<unk>", "<s>", "</s>"],
        added=_PHI3_ADDED,
        kwargs=dict(
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            add_bos_token=False,
            add_eos_token=False,
            legacy=False,
        ),
        generation_eos=["<|endoftext|>", "<|assistant|>", "<|end|>"],
        adds_bos=False,
    ),
    # Qwen/Qwen2.5-0.5B, Qwen/Qwen3-0.6B-Base: Qwen2Tokenizer, no BOS; eos <|endoftext|>.
    "qwen_base": dict(
        kind="byte_level",
        cls="Qwen2Tokenizer",
        specials=_QWEN_SPECIALS,
        kwargs=dict(bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None),
        generation_eos=["<|endoftext|>"],
        adds_bos=False,
    ),
    # Qwen/Qwen2.5-0.5B-Instruct, Qwen/Qwen3-0.6B: eos <|im_end|>; generate stops on 151645, 151643.
    "qwen_instruct": dict(
        kind="byte_level",
        cls="Qwen2Tokenizer",
        specials=_QWEN_SPECIALS,
        kwargs=dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None),
        generation_eos=["<|im_end|>", "<|endoftext|>"],
        adds_bos=False,
    ),
    # google/gemma-2-2b, google/gemma-3-1b-pt: GemmaTokenizer, <bos> added, eos <eos>.
    "gemma": dict(
        kind="spm",
        cls="GemmaTokenizer",
        specials=_GEMMA_SPECIALS,
        kwargs=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True),
        generation_eos=["<eos>"],
        adds_bos=True,
    ),
    # google/gemma-2-2b-it, google/gemma-3-1b-it: generate also stops on <end_of_turn> (107 / 106).
    "gemma_instruct": dict(
        kind="spm",
        cls="GemmaTokenizer",
        specials=_GEMMA_SPECIALS,
        kwargs=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True),
        generation_eos=["<eos>", "<end_of_turn>"],
        adds_bos=True,
    ),
    # allenai/OLMo-2-1124-7B: GPT2Tokenizer (cl100k vocabulary), no BOS added; eos <|endoftext|>,
    # pad <|pad|>.
    "olmo2": dict(
        kind="byte_level",
        cls="GPT2Tokenizer",
        specials=["<|endoftext|>", "<|pad|>"],
        kwargs=dict(
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|pad|>",
            add_bos_token=False,
            add_eos_token=False,
        ),
        generation_eos=["<|endoftext|>"],
        adds_bos=False,
    ),
    # EleutherAI/pythia-*: GPTNeoXTokenizer, nothing added; <|endoftext|> id 0, <|padding|> id 1. The
    # checkpoints ship no generation_config.json (config.json: bos/eos 0).
    "gpt_neox": dict(
        kind="byte_level",
        cls="GPTNeoXTokenizer",
        specials=["<|endoftext|>", "<|padding|>"],
        kwargs=dict(
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|padding|>",
            add_bos_token=False,
            add_eos_token=False,
        ),
        generation_eos=None,
        model_config=dict(model_type="gpt_neox", bos_token_id=0, eos_token_id=0),
        adds_bos=False,
    ),
    # facebook/opt-125m: GPT2Tokenizer with add_bos_token, so every text starts with </s> (id 2).
    "opt": dict(
        kind="byte_level",
        cls="GPT2Tokenizer",
        specials=["<s>", "<pad>", "</s>", "<unk>"],
        kwargs=dict(bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>", add_bos_token=True),
        generation_eos=["</s>"],
        adds_bos=True,
    ),
    # openai-community/gpt2: nothing added; <|endoftext|> is bos, eos and unk (the last id).
    "gpt2": dict(
        kind="byte_level",
        cls="GPT2Tokenizer",
        specials=[],
        added=["<|endoftext|>"],
        kwargs=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
        generation_eos=["<|endoftext|>"],
        adds_bos=False,
    ),
    # microsoft/phi-4 (model_type phi3): GPT2Tokenizer over a cl100k vocabulary, no BOS added; eos <|im_end|>.
    "phi4": dict(
        kind="byte_level",
        cls="GPT2Tokenizer",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|dummy_85|>"],
        kwargs=dict(
            bos_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|dummy_85|>"
        ),
        generation_eos=["<|im_end|>"],
        adds_bos=False,
    ),
}


def save_family_tokenizer(directory: Path, family: str) -> Path:
    """Writes the tiny tokenizer of ``family`` (a key of ``FAMILY_TOKENIZERS``) into ``directory`` with
    transformers' ``save_pretrained``, plus ``generation_config.json`` / ``config.json`` as the family's
    checkpoints ship them; returns ``directory``."""
    import transformers

    spec = FAMILY_TOKENIZERS[family]
    if spec["kind"] == "llama3":
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=_llama3_backend(spec["specials"]), **spec["kwargs"]
        )
    else:
        cls = getattr(transformers, spec["cls"])
        build = _spm_vocab if spec["kind"] == "spm" else _byte_level_vocab
        vocab, merges = build(spec["specials"])
        tokenizer = cls(vocab=vocab, merges=merges, **spec["kwargs"])
        tokenizer.add_special_tokens({"additional_special_tokens": spec.get("added", [])})
        for token in spec["specials"]:
            tokenizer.add_tokens([token], special_tokens=True)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    if spec["generation_eos"] is not None:
        ids = [tokenizer.convert_tokens_to_ids(token) for token in spec["generation_eos"]]
        eos = ids[0] if len(ids) == 1 else ids
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    if "model_config" in spec:
        (directory / "config.json").write_text(json.dumps(spec["model_config"]))
    return directory


def save_opt_hub_tokenizer(directory: Path) -> Path:
    """OPT's tokenizer as facebook/opt-* ship it: no tokenizer.json, GPT-2's ``vocab.json`` + ``merges.txt``
    (``<s>``, ``<pad>``, ``</s>``, ``<unk>`` at ids 0-3), a ``tokenizer_config.json`` with ``add_bos_token``
    and no ``tokenizer_class`` (``config.json``'s ``model_type`` picks GPT2Tokenizer), and
    ``special_tokens_map.json``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>"])
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    named = dict(bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>")
    config = dict(errors="replace", add_prefix_space=False, add_bos_token=True, **named)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps(named))
    ids = dict(bos_token_id=2, eos_token_id=2, pad_token_id=1)
    (directory / "config.json").write_text(json.dumps(dict(model_type="opt", **ids)))
    (directory / "generation_config.json").write_text(json.dumps(ids))
    return directory
