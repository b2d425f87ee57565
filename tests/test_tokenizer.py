"""infodec.models.tokenizer against transformers' own tokenizers for the same checkpoints.

transformers (GGUF loader and BertTokenizerFast) is the independent reference; it is imported here
only, never by the module under test.
"""

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import pre_tokenizers, processors
from transformers import AutoTokenizer

from infodec.models.tokenizer import INFODEC_CONFIG, Tokenizer

PLAIN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple    inner     spaces",
    "line one\nline two\n\n\nthree\ttab\t\ttabs\r\nwindows",
    "12345 3.14159 1,000,000 2024-01-31",
    "Punctuation!? (yes) [no] {maybe} --- ... ;:'\"`~@#$%^&*_+=|\\/<>",
    "Accents: café naïve Zürich São Paulo Ångström",
    "CJK: 日本語のテキスト 中文文本 한국어",
    "Emoji: 😀 👍🏽 🇫🇷 ❤️",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "",
    " ",
]
# Each holds the control-token text of one of the two vocabularies (plain text to the other).
SPECIAL_TEXTS = ["<|im_start|>user\nHi<|im_end|>\n", "<start_of_turn>model\nOK<end_of_turn>\n"]
TEXTS = PLAIN_TEXTS + SPECIAL_TEXTS
# Where transformers' SmolLM2 GGUF tokenizer is wrong (see test_smollm2_isolates_...).
NUMERIC_TEXTS = ["  3 apples", "line\n\n42", "x² ½ Ⅳ ٣", "a  12\t\t7"]


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf):
    return gguf.GGUFReader(smollm2_gguf)


@pytest.fixture(scope="module")
def gemma3_reader(gemma3_gguf):
    return gguf.GGUFReader(gemma3_gguf)


@pytest.fixture(scope="module")
def smollm2(smollm2_reader):
    return Tokenizer.from_gguf(smollm2_reader)


@pytest.fixture(scope="module")
def gemma3(gemma3_reader):
    return Tokenizer.from_gguf(gemma3_reader)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf):
    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_gguf):
    return AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def gguf_case(request):
    """(our tokenizer, transformers' GGUF tokenizer) for each vocabulary kind."""
    return (request.getfixturevalue(request.param), request.getfixturevalue(f"{request.param}_reference"))


def _write_gguf(
    path, *, model, tokens, pre=None, merges=None, scores=None, token_types=None, bos_token_id=None, eos_token_id=None
):
    """A tensor-less GGUF holding only the given ``tokenizer.ggml.*`` fields."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    for value, add in (
        (pre, writer.add_tokenizer_pre),
        (merges, writer.add_token_merges),
        (scores, writer.add_token_scores),
        (token_types, writer.add_token_types),
        (bos_token_id, writer.add_bos_token_id),
        (eos_token_id, writer.add_eos_token_id),
    ):
        if value is not None:
            add(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(path)


# ------------------------------------------------------------------------------------ GGUF metadata


@pytest.mark.download
def test_smollm2_special_ids_follow_gguf(smollm2, smollm2_reader):
    assert _field(smollm2_reader, "tokenizer.ggml.model") == "gpt2"
    assert smollm2.bos_id == _field(smollm2_reader, "tokenizer.ggml.bos_token_id") == 1
    assert smollm2.eos_ids[0] == _field(smollm2_reader, "tokenizer.ggml.eos_token_id") == 2
    assert smollm2.pad_id == _field(smollm2_reader, "tokenizer.ggml.padding_token_id") == 2
    assert smollm2.add_bos is _field(smollm2_reader, "tokenizer.ggml.add_bos_token") is False
    # <|endoftext|> also ends generation, as in llama.cpp.
    assert smollm2.eos_ids == (2, 0)
    assert smollm2.vocab_size == len(_field(smollm2_reader, "tokenizer.ggml.tokens")) == 49152
    assert smollm2.special_ids == frozenset(range(17))  # the 17 CONTROL tokens


@pytest.mark.download
def test_gemma3_special_ids_follow_gguf(gemma3, gemma3_reader):
    assert _field(gemma3_reader, "tokenizer.ggml.model") == "llama"
    assert gemma3.bos_id == _field(gemma3_reader, "tokenizer.ggml.bos_token_id") == 2
    assert gemma3.eos_ids[0] == _field(gemma3_reader, "tokenizer.ggml.eos_token_id") == 1
    assert gemma3.pad_id == _field(gemma3_reader, "tokenizer.ggml.padding_token_id") == 0
    assert gemma3.add_bos is _field(gemma3_reader, "tokenizer.ggml.add_bos_token") is True
    assert gemma3.eos_ids == (1, gemma3.backend.token_to_id("<end_of_turn>")) == (1, 106)
    assert gemma3.vocab_size == len(_field(gemma3_reader, "tokenizer.ggml.tokens")) == 262144
    assert {0, 1, 2, 3, 106} <= gemma3.special_ids
    assert gemma3.backend.token_to_id("\n") not in gemma3.special_ids  # USER_DEFINED, not CONTROL


# ------------------------------------------------------------------------ encoding vs transformers


@pytest.mark.download
def test_encode_matches_transformers(gguf_case):
    ours, reference = gguf_case
    for text in TEXTS:
        assert ours.encode(text) == reference(text)["input_ids"], text
        assert ours.encode(text, add_bos=False) == reference(text, add_special_tokens=False)["input_ids"], text
    assert ours.encode_batch(TEXTS) == reference(TEXTS)["input_ids"]


@pytest.mark.download
def test_bos_is_added_once_and_only_by_default(gguf_case):
    ours, _ = gguf_case
    plain = ours.encode("hello", add_bos=False)
    with_bos = ours.encode("hello", add_bos=True)
    assert with_bos == [ours.bos_id] + plain
    assert ours.encode("hello") == (with_bos if ours.add_bos else plain)


@pytest.mark.download
def test_decode_round_trips(gguf_case):
    ours, _ = gguf_case
    for text in PLAIN_TEXTS + NUMERIC_TEXTS:
        assert ours.decode(ours.encode(text)) == text
    for text in TEXTS:  # control tokens survive when not skipped
        assert ours.decode(ours.encode(text, add_bos=False), skip_special_tokens=False) == text
    assert ours.decode_batch(ours.encode_batch(PLAIN_TEXTS)) == PLAIN_TEXTS


@pytest.mark.download
def test_control_tokens_stay_whole_and_are_skipped_on_decode(smollm2, gemma3):
    ids = smollm2.encode(SPECIAL_TEXTS[0])
    assert ids[0] == smollm2.backend.token_to_id("<|im_start|>") and 2 in ids
    assert smollm2.decode(ids) == "user\nHi\n"
    ids = gemma3.encode(SPECIAL_TEXTS[1])
    assert ids[:2] == [2, gemma3.backend.token_to_id("<start_of_turn>")] and 106 in ids
    assert gemma3.decode(ids) == "model\nOK\n"


@pytest.mark.download
def test_smollm2_isolates_every_numeric_character(smollm2, smollm2_reference):
    # tokenizer.ggml.pre == "smollm": llama.cpp first isolates each \p{N} character, as the HF
    # SmolLM2 tokenizer.json's Digits(individual_digits=True) pre-tokenizer does. transformers' GGUF
    # loader ignores this `pre` and splits like GPT-2, so it differs on a whitespace run before a
    # number (it gives "Ġ", "Ġ", "3" for "  3") and on non-ASCII numerics such as " ½".
    def pieces(text):
        return [smollm2.backend.id_to_token(i) for i in smollm2.encode(text)]

    assert pieces("  3") == ["ĠĠ", "3"]
    assert pieces("\n\n3") == ["ĊĊ", "3"]
    assert pieces(" ½") == ["Ġ", "Â½"]
    assert pieces("2024") == ["2", "0", "2", "4"]
    # Everything else is transformers' tokenizer: same vocabulary, merges and added tokens.
    patched = BackendTokenizer.from_str(smollm2_reference.backend_tokenizer.to_str())
    patched.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in TEXTS + NUMERIC_TEXTS:
        assert smollm2.encode(text) == patched.encode(text).ids, text


@pytest.mark.download
def test_gemma3_metaspace_is_the_one_lossy_character(gemma3):
    # Spaces are stored as "▁" (U+2581), so a literal "▁" in the text decodes as a space.
    assert gemma3.encode("a▁b", add_bos=False) == gemma3.encode("a b", add_bos=False)
    assert gemma3.decode(gemma3.encode("a▁b")) == "a b"


@pytest.mark.download
def test_gemma3_has_no_dummy_prefix(gemma3):
    # No "▁" is prepended: "Hello" at the start is not "▁Hello".
    assert gemma3.encode("Hello", add_bos=False) != gemma3.encode(" Hello", add_bos=False)
    assert gemma3.decode(gemma3.encode(" Hello")) == " Hello"


@pytest.mark.download
def test_decode_accepts_numpy_and_jax(smollm2):
    ids = smollm2.encode("Decoding as optimisation")
    assert smollm2.decode(np.asarray(ids, dtype=np.int32)) == "Decoding as optimisation"
    assert smollm2.decode(jnp.asarray(ids)) == "Decoding as optimisation"
    batch = np.asarray([ids, ids])
    assert smollm2.decode_batch(batch) == ["Decoding as optimisation"] * 2
    assert smollm2.decode([]) == ""


# ------------------------------------------------------------------------------- save / from_file


@pytest.mark.download
def test_save_then_from_file_round_trips(gguf_case, tmp_path):
    ours, _ = gguf_case
    ours.save(tmp_path)
    loaded = Tokenizer.from_file(tmp_path)
    assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id, loaded.add_bos) == (
        ours.bos_id,
        ours.eos_ids,
        ours.pad_id,
        ours.add_bos,
    )
    assert loaded.vocab_size == ours.vocab_size
    assert loaded.special_ids == ours.special_ids
    assert loaded.encode_batch(TEXTS) == ours.encode_batch(TEXTS)
    assert loaded.encode_batch(TEXTS, add_bos=False) == ours.encode_batch(TEXTS, add_bos=False)


@pytest.mark.download
def test_infodec_config_takes_precedence_over_hf_files(smollm2, tmp_path):
    smollm2.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": True})
    )
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (loaded.bos_id, loaded.eos_ids, loaded.add_bos) == (1, (2, 0), False)
    assert json.loads((tmp_path / INFODEC_CONFIG).read_text())["eos_ids"] == [2, 0]


@pytest.mark.download
def test_from_file_reads_hf_conventions(smollm2, tmp_path):
    smollm2.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<|im_start|>", "special": True},
                "eos_token": "<|im_end|>",
                "add_bos_token": True,
            }
        )
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 5]}))
    loaded = Tokenizer.from_file(tmp_path)
    assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id, loaded.add_bos) == (1, (2, 5, 0), 0, True)
    assert loaded.encode("hi") == [1] + smollm2.encode("hi", add_bos=False)


@pytest.mark.download
def test_from_file_does_not_add_bos_twice(smollm2, tmp_path):
    backend = BackendTokenizer.from_str(smollm2.backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": True})
    )
    loaded = Tokenizer.from_file(tmp_path)
    plain = smollm2.encode("hi there", add_bos=False)
    assert loaded.encode("hi there") == [1] + plain
    assert loaded.encode_batch(["hi there"]) == [[1] + plain]
    assert loaded.encode("hi there", add_bos=False) == plain


@pytest.mark.download
def test_minilm_from_file_neither_pads_nor_truncates(minilm_dir):
    shipped = json.loads((minilm_dir / "tokenizer.json").read_text())
    assert shipped["padding"] is not None and shipped["truncation"]["max_length"] == 128
    ours = Tokenizer.from_file(minilm_dir / "tokenizer.json")
    assert ours.backend.padding is None and ours.backend.truncation is None
    words = (
        "Information theory gives decoding a principled objective, and value functions "
        "estimate how much each continuation is worth. "
    ).split()
    text = " ".join(words[i % len(words)] for i in range(300))
    ids = ours.encode(text)
    assert len(ids) > 128
    assert ours.pad_id == 0 and ours.pad_id not in ids
    reference = AutoTokenizer.from_pretrained(minilm_dir)
    assert ids == reference(text, truncation=False)["input_ids"]
    assert ours.encode_batch([text, "short"]) == reference([text, "short"], truncation=False)["input_ids"]


@pytest.mark.download
def test_minilm_special_tokens(minilm_dir):
    ours = Tokenizer.from_file(minilm_dir)
    # BERT has no BOS/EOS; add_bos toggles its post-processor's [CLS] ... [SEP].
    assert (ours.bos_id, ours.eos_ids, ours.add_bos) == (None, (), True)
    assert ours.special_ids == frozenset({0, 100, 101, 102, 103})
    assert ours.encode("Hello world") == [101, *ours.encode("Hello world", add_bos=False), 102]
    assert ours.decode(ours.encode("Hello World")) == "hello world"


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.download
def test_bad_inputs_raise_clear_errors(smollm2):
    with pytest.raises(ValueError, match="encode expects a str, got int"):
        smollm2.encode(123)
    with pytest.raises(ValueError, match="encode expects a str, got bytes"):
        smollm2.encode(b"bytes")
    with pytest.raises(ValueError, match="encode_batch expects a list of str, got one str"):
        smollm2.encode_batch("one str")
    with pytest.raises(ValueError, match="encode_batch expects a list of str"):
        smollm2.encode_batch(["ok", None])
    with pytest.raises(ValueError, match="1-D sequence of int ids"):
        smollm2.decode([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="1-D sequence of int ids"):
        smollm2.decode([1.5, 2.0])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 49152\)"):
        smollm2.decode([5, 49152])
    with pytest.raises(ValueError, match=r"token ids must lie in"):
        smollm2.decode_batch([[5], [-1]])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_file("/nonexistent/dir")


def test_unsupported_gguf_vocabularies_raise(tmp_path):
    reader = _write_gguf(tmp_path / "t5.gguf", model="t5", tokens=["<unk>", "a"])
    with pytest.raises(ValueError, match=r"tokenizer.ggml.model 't5'; supported: 'gpt2'.*'llama'"):
        Tokenizer.from_gguf(reader)
    reader = _write_gguf(tmp_path / "qwen.gguf", model="gpt2", pre="qwen2", tokens=["a", "b", "ab"], merges=["a b"])
    with pytest.raises(ValueError, match=r"tokenizer.ggml.pre 'qwen2'.*supported: 'default'"):
        Tokenizer.from_gguf(reader)


def test_minimal_byte_level_gguf_defaults(tmp_path):
    # No pre, no token types, no BOS/EOS fields: GPT-2 splitting, nothing special, no BOS added.
    reader = _write_gguf(
        tmp_path / "tiny.gguf", model="gpt2", tokens=["a", "b", "Ġ", "ab", "Ġab"], merges=["a b", "Ġ ab"]
    )
    tiny = Tokenizer.from_gguf(reader)
    assert (tiny.bos_id, tiny.eos_ids, tiny.pad_id, tiny.add_bos) == (None, (), None, False)
    assert tiny.encode("ab ab") == [3, 4]
    assert tiny.decode([3, 4]) == "ab ab"


@pytest.mark.parametrize("pre, expected", [("gpt2", [5]), ("llama-bpe", [4, 3]), ("smollm", [0, 1, 2, 3])])
def test_byte_level_pre_tokenizers(tmp_path, pre, expected):
    # "1234": GPT-2 keeps the number whole, Llama 3 cuts it into groups of three, SmolLM2 into digits.
    reader = _write_gguf(
        tmp_path / "digits.gguf",
        model="gpt2",
        pre=pre,
        tokens=["1", "2", "3", "4", "123", "1234", "12"],
        merges=["1 2", "12 3", "123 4"],
    )
    digits = Tokenizer.from_gguf(reader)
    assert digits.encode("1234") == expected
    assert digits.decode(expected) == "1234"


def test_minimal_sentencepiece_gguf_with_dummy_prefix(tmp_path):
    # A Llama-style SentencePiece vocabulary: add_space_prefix is absent, so it defaults to True
    # (only Gemma goes without); merges come from the scores, BOS is added by default.
    tokens = ["<unk>", "<s>", "</s>", "<0x63>", "▁", "a", "b", "ab", "▁ab", "▁a"]
    scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1]
    reader = _write_gguf(
        tmp_path / "sp.gguf",
        model="llama",
        tokens=tokens,
        scores=scores,
        token_types=types,
        bos_token_id=1,
        eos_token_id=2,
    )
    tiny = Tokenizer.from_gguf(reader)
    assert (tiny.bos_id, tiny.eos_ids, tiny.add_bos) == (1, (2,), True)
    # "▁ab" (score -5) merges before "▁a" (-6): "ab ab" -> "▁ab▁ab"; "c" falls back to its byte.
    assert tiny.encode("ab ab") == [1, 8, 8]
    assert tiny.encode("abc", add_bos=False) == [8, 3]
    assert tiny.decode(tiny.encode("ab abc")) == "ab abc"
    # As in llama.cpp, the prefix also goes on text that follows a control token.
    assert tiny.encode("</s>ab", add_bos=False) == [2, 8]
