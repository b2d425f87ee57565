"""Text <-> token ids, on top of the HF ``tokenizers`` library (Rust; no torch, no transformers).

A :class:`Tokenizer` comes from one of two places:

* :meth:`Tokenizer.from_file`: a ``tokenizer.json`` -- or, for a family that ships only that, a
  SentencePiece ``tokenizer.model`` -- with the BOS/EOS/PAD conventions and the chat template read from
  the HF files beside it (or from our own ``infodec_tokenizer.json``, written by :meth:`Tokenizer.save`).
* :meth:`Tokenizer.from_gguf`: the vocabulary a GGUF checkpoint carries as metadata, rebuilt the way
  llama.cpp and transformers' GGUF loader read it. Two kinds are supported: byte-level BPE
  (``tokenizer.ggml.model == "gpt2"``, e.g. SmolLM2) and SentencePiece BPE (``"llama"``, e.g. Gemma 3).
  Building the latter derives half a million merges, so callers cache the result with ``save()``.

Encoding never pads or truncates: the backend's padding and truncation are switched off.

Instruct models: :meth:`Tokenizer.apply_chat_template` renders the checkpoint's own Jinja chat template
as transformers does (``infodec.models.chat_template``), and the ``eos_token_id`` ids of
``generation_config.json`` join the stop ids (``eos_ids``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import gguf
import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from infodec.models import chat_template as chat
from infodec.models import spm_model

INFODEC_CONFIG = "infodec_tokenizer.json"
# transformers 5 saves the default template here and named ones as additional_chat_templates/<name>.jinja.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# GPT-2's byte-level BPE files, read when a checkpoint ships no tokenizer.json (e.g. OPT).
BYTE_LEVEL_VOCAB = "vocab.json"
BYTE_LEVEL_MERGES = "merges.txt"
# The named special tokens transformers hands a chat template (``special_tokens_map``).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

ChatTemplate = str | dict[str, str]

# llama.cpp's token types (gguf.TokenType): CONTROL tokens are special (dropped when decoding with
# skip_special_tokens), USER_DEFINED ones are matched whole in the text but decode as plain text.
_NORMAL = 1
_CONTROL = 3
_USER_DEFINED = 4

# Control tokens that end a turn or a document even when the vocabulary names another token EOS.
# llama.cpp stops generation on these too (its "end of generation" set).
_END_OF_GENERATION = frozenset(
    {
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<EOT>",
    }
)

# The Llama-3 pre-tokenizer split (transformers' integrations/gguf/gguf_tokenizer_mapping.py).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """How a byte-level vocabulary splits text before BPE, from ``tokenizer.ggml.pre``."""
    if pre in ("gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ValueError(
        f"unsupported tokenizer.ggml.pre {pre!r} for a byte-level (gpt2) GGUF vocabulary; "
        "supported: 'default', 'gpt2', 'smollm', 'llama-bpe', 'llama3'"
    )


def _sentencepiece_merges(tokens: Sequence[str], ranks: Sequence[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies (it stores scores, not merges).

    Every way of cutting a token into two vocabulary pieces is a merge producing it. Merges are
    ordered by the rank of the token they produce (lower first), then longer left piece first, then
    file order -- the order transformers' ``generate_merges`` gives, so encodings agree with it.
    """
    vocab = set(tokens)
    candidates = []
    for index, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                # (rank, -cut, index) is unique per merge, so the strings are never compared.
                candidates.append((ranks[index], -cut, index, left, right))
    candidates.sort()
    return [(left, right) for *_, left, right in candidates]


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token conventions decoding needs.

    Attributes:
      backend: the wrapped ``tokenizers.Tokenizer`` (padding and truncation off).
      bos_id: the beginning-of-sequence id, or None if the vocabulary has none (e.g. BERT).
      eos_ids: every id that ends generation: the EOS id first, then the ``eos_token_id`` ids of
        ``generation_config.json`` (what transformers' ``generate`` stops on, e.g. Llama 3.x Instruct's
        ``<|eom_id|>`` and ``<|eot_id|>``). A checkpoint without one (and a GGUF) also stops on its
        other end-of-generation control tokens, as llama.cpp does (e.g. Gemma's ``<end_of_turn>``,
        SmolLM2's ``<|endoftext|>``).
        Empty when the vocabulary defines no EOS (e.g. BERT).
      pad_id: the padding id, or None.
      add_bos: the default of ``encode(..., add_bos=)``. It stands for "add the special tokens this
        tokenizer adds to a single text": the BOS for decoder LMs, and for a backend whose
        post-processor inserts tokens itself (BERT's ``[CLS] ... [SEP]``), that post-processor.
      chat_template: the checkpoint's Jinja chat template: a string, a dict of named templates
        (``"default"``, ``"tool_use"``, ...), or None when it ships none.
      special_tokens: the special-token strings a chat template sees (``{"bos_token": "<s>",
        "eos_token": ...}``, as transformers' ``special_tokens_map``). Defaults to the strings of
        ``bos_id``, ``eos_ids[0]`` and ``pad_id``.
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_id: int | None,
        eos_ids: Iterable[int],
        pad_id: int | None,
        add_bos: bool,
        chat_template: ChatTemplate | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(dict.fromkeys(eos_ids))
        self.pad_id = pad_id
        self.add_bos = add_bos
        if chat_template is not None and not isinstance(chat_template, (str, dict)):
            raise ValueError(f"chat_template must be a str or a dict of named templates, got {chat_template!r:.80}")
        self.chat_template = chat_template or None
        if special_tokens is None:
            named = {"bos_token": bos_id, "eos_token": self.eos_ids[0] if self.eos_ids else None, "pad_token": pad_id}
            special_tokens = {
                name: token
                for name, i in named.items()
                if i is not None and (token := backend.id_to_token(i)) is not None
            }
        self.special_tokens = dict(special_tokens)
        # A post-processor that already puts BOS first (TemplateProcessing, BertProcessing, ...) is
        # left to do it; otherwise encode() prepends it.
        self._prepend_bos = bos_id is not None and backend.encode("").ids[:1] != [bos_id]

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """Control tokens: the added tokens marked special, plus BOS, EOS and PAD."""
        special = {i for i, token in self.backend.get_added_tokens_decoder().items() if token.special}
        special.update(i for i in (self.bos_id, self.pad_id, *self.eos_ids) if i is not None)
        return frozenset(special)

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_file(cls, directory_or_tokenizer_json: str | Path) -> Tokenizer:
        """Loads a ``tokenizer.json`` (a file, or the directory holding it), or a SentencePiece
        ``tokenizer.model`` (the file, or a directory holding it and no ``tokenizer.json``), or GPT-2's
        ``vocab.json`` + ``merges.txt`` (a directory holding them and neither of the others, as OPT
        checkpoints ship; see ``_byte_level_files_backend``).

        BOS/EOS/PAD, ``add_bos``, the chat template and the special-token strings come from
        ``infodec_tokenizer.json`` beside it when present (an exact copy of what ``save()`` wrote);
        otherwise from the HF files beside it: ``tokenizer_config.json`` / ``special_tokens_map.json``
        (``bos_token``, ``eos_token``, ``pad_token``, ... as strings or ``{"content": ...}``;
        ``add_bos_token``), then ``config.json`` / ``generation_config.json`` (``bos_token_id``,
        ``eos_token_id`` int or list, ``pad_token_id``). Without ``add_bos_token``, ``add_bos`` is
        whether the backend's post-processor adds tokens, as ``add_special_tokens=True`` does in
        transformers. A SentencePiece model without those files takes BOS/EOS/UNK from its trainer spec.

        The chat template is ``chat_template.jinja`` (plus ``additional_chat_templates/*.jinja``, named by
        file) when present, else ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of
        ``{"name", "template"}``), as transformers reads them. ``generation_config.json``'s
        ``eos_token_id`` ids are always stop ids, even beside an ``infodec_tokenizer.json``.

        ``eos_ids`` from the HF files: the tokenizer's EOS, then, when ``generation_config.json`` gives an
        ``eos_token_id``, those ids and nothing else (what transformers' ``generate`` stops on; it ignores
        ``config.json``'s then); otherwise ``config.json``'s ids and the vocabulary's other
        end-of-generation control tokens (``<|im_end|>``, ``<end_of_turn>``, ...).
        """
        path = Path(directory_or_tokenizer_json)
        file = path
        if path.is_dir():
            file = path / "tokenizer.json"
            if not file.is_file() and (path / "tokenizer.model").is_file():
                file = path / "tokenizer.model"
            elif not file.is_file() and _has_byte_level_files(path):
                file = path / BYTE_LEVEL_VOCAB
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json (nor a SentencePiece tokenizer.model) at {path}, nor GPT-2's "
                f"{BYTE_LEVEL_VOCAB} + {BYTE_LEVEL_MERGES}"
            )
        folder = file.parent
        sentencepiece = None
        if file.suffix == ".model":
            sentencepiece = spm_model.read_model(file)
            backend = _sentencepiece_backend(sentencepiece)
        elif file.name == BYTE_LEVEL_VOCAB and not file.with_name("tokenizer.json").is_file():
            backend = _byte_level_files_backend(folder)
        else:
            backend = BackendTokenizer.from_file(str(file))
        generation_stops = _generation_config_eos_ids(folder)
        ours = _read_json(folder / INFODEC_CONFIG)
        if ours is not None:
            return cls(
                backend,
                bos_id=ours["bos_id"],
                eos_ids=[*ours["eos_ids"], *generation_stops],
                pad_id=ours["pad_id"],
                add_bos=ours["add_bos"],
                # Saved before templates were kept: read them from the HF files, if any.
                chat_template=ours["chat_template"] if "chat_template" in ours else _hf_chat_template(folder),
                special_tokens=ours.get("special_tokens") or _special_token_strings(folder) or None,
            )

        token_configs = [
            _read_json(folder / name) or {} for name in ("tokenizer_config.json", "special_tokens_map.json")
        ]
        model_configs = [_read_json(folder / name) or {} for name in ("config.json", "generation_config.json")]
        strings = _special_token_strings(folder)
        if sentencepiece is not None:  # transformers falls back on the trainer spec's pieces
            for name in ("bos", "eos", "unk"):
                piece = sentencepiece.piece(getattr(sentencepiece, f"{name}_id"))
                if piece is not None:
                    strings.setdefault(f"{name}_token", piece)

        def ids_of(name: str, configs: Sequence[dict] = model_configs) -> list[int]:
            """Ids the configs give for ``name`` ("bos", ...): token strings first, then the ids of
            ``configs``."""
            found = []
            tokens = [_content(config.get(f"{name}_token")) for config in token_configs] + [
                strings.get(f"{name}_token")
            ]
            for token in tokens:
                if isinstance(token, str) and (token_id := backend.token_to_id(token)) is not None:
                    found.append(token_id)
            for config in configs:
                value = config.get(f"{name}_token_id")
                values = value if isinstance(value, list) else [value]
                found.extend(v for v in values if isinstance(v, int))
            return found

        processor = backend.post_processor
        adds_tokens = processor is not None and processor.num_special_tokens_to_add(False) > 0
        add_bos = token_configs[0].get("add_bos_token", adds_tokens)
        if generation_stops:
            # What transformers' generate stops on: generation_config.json's eos_token_id (it
            # overrides config.json's), after the tokenizer's own EOS. Nothing else: a base model's
            # vocabulary also holds e.g. <|im_end|> or <end_of_turn>, which its generate ignores.
            eos_ids = ids_of("eos", configs=[])
            eos_ids += generation_stops
        else:
            eos_ids = ids_of("eos")
            if eos_ids:  # no generation_config: also stop on the other end-of-generation tokens
                eos_ids += _end_of_generation_ids(backend)
        return cls(
            backend,
            bos_id=next(iter(ids_of("bos")), None),
            eos_ids=eos_ids,
            pad_id=next(iter(ids_of("pad")), None),
            add_bos=bool(add_bos),
            chat_template=_hf_chat_template(folder),
            special_tokens=strings,
        )

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """Builds the tokenizer a GGUF file describes in its ``tokenizer.ggml.*`` metadata.

        ``model == "gpt2"``: byte-level BPE from ``tokens`` and ``merges``, split per ``pre``.
        ``model == "llama"``: SentencePiece BPE with byte fallback; the merges are derived from the
        vocabulary ranked by ``scores`` -- except for Gemma, whose merge order is the file order:
        its scores follow that order for ordinary tokens, but user-defined ones such as runs of
        spaces carry a placeholder -1000 that would rank their merges a thousand places too late.
        Gemma also gets no dummy-prefix space whatever ``add_space_prefix`` says, as in
        transformers' ``GemmaTokenizer``; other SentencePiece vocabularies get one unless the file
        says ``add_space_prefix = false``.

        CONTROL tokens become special added tokens and USER_DEFINED ones plain added tokens, so
        neither is cut up by BPE. ``eos_ids`` is ``eos_token_id`` plus the control tokens llama.cpp
        also stops on (``<end_of_turn>``, ``<|endoftext|>``, ...). ``add_bos`` follows
        ``add_bos_token``, defaulting to llama.cpp's choice (False for gpt2, True for llama).
        """

        def field(key: str, default: Any = None) -> Any:
            found = reader.fields.get(f"tokenizer.ggml.{key}")
            return default if found is None else found.contents()

        kind = field("model")
        tokens: list[str] = field("tokens")
        types: list[int] = field("token_type") or [_NORMAL] * len(tokens)
        if kind == "gpt2":
            backend = BackendTokenizer(
                models.BPE(
                    {token: i for i, token in enumerate(tokens)},
                    [tuple(merge.split(" ", 1)) for merge in field("merges")],
                )
            )
            backend.pre_tokenizer = _byte_level_pre_tokenizer(field("pre", "default"))
            backend.decoder = decoders.ByteLevel()
            add_bos = field("add_bos_token", False)
        elif kind == "llama":
            architecture = reader.fields["general.architecture"].contents()
            gemma = architecture.startswith("gemma")
            # llama.cpp stores Gemma's runs of spaces with real spaces; SentencePiece spells them "▁".
            spelled = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]
            ranks = range(len(tokens)) if gemma else [-score for score in field("scores")]
            unk_id = field("unknown_token_id")
            backend = BackendTokenizer(
                models.BPE(
                    {token: i for i, token in enumerate(spelled)},
                    _sentencepiece_merges(spelled, ranks),
                    unk_token=None if unk_id is None else spelled[unk_id],
                    fuse_unk=True,
                    byte_fallback=True,
                )
            )
            spaces = normalizers.Replace(" ", "▁")
            decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            if field("add_space_prefix", True) and not gemma:
                # The dummy prefix goes on every stretch of text between added tokens, as in
                # llama.cpp; decoding strips it from the start of the text.
                backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), spaces])
                decode_steps.append(decoders.Strip(" ", 1, 0))
            else:
                backend.normalizer = spaces
            backend.decoder = decoders.Sequence(decode_steps)
            # Respelled runs of spaces are not added tokens (as in transformers): they are built by
            # their merges, which the file order ranks first anyway.
            types = [t if token == s else _NORMAL for token, s, t in zip(tokens, spelled, types)]
            add_bos = field("add_bos_token", True)
        else:
            raise ValueError(
                f"unsupported GGUF tokenizer.ggml.model {kind!r}; supported: "
                "'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE)"
            )

        backend.add_special_tokens(
            [AddedToken(token, special=True, normalized=False) for token, t in zip(tokens, types) if t == _CONTROL]
        )
        backend.add_tokens(
            [
                AddedToken(token, special=False, normalized=False)
                for token, t in zip(tokens, types)
                if t == _USER_DEFINED
            ]
        )
        eos_id = field("eos_token_id")
        named = {
            "bos_token": field("bos_token_id"),
            "eos_token": eos_id,
            "unk_token": field("unknown_token_id"),
            "pad_token": field("padding_token_id"),
        }
        # llama.cpp keeps the default template under tokenizer.chat_template, named ones under
        # tokenizer.chat_template.<name>.
        named_templates = {
            key.removeprefix("tokenizer.chat_template."): reader.fields[key].contents()
            for key in reader.fields
            if key.startswith("tokenizer.chat_template.")
        }
        template = reader.fields.get("tokenizer.chat_template")
        default = None if template is None else template.contents()
        if named_templates:
            chat_template: ChatTemplate | None = {**({"default": default} if default else {}), **named_templates}
        else:
            chat_template = default
        return cls(
            backend,
            bos_id=field("bos_token_id"),
            eos_ids=([] if eos_id is None else [eos_id]) + _end_of_generation_ids(backend),
            pad_id=field("padding_token_id"),
            add_bos=bool(add_bos),
            chat_template=chat_template,
            special_tokens={name: tokens[i] for name, i in named.items() if i is not None and 0 <= i < len(tokens)},
        )

    def save(self, directory: str | Path) -> None:
        """Writes ``tokenizer.json`` and ``infodec_tokenizer.json`` (ids, ``add_bos``, the chat template and
        the special-token strings); ``from_file`` reads both back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "bos_id": self.bos_id,
            "eos_ids": list(self.eos_ids),
            "pad_id": self.pad_id,
            "add_bos": self.add_bos,
            "special_tokens": self.special_tokens,
            "chat_template": self.chat_template,
        }
        (directory / INFODEC_CONFIG).write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    # ------------------------------------------------------------------------------ chat templates

    def get_chat_template(self, chat_template: str | None = None, *, tools: Any = None) -> str:
        """The template source ``apply_chat_template`` uses (transformers' ``get_chat_template``).

        ``chat_template``: None for the checkpoint's own (its ``"default"``, or ``"tool_use"`` when
        ``tools`` are given and it has one), the name of one of its named templates, or a Jinja
        source string. Raises ``ValueError`` when the tokenizer has no template and none is given.
        """
        own = self.chat_template
        if isinstance(own, dict):
            if chat_template is not None:
                return own.get(chat_template, chat_template)
            if tools is not None and "tool_use" in own:
                return own["tool_use"]
            if "default" in own:
                return own["default"]
            raise ValueError(
                f"this tokenizer has several chat templates and no 'default': {sorted(own)}; "
                "pass chat_template=<one of these names>"
            )
        if chat_template is not None:
            return chat_template
        if own is None:
            raise ValueError(
                "this tokenizer has no chat template: none in tokenizer_config.json, chat_template.jinja or the "
                "GGUF's tokenizer.chat_template (base models usually ship none). Pass chat_template=<Jinja source>, "
                "or encode() the prompt as plain text"
            )
        return own

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: Literal[False] = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: Literal[True],
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> list[int]: ...

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str | list[int]:
        """The conversation rendered with the checkpoint's chat template, exactly as transformers'
        ``tokenizer.apply_chat_template`` renders it (``infodec.models.chat_template``).

        Args:
          messages: ``[{"role": "system" | "user" | "assistant" | ..., "content": str}, ...]``, one
            conversation (non-empty).
          add_generation_prompt: end with the header that opens the assistant's turn (default True, the
            prompt-for-generation case; transformers' default is False).
          tokenize: return token ids instead of text. The text is encoded with ``add_bos=False``, as
            transformers does (``add_special_tokens=False``): a template that wants a BOS writes
            ``{{ bos_token }}`` itself, so it is never doubled.
          chat_template: see :meth:`get_chat_template` (None = the checkpoint's own).
          template_kwargs: further template variables: ``tools`` / ``documents`` (lists of dicts), or
            template-specific ones (``enable_thinking``, ``date_string``, ...). They override the
            special tokens (``bos_token``, ``eos_token``, ...), which the template always sees.

        Returns:
          The rendered text (``str``), or its ids (``list[int]``) when ``tokenize``.

        Raises:
          ValueError: no template (see :meth:`get_chat_template`), or malformed messages.
          jinja2.TemplateError: raised by the template itself (e.g. "Conversation roles must alternate").
        """
        tools = template_kwargs.pop("tools", None)
        documents = template_kwargs.pop("documents", None)
        source = self.get_chat_template(chat_template, tools=tools)
        text = chat.render(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
            tools=tools,
            documents=documents,
            **template_kwargs,
        )
        return self.encode(text, add_bos=False) if tokenize else text

    # ---------------------------------------------------------------------------------- encoding

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; ``add_bos`` (default ``self.add_bos``) adds BOS / special tokens."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.encode_batch([text], add_bos=add_bos)[0]

    def encode_batch(self, texts: Iterable[str], *, add_bos: bool | None = None) -> list[list[int]]:
        """``encode`` of each text (unpadded, so the lists may differ in length)."""
        if isinstance(texts, str):
            raise ValueError("encode_batch expects a list of str, got one str")
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("encode_batch expects a list of str")
        add = self.add_bos if add_bos is None else add_bos
        encodings = self.backend.encode_batch(texts, add_special_tokens=add)
        prefix = [self.bos_id] if add and self._prepend_bos and self.bos_id is not None else []
        return [prefix + encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Text of a 1-D sequence of ids (list, numpy or jax array); drops control tokens by default."""
        return self.backend.decode(self._id_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(
        self, batch: Iterable[Sequence[int]] | np.ndarray, *, skip_special_tokens: bool = True
    ) -> list[str]:
        """``decode`` of each row of ``batch`` (a list of id sequences or a 2-D array)."""
        return self.backend.decode_batch([self._id_list(row) for row in batch], skip_special_tokens=skip_special_tokens)

    def _id_list(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        array = np.asarray(ids)
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"expected a 1-D sequence of int ids, got shape {array.shape} of {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {array.min()}..{array.max()}")
        return array.tolist()


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer ``Tokenizer.from_file`` reads: a ``tokenizer.json``, a
    SentencePiece ``tokenizer.model``, or GPT-2's ``vocab.json`` + ``merges.txt`` (e.g. OPT)."""
    directory = Path(directory)
    return (
        (directory / "tokenizer.json").is_file()
        or (directory / "tokenizer.model").is_file()
        or _has_byte_level_files(directory)
    )


def _has_byte_level_files(directory: Path) -> bool:
    return (directory / BYTE_LEVEL_VOCAB).is_file() and (directory / BYTE_LEVEL_MERGES).is_file()


def _byte_level_files_backend(folder: Path) -> BackendTokenizer:
    """GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt``, for checkpoints that ship no
    ``tokenizer.json`` (OPT), built as transformers' ``GPT2Tokenizer`` builds it: ``add_prefix_space``
    from ``tokenizer_config.json`` (default False), no post-processor (``add_bos_token`` is applied by
    ``encode``), and as special added tokens the ``added_tokens_decoder`` entries plus the named special
    tokens (``bos_token``, ``eos_token``, ... of ``tokenizer_config.json`` / ``special_tokens_map.json``)
    -- only those: e.g. OPT's ``<s>`` and ``<unk>`` stay ordinary vocabulary entries."""
    vocab, merges = models.BPE.read_file(str(folder / BYTE_LEVEL_VOCAB), str(folder / BYTE_LEVEL_MERGES))
    backend = BackendTokenizer(
        models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    config = _read_json(folder / "tokenizer_config.json") or {}
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    backend.decoder = decoders.ByteLevel()
    decoder = config.get("added_tokens_decoder")
    entries = sorted(decoder.items(), key=lambda item: int(item[0])) if isinstance(decoder, dict) else []
    for _, entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            token = AddedToken(
                entry["content"],
                single_word=bool(entry.get("single_word", False)),
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
                normalized=bool(entry.get("normalized", False)),
                special=bool(entry.get("special", True)),
            )
            (backend.add_special_tokens if token.special else backend.add_tokens)([token])
    named = [token for name, token in _special_token_strings(folder).items() if name in SPECIAL_TOKEN_NAMES]
    for source in (config, _read_json(folder / "special_tokens_map.json") or {}):
        for key in ("additional_special_tokens", "extra_special_tokens"):
            listed = source.get(key)
            if isinstance(listed, list):
                named += [token for token in map(_content, listed) if isinstance(token, str)]
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in dict.fromkeys(named) if token not in added]
    )
    return backend


def _end_of_generation_ids(backend: BackendTokenizer) -> list[int]:
    """Ids of the special tokens named in ``_END_OF_GENERATION``."""
    return [
        i
        for i, token in sorted(backend.get_added_tokens_decoder().items())
        if token.special and token.content in _END_OF_GENERATION
    ]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _content(token: Any) -> Any:
    """A special token as the HF configs write it: a string or ``{"content": ...}``."""
    return token.get("content") if isinstance(token, dict) else token


def _special_token_strings(folder: Path) -> dict[str, str]:
    """The special-token strings transformers hands a chat template, from the HF files in ``folder``:
    ``tokenizer_config.json``'s named tokens (``bos_token`` ... ``mask_token``), its model-specific
    ``*_token`` entries (e.g. Gemma 3's ``boi_token``) and ``extra_special_tokens`` dict, then
    ``special_tokens_map.json``, which overrides them unless the config lists ``added_tokens_decoder``."""
    config = _read_json(folder / "tokenizer_config.json") or {}
    legacy = _read_json(folder / "special_tokens_map.json") or {}
    extra = config.get("extra_special_tokens")
    sources = [config, extra if isinstance(extra, dict) else {}]
    if "added_tokens_decoder" not in config:
        sources.append(legacy)
    strings: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            value = _content(value)
            if isinstance(value, str) and (key in SPECIAL_TOKEN_NAMES or key.endswith("_token")):
                strings[key] = value
    return strings


def _hf_chat_template(folder: Path) -> ChatTemplate | None:
    """The chat template in ``folder``, read as transformers reads it: ``chat_template.jinja`` and
    ``additional_chat_templates/<name>.jinja`` take priority over ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of ``{"name": ..., "template": ...}``)."""
    files: dict[str, str] = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        files["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for file in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            files[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if files:
        return files["default"] if list(files) == ["default"] else files
    template = (_read_json(folder / "tokenizer_config.json") or {}).get("chat_template")
    if isinstance(template, list):
        return {item["name"]: item["template"] for item in template}
    return template if isinstance(template, str) and template else None


def _generation_config_eos_ids(folder: Path) -> list[int]:
    """``generation_config.json``'s ``eos_token_id`` (an int or a list) in ``folder``: the ids generation
    stops on (e.g. Llama 3.x Instruct's ``<|eot_id|>`` and ``<|eom_id|>``)."""
    value = (_read_json(folder / "generation_config.json") or {}).get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _sentencepiece_backend(model: spm_model.SentencePieceModel) -> BackendTokenizer:
    """The backend of a SentencePiece model, with its CONTROL and UNKNOWN pieces as special added tokens
    (matched whole in text, dropped by ``skip_special_tokens``), as transformers builds it."""
    backend = spm_model.build_backend(model)
    backend.add_special_tokens(
        [
            AddedToken(piece, special=True, normalized=False)
            for piece, _, kind in model.pieces
            if kind in (spm_model.CONTROL, spm_model.UNKNOWN)
        ]
    )
    return backend
