"""Each model family's tokenizer conventions (BOS, EOS, stop ids) against transformers.

The tiny tokenizers of ``tiny_tokenizers.FAMILY_TOKENIZERS`` are built with each family's own transformers
tokenizer class and tokenizer_config fields and written with ``save_pretrained``; ``AutoTokenizer`` reading
the same folder is the reference, and infodec reads it the way ``infodec.load`` does
(``Tokenizer.from_file(directory)``).
"""

import json

import pytest
from transformers import AutoTokenizer

from infodec.models.tokenizer import Tokenizer, has_tokenizer
from tests.tiny_tokenizers import FAMILY_TOKENIZERS, save_family_tokenizer, save_opt_hub_tokenizer

PLAIN_TEXTS = [
    "the cat in the hat",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces and trailing   ",
    "line one\nline two\n\n\tthree",
    "Accents: café naïve, CJK: 日本語, emoji: 😀",
    "12345 3.14159",
    "",
    " ",
]


@pytest.fixture(scope="module", params=sorted(FAMILY_TOKENIZERS))
def family(request, tmp_path_factory):
    """(family name, its folder, transformers' tokenizer of it, infodec's tokenizer of it)."""
    directory = save_family_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, directory, AutoTokenizer.from_pretrained(directory), Tokenizer.from_file(directory)


def _texts(reference) -> list[str]:
    """The plain texts, and texts holding the family's special tokens (matched whole by both)."""
    specials = [str(token) for token in reference.all_special_tokens]
    added = [token.content for token in reference.added_tokens_decoder.values()]
    tokens = list(dict.fromkeys(specials + added))
    mixed = [f"{token}the cat{tokens[-1 - i]} in" for i, token in enumerate(tokens)]
    return PLAIN_TEXTS + mixed + ["".join(tokens) + " end"]


def test_encode_matches_transformers(family):
    _, _, reference, ours = family
    texts = _texts(reference)
    assert ours.encode_batch(texts) == reference(texts)["input_ids"]
    assert [ours.encode(text) for text in texts] == [reference.encode(text) for text in texts]
    assert ours.encode_batch(texts, add_bos=False) == reference(texts, add_special_tokens=False)["input_ids"]


def test_bos_follows_the_family(family):
    """BOS leads a plain encode exactly where the family's real checkpoints put it."""
    name, _, reference, ours = family
    expected = FAMILY_TOKENIZERS[name]["adds_bos"]
    ids = ours.encode("the cat")
    assert (reference.bos_token_id is not None and reference("the cat")["input_ids"][0] == reference.bos_token_id) is (
        expected
    )
    assert (ours.bos_id is not None and ids[0] == ours.bos_id) is expected
    assert ours.bos_id == reference.bos_token_id
    assert ours.add_bos is expected
    # Never a BOS without add_bos, never a doubled one with it.
    assert ours.encode("the cat", add_bos=False) == reference.encode("the cat", add_special_tokens=False)
    if ours.bos_id is not None:
        assert ids.count(ours.bos_id) == int(expected)
        assert ours.encode("the cat", add_bos=False).count(ours.bos_id) == 0


# The families whose hub tokenizer_config.json sets add_bos_token / add_eos_token.
HUB_FLAG_FAMILIES = sorted(
    name for name, spec in FAMILY_TOKENIZERS.items() if {"add_bos_token", "add_eos_token"} & set(spec["kwargs"])
)


@pytest.mark.parametrize("name", HUB_FLAG_FAMILIES)
def test_hub_tokenizer_config_fields(name, tmp_path):
    """The folder with the ``add_bos_token`` / ``add_eos_token`` fields the families' hub
    ``tokenizer_config.json`` files carry (transformers 5 drops them when saving): same ids."""
    directory = save_family_tokenizer(tmp_path / "saved", name)
    fields = {k: v for k, v in FAMILY_TOKENIZERS[name]["kwargs"].items() if k in ("add_bos_token", "add_eos_token")}
    for file in directory.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **fields}))
    reference, ours = AutoTokenizer.from_pretrained(tmp_path), Tokenizer.from_file(tmp_path)
    texts = _texts(reference)
    assert ours.encode_batch(texts) == reference(texts)["input_ids"]
    assert ours.encode_batch(texts, add_bos=False) == reference(texts, add_special_tokens=False)["input_ids"]


def test_decode_matches_transformers(family):
    _, _, reference, ours = family
    for text in _texts(reference):
        ids = reference(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), (
                text,
                skip,
            )


def test_stop_ids_are_what_generate_stops_on(family):
    """``eos_ids``: the tokenizer's eos first, then generation_config.json's eos_token_id ids (what
    transformers' ``generate`` stops on; config.json's when the checkpoint ships no generation_config)."""
    name, directory, reference, ours = family
    generation = directory / "generation_config.json"
    source = generation if generation.is_file() else directory / "config.json"
    stop = json.loads(source.read_text())["eos_token_id"]
    stop = stop if isinstance(stop, list) else [stop]
    expected = [reference.eos_token_id, *(i for i in stop if i != reference.eos_token_id)]
    assert list(ours.eos_ids) == list(dict.fromkeys(expected))
    # The strings are the family's own (not just ids that happen to agree).
    named = FAMILY_TOKENIZERS[name]["generation_eos"] or [reference.eos_token]
    assert {reference.convert_ids_to_tokens(i) for i in ours.eos_ids} == {reference.eos_token, *named}
    assert ours.special_tokens["eos_token"] == reference.eos_token


def test_opt_hub_files_without_tokenizer_json(tmp_path):
    """OPT checkpoints ship vocab.json + merges.txt and no tokenizer.json: read as transformers'
    GPT2Tokenizer reads them (</s> prepended as BOS, only the named special tokens matched whole)."""
    directory = save_opt_hub_tokenizer(tmp_path)
    assert has_tokenizer(directory)
    reference, ours = AutoTokenizer.from_pretrained(directory), Tokenizer.from_file(directory)
    texts = [*PLAIN_TEXTS, "<s>the</s> <pad>x<unk>", "</s></s>the cat"]
    assert ours.encode_batch(texts) == reference(texts)["input_ids"]
    assert ours.encode_batch(texts, add_bos=False) == reference(texts, add_special_tokens=False)["input_ids"]
    assert ours.encode("the cat")[0] == ours.bos_id == reference.bos_token_id == 2
    for text in texts:
        ids = reference(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
    assert ours.eos_ids == (2,)
    assert ours.special_ids == frozenset(reference.all_special_ids)
