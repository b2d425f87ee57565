"""A SentencePiece ``tokenizer.model`` read without sentencepiece or protobuf, and rebuilt as a ``tokenizers``
backend that encodes as ``SentencePieceProcessor.encode`` does.

The file is a serialised ``sentencepiece.ModelProto``; only the fields a tokenizer needs are decoded
(protobuf wire format: varints, 32-bit floats, length-delimited strings and sub-messages), with the
proto's defaults for absent ones. The backend follows transformers' ``SpmConverter.
build_tokenizer_from_spm_proto`` (what transformers 5 builds from a lone ``tokenizer.model``):
the precompiled normalisation charsmap, extra-whitespace removal, whitespace escaped to ``▁``, the
dummy ``▁`` prefix on every stretch of text between added tokens, BPE merges ranked by piece score
(Unigram models keep their scores), byte fallback, and user-defined pieces kept whole.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

# sentencepiece_model.proto: ModelProto.SentencePiece.Type, TrainerSpec.ModelType.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


@dataclasses.dataclass
class SentencePieceModel:
    """The parts of a ``ModelProto`` a tokenizer needs (proto defaults where the file is silent).

    Attributes:
      pieces: ``(piece, score, type)`` per id; ``type`` is one of NORMAL .. BYTE.
      model_type: UNIGRAM (1) or BPE (2); word and char models are refused by :func:`build_backend`.
      byte_fallback: unknown characters become ``<0xXX>`` byte pieces.
      unk_id, bos_id, eos_id, pad_id: special ids (-1 = none).
      precompiled_charsmap: the normaliser's compiled rules (empty = identity).
      add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces: the normaliser's switches.
    """

    pieces: list[tuple[str, float, int]] = dataclasses.field(default_factory=list)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    def piece(self, index: int) -> str | None:
        """The piece of id ``index``, or None for -1 / out of range."""
        return self.pieces[index][0] if 0 <= index < len(self.pieces) else None


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field of one protobuf message (fixed-width values
    and length-delimited ones as bytes, varints as int)."""
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: int | bytes = varint()
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, value


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field, got a varint")
    return value


def _int(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise ValueError("expected a varint field")
    return value


def _int32(value: int) -> int:
    """A varint read back as a signed int32 (negative numbers are sign-extended to 64 bits)."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def read_model(path: str | Path) -> SentencePieceModel:
    """Parses a SentencePiece ``tokenizer.model``; a file that is not one raises ``ValueError``."""
    data = Path(path).read_bytes()
    model = SentencePieceModel()
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:  # pieces
                piece, score, kind = "", 0.0, NORMAL
                for n, w, v in _fields(_bytes(value)):
                    if n == 1 and w == 2:
                        piece = _bytes(v).decode("utf-8")
                    elif n == 2 and w == 5:
                        score = struct.unpack("<f", _bytes(v))[0]
                    elif n == 3 and w == 0:
                        kind = _int(v)
                model.pieces.append((piece, score, kind))
            elif number == 2 and wire == 2:  # trainer_spec
                for n, w, v in _fields(_bytes(value)):
                    if w != 0:
                        continue
                    if n == 3:
                        model.model_type = _int(v)
                    elif n == 35:
                        model.byte_fallback = bool(v)
                    elif n in (40, 41, 42, 43):
                        setattr(model, ("unk_id", "bos_id", "eos_id", "pad_id")[n - 40], _int32(_int(v)))
            elif number == 3 and wire == 2:  # normalizer_spec
                for n, w, v in _fields(_bytes(value)):
                    if n == 2 and w == 2:
                        model.precompiled_charsmap = _bytes(v)
                    elif n in (3, 4, 5) and w == 0:
                        name = ("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces")[n - 3]
                        setattr(model, name, bool(v))
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f"{path} is not a SentencePiece model: {e}") from None
    if not model.pieces:
        raise ValueError(f"{path} is not a SentencePiece model: it has no pieces")
    return model


def build_backend(model: SentencePieceModel) -> BackendTokenizer:
    """A ``tokenizers.Tokenizer`` encoding as SentencePiece does (transformers' generic SentencePiece path).

    CONTROL and USER_DEFINED pieces are not added here; the caller adds them as added tokens (CONTROL as
    special ones), as transformers does.
    """
    vocab = [piece for piece, _, _ in model.pieces]
    unk = model.piece(model.unk_id)
    user_defined = [piece for piece, _, kind in model.pieces if kind == USER_DEFINED]
    if model.model_type == BPE:
        # Only normal pieces are merged, ranked by score (higher first), ties by id.
        normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(model.pieces) if kind == NORMAL}
        ranked = []
        for token, (score, index) in normal.items():
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, index, left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        backend = BackendTokenizer(
            models.BPE(
                {piece: i for i, piece in enumerate(vocab)},
                merges,
                unk_token=unk,
                fuse_unk=True,
                byte_fallback=model.byte_fallback,
                ignore_merges=bool(user_defined),
            )
        )
    elif model.model_type == UNIGRAM:
        backend = BackendTokenizer(
            models.Unigram(
                [(piece, score) for piece, score, _ in model.pieces],
                unk_id=model.unk_id if unk is not None else None,
                byte_fallback=model.byte_fallback,
            )
        )
    else:
        raise ValueError(
            f"unsupported SentencePiece model_type {model.model_type} (3 = word, 4 = char); supported: unigram, bpe"
        )

    steps: list[normalizers.Normalizer] = []
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:  # only spaces: SentencePiece leaves newlines and tabs alone
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if model.add_dummy_prefix:  # Metaspace skips the prefix when the text starts with "▁"; SentencePiece doesn't
        steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
    backend.normalizer = normalizers.Sequence(steps)

    splits: list[pre_tokenizers.PreTokenizer] = []
    if model.add_dummy_prefix:
        splits.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False))
    if user_defined:  # emitted whole, never merged
        pattern = "|".join(re.escape(piece) for piece in sorted(user_defined, key=len, reverse=True))
        splits.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if splits:
        backend.pre_tokenizer = pre_tokenizers.Sequence(splits)

    steps_out: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if model.byte_fallback:
        steps_out.append(decoders.ByteFallback())
    if model.add_dummy_prefix:
        steps_out += [decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    elif model.byte_fallback:
        steps_out.append(decoders.Fuse())
    backend.decoder = decoders.Sequence(steps_out)
    return backend
