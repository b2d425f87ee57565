"""Chat templates, generation_config stop ids and SentencePiece-only tokenizers, against transformers.

transformers (``AutoTokenizer`` on the same folder or GGUF, and its ``apply_chat_template``) and the
``sentencepiece`` library are the independent references; neither is imported by the code under test.
"""

import json
import shutil

import gguf
import jinja2
import pytest
from transformers import AutoTokenizer

from infodec.models.tokenizer import INFODEC_CONFIG, Tokenizer
from tests.tiny_tokenizers import GEMMA3_TEMPLATE, STYLES, save_tiny_tokenizer, train_sentencepiece

CONVERSATIONS = {
    "one_turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [
        {"role": "system", "content": "  You answer in one word.  "},
        {"role": "user", "content": "Capital of Peru?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there!\n\nTwo lines, café, 日本."},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "  Tell me a joke.  "},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "A"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "C"},
    ],
}
FIXED_DATE = {"date_string": "26 Jul 2024"}  # Llama 3.x otherwise stamps today's date


def assert_same_as_transformers(ours, reference, messages, **kwargs):
    """Text and ids of ``ours.apply_chat_template`` equal transformers' for ``messages``."""
    for add_generation_prompt in (True, False):
        args = dict(add_generation_prompt=add_generation_prompt, **kwargs)
        expected = reference.apply_chat_template(messages, tokenize=False, **args)
        assert ours.apply_chat_template(messages, **args) == expected
        expected_ids = reference.apply_chat_template(messages, tokenize=True, return_dict=False, **args)
        assert ours.apply_chat_template(messages, tokenize=True, **args) == expected_ids


# ------------------------------------------------------------------------------ registry models


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return Tokenizer.from_gguf(gguf.GGUFReader(smollm2_gguf))


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf):
    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def gemma3_reader(gemma3_gguf):
    return gguf.GGUFReader(gemma3_gguf)


@pytest.mark.download
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_template_matches_transformers(smollm2, smollm2_reference, conversation):
    # transformers' GGUF loader reads tokenizer.chat_template itself: the reference is fully independent.
    assert smollm2_reference.chat_template and smollm2.chat_template == smollm2_reference.chat_template
    assert_same_as_transformers(smollm2, smollm2_reference, CONVERSATIONS[conversation])


@pytest.mark.download
def test_smollm2_template_adds_its_default_system_prompt(smollm2):
    text = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True)
    assert ids[0] == smollm2.backend.token_to_id("<|im_start|>") and ids.count(smollm2.eos_ids[0]) == 2


@pytest.mark.download
def test_gemma3_270m_ships_no_template_and_says_so(gemma3, gemma3_reader):
    # The registry's Gemma 3 270M is the base model: its GGUF has no tokenizer.chat_template.
    assert "tokenizer.chat_template" not in gemma3_reader.fields
    assert gemma3.chat_template is None
    with pytest.raises(ValueError, match="has no chat template.*tokenizer_config.json.*chat_template="):
        gemma3.apply_chat_template([{"role": "user", "content": "Hi"}])


@pytest.fixture(scope="module")
def gemma3(gemma3_reader):
    return Tokenizer.from_gguf(gemma3_reader)


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_gguf):
    reference = AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)
    reference.chat_template = GEMMA3_TEMPLATE
    return reference


@pytest.mark.download
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_gemma3_instruct_template_on_the_gemma3_vocabulary(gemma3, gemma3_reference, conversation):
    """Google's Gemma 3 instruct template (the -it checkpoints') on the registry GGUF's vocabulary, passed
    the same way to both sides; ``{{ bos_token }}`` comes from each side's own special tokens."""
    ours, reference = gemma3, gemma3_reference
    messages = CONVERSATIONS[conversation]
    assert_same_as_transformers(ours, reference, messages, chat_template=GEMMA3_TEMPLATE)
    ids = ours.apply_chat_template(messages, chat_template=GEMMA3_TEMPLATE, tokenize=True)
    assert ids[0] == ours.bos_id and ids.count(ours.bos_id) == 1  # the template's BOS, not doubled


@pytest.mark.download
def test_gguf_template_survives_save_and_reload(smollm2, smollm2_reference, tmp_path):
    smollm2.save(tmp_path)
    assert json.loads((tmp_path / INFODEC_CONFIG).read_text())["chat_template"] == smollm2.chat_template
    again = Tokenizer.from_file(tmp_path)
    assert again.chat_template == smollm2.chat_template and again.special_tokens == smollm2.special_tokens
    assert_same_as_transformers(again, smollm2_reference, CONVERSATIONS["multi_turn"])


# ---------------------------------------------------------------------- tiny checkpoints' templates


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """{style: (our tokenizer, transformers' tokenizer)} for each tiny instruct checkpoint."""
    out = {}
    for style in STYLES:
        folder = save_tiny_tokenizer(tmp_path_factory.mktemp(style), style)
        out[style] = Tokenizer.from_file(folder), AutoTokenizer.from_pretrained(folder)
    return out


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_tiny_checkpoint_templates_match_transformers(tiny_checkpoints, style, conversation):
    ours, reference = tiny_checkpoints[style]
    assert ours.chat_template == STYLES[style]["template"]
    assert_same_as_transformers(ours, reference, CONVERSATIONS[conversation], **FIXED_DATE)


@pytest.mark.parametrize("style", ["llama3", "qwen2"])  # Gemma 3's template takes no tools
def test_template_variables_and_tools_match_transformers(tiny_checkpoints, style):
    ours, reference = tiny_checkpoints[style]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": 'Looks up <a> & "b" in the café\'s ledger',
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    messages = CONVERSATIONS["system"]
    assert_same_as_transformers(ours, reference, messages, tools=tools, **FIXED_DATE)
    text = ours.apply_chat_template(messages, tools=tools, **FIXED_DATE)
    assert '<a> & \\"b\\" in the café' in text  # tojson escapes neither HTML nor non-ASCII


def test_llama3_stamps_todays_date_like_transformers(tiny_checkpoints):
    ours, reference = tiny_checkpoints["llama3"]
    messages = CONVERSATIONS["one_turn"]
    before = ours.apply_chat_template(messages)
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    after = ours.apply_chat_template(messages)
    assert expected in (before, after)  # equal unless the date changed between the calls


def test_raise_exception_in_a_template(tiny_checkpoints):
    ours, reference = tiny_checkpoints["gemma3"]  # its template checks that roles alternate
    messages = [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]
    with pytest.raises(jinja2.TemplateError, match="Conversation roles must alternate") as ours_error:
        ours.apply_chat_template(messages)
    with pytest.raises(jinja2.TemplateError) as reference_error:
        reference.apply_chat_template(messages, tokenize=False)
    assert str(ours_error.value) == str(reference_error.value)


KITCHEN_SINK = """{%- set ns = namespace(count=0, seen=[]) -%}
{%- set d = dict(a=1, b=[2, 3]) -%}
{%- for m in messages -%}
  {%- if loop.index > 3 %}{% break %}{% endif -%}
  {%- if m.role == 'system' %}{% continue %}{% endif -%}
  {%- set ns.count = ns.count + 1 -%}
  {% generation %}[{{ m.role }}|{{ m.content | trim }}]{% endgeneration %}
  {{ m | tojson }}
  {{ d | tojson(indent=2, sort_keys=True) }}{{ m.get('reasoning_content', '-') }}
{%- endfor %}
n={{ ns.count }} bos={{ bos_token }} eos={{ eos_token }} extra={{ extra }} {{ strftime_now('%Y')|length }}
{%- if add_generation_prompt %}<go>{% endif %}"""


@pytest.mark.parametrize("style", STYLES)
def test_jinja_environment_matches_transformers(tiny_checkpoints, style):
    """Block trimming, loop controls, namespace, dict, the generation tag, tojson options, strftime_now,
    reasoning aliases, None-valued keys and extra variables, on a template written to exercise them."""
    ours, reference = tiny_checkpoints[style]
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": " <b>Zürich</b> ", "name": None},
        {"role": "assistant", "content": "ok", "reasoning": "because"},
        {"role": "user", "content": "never rendered"},
    ]
    kwargs = dict(chat_template=KITCHEN_SINK, extra=("x", 1.5, True))
    assert_same_as_transformers(ours, reference, messages, **kwargs)


def test_sandbox_refuses_attribute_escapes(tiny_checkpoints):
    ours, _ = tiny_checkpoints["qwen2"]
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template(messages, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError, match="underscore"):
        ours.apply_chat_template(messages, chat_template="{% set ns = namespace(_x=1) %}")
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: a template cannot edit its inputs
        ours.apply_chat_template(messages, chat_template="{{ messages.append(1) }}")


# ---------------------------------------------------------------------------- where templates live


def test_template_sources_are_read_as_transformers_reads_them(tmp_path):
    folder = save_tiny_tokenizer(tmp_path / "a", "qwen2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    messages = CONVERSATIONS["one_turn"]

    # A list of named templates: "default" is used, "tool_use" when tools are passed, others by name.
    config["chat_template"] = [
        {"name": "default", "template": "D:{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T:{{ tools | length }}"},
        {"name": "terse", "template": "S:{{ messages | length }}"},
    ]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = Tokenizer.from_file(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == reference.chat_template == {t["name"]: t["template"] for t in config["chat_template"]}
    assert_same_as_transformers(ours, reference, messages)
    assert_same_as_transformers(ours, reference, messages, tools=[{"name": "f"}])
    assert_same_as_transformers(ours, reference, messages, chat_template="terse")
    assert ours.apply_chat_template(messages, chat_template="terse") == "S:1"

    # chat_template.jinja (what transformers 5 writes) wins over tokenizer_config.json.
    (folder / "chat_template.jinja").write_text("J:{{ messages[0].role }}")
    ours, reference = Tokenizer.from_file(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == reference.chat_template == "J:{{ messages[0].role }}"
    assert ours.apply_chat_template(messages) == "J:user"

    # ... and additional_chat_templates/<name>.jinja add named ones.
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "rag.jinja").write_text("R:{{ documents | length }}")
    ours, reference = Tokenizer.from_file(folder), AutoTokenizer.from_pretrained(folder)
    assert (
        ours.chat_template
        == reference.chat_template
        == {"default": "J:{{ messages[0].role }}", "rag": "R:{{ documents | length }}"}
    )
    docs = [{"title": "t", "text": "x"}]
    assert ours.apply_chat_template(messages, chat_template="rag", documents=docs) == "R:1"
    assert_same_as_transformers(ours, reference, messages, chat_template="rag", documents=docs)


def test_named_templates_without_a_default_need_a_name(tmp_path):
    folder = save_tiny_tokenizer(tmp_path, "qwen2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Tokenizer.from_file(folder)
    with pytest.raises(ValueError, match=r"no 'default': \['a', 'b'\]"):
        ours.apply_chat_template(CONVERSATIONS["one_turn"])
    assert ours.apply_chat_template(CONVERSATIONS["one_turn"], chat_template="b") == "B"


@pytest.mark.parametrize("style", STYLES)
def test_templates_and_special_tokens_survive_save(tiny_checkpoints, style, tmp_path):
    ours, reference = tiny_checkpoints[style]
    ours.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert again.chat_template == ours.chat_template and again.special_tokens == ours.special_tokens
    assert_same_as_transformers(again, reference, CONVERSATIONS["multi_turn"])


def test_an_old_infodec_config_falls_back_on_the_hf_template(tmp_path):
    """A cache written before templates were saved has no "chat_template" key: the HF files still count."""
    folder = save_tiny_tokenizer(tmp_path, "qwen2")
    tokenizer = Tokenizer.from_file(folder)
    tokenizer.save(folder)
    config = json.loads((folder / INFODEC_CONFIG).read_text())
    del config["chat_template"], config["special_tokens"]
    (folder / INFODEC_CONFIG).write_text(json.dumps(config))
    again = Tokenizer.from_file(folder)
    assert again.chat_template == STYLES["qwen2"]["template"] and again.special_tokens == tokenizer.special_tokens


def test_no_template_and_bad_messages_raise_clear_errors(tmp_path):
    folder = save_tiny_tokenizer(tmp_path, "llama3")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    plain = Tokenizer.from_file(folder)
    assert plain.chat_template is None
    with pytest.raises(ValueError, match="this tokenizer has no chat template"):
        plain.apply_chat_template(CONVERSATIONS["one_turn"])
    template = "{{ messages[0].content }}"
    with pytest.raises(ValueError, match="empty conversation"):
        plain.apply_chat_template([], chat_template=template)
    with pytest.raises(ValueError, match="list of .*dicts, got str"):
        plain.apply_chat_template("Hi", chat_template=template)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict"):
        plain.apply_chat_template([{"role": "user", "content": "a"}, "b"], chat_template=template)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="tools must be a list of dicts"):
        plain.apply_chat_template(CONVERSATIONS["one_turn"], chat_template=template, tools=["f"])
    with pytest.raises(jinja2.TemplateSyntaxError):
        plain.apply_chat_template(CONVERSATIONS["one_turn"], chat_template="{% if %}")


# ------------------------------------------------------------------------- generation_config stops


def test_generation_config_stop_ids_join_eos_ids(tmp_path):
    folder = save_tiny_tokenizer(tmp_path, "qwen2")
    backend_ids = Tokenizer.from_file(folder).backend
    im_end, endoftext = backend_ids.token_to_id("<|im_end|>"), backend_ids.token_to_id("<|endoftext|>")
    plain_token = backend_ids.token_to_id("he")  # no end-of-generation token: only the file can make it one
    assert plain_token is not None

    (folder / "generation_config.json").unlink()
    assert plain_token not in Tokenizer.from_file(folder).eos_ids

    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, plain_token]}))
    tokenizer = Tokenizer.from_file(folder)
    assert tokenizer.eos_ids[0] == im_end  # tokenizer_config's eos_token first
    assert set(tokenizer.eos_ids) == {im_end, plain_token}
    assert endoftext not in tokenizer.eos_ids  # generate stops on the file's ids only, not every end token

    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": plain_token}))  # a bare int
    assert plain_token in Tokenizer.from_file(folder).eos_ids

    # Beside our own infodec_tokenizer.json (a converted cache) the file still counts.
    saved = tmp_path / "saved"
    Tokenizer.from_file(folder).save(saved)
    shutil.copy(folder / "generation_config.json", saved)
    (saved / "generation_config.json").write_text(json.dumps({"eos_token_id": [7]}))
    assert 7 in Tokenizer.from_file(saved).eos_ids


@pytest.mark.parametrize("style", STYLES)
def test_tiny_checkpoints_stop_on_their_generation_config_ids(tiny_checkpoints, style):
    ours, _ = tiny_checkpoints[style]
    expected = {ours.backend.token_to_id(t) for t in STYLES[style]["generation_eos"]}
    assert expected <= set(ours.eos_ids)
    assert ours.eos_ids[0] == ours.backend.token_to_id(STYLES[style]["named"]["eos_token"])


# --------------------------------------------------------------------- SentencePiece tokenizer.model

SPM_PLAIN = [
    "Hello  world, this is infodec: decoding as optimisation.",
    " leading space",
    "  two  spaces  around  ",
    "line one\nline two\n\n\tindented",
    "Accents: café naïve Zürich; CJK: 日本語; emoji 😀",
    "ﬁ ① Ｈｅｌｌｏ ½",  # NFKC folds these (the trainer's default nmt_nfkc rules)
    "",
    "x <|user|> y",  # a user-defined piece stays whole
]
SPM_SPECIAL = ["<s> hi </s>", "a<ctrl>b <unk>"]  # control pieces: HF matches them in text, SentencePiece does not
SPM_OPTIONS = {
    "bpe": dict(model_type="bpe", byte_fallback=True),
    "unigram": dict(model_type="unigram", byte_fallback=True),
    "bpe_no_byte_fallback": dict(model_type="bpe"),
    "unigram_raw": dict(
        model_type="unigram", add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity"
    ),
}


@pytest.fixture(scope="module", params=list(SPM_OPTIONS))
def spm_case(request, tmp_path_factory):
    """(folder holding only tokenizer.model, ours, transformers', sentencepiece's processor)."""
    import sentencepiece  # a test dependency (setup.py's test extra): a missing one fails, never skips

    folder = tmp_path_factory.mktemp(request.param)
    model_file = train_sentencepiece(folder, **SPM_OPTIONS[request.param])
    return (
        folder,
        Tokenizer.from_file(folder),
        AutoTokenizer.from_pretrained(folder),
        sentencepiece.SentencePieceProcessor(model_file=str(model_file)),
    )


def test_sentencepiece_model_encodes_like_sentencepiece_and_transformers(spm_case):
    _, ours, reference, processor = spm_case
    for text in SPM_PLAIN:
        assert ours.encode(text) == processor.encode(text) == reference.encode(text), text
    for text in SPM_SPECIAL:
        assert ours.encode(text) == reference.encode(text), text
    assert ours.vocab_size == processor.get_piece_size() == len(reference)


def test_sentencepiece_model_decodes_and_names_its_specials(spm_case):
    _, ours, reference, processor = spm_case
    for text in SPM_PLAIN + SPM_SPECIAL:
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids), text
    assert (ours.bos_id, ours.eos_ids) == (processor.bos_id(), (processor.eos_id(),))
    assert ours.pad_id is None and ours.add_bos is False  # transformers adds no BOS to a lone tokenizer.model
    assert ours.special_tokens == reference.special_tokens_map
    assert ours.encode("hi", add_bos=True)[0] == processor.bos_id()


def test_sentencepiece_model_saves_as_tokenizer_json(spm_case, tmp_path):
    _, ours, _, _ = spm_case
    ours.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert [again.encode(t) for t in SPM_PLAIN + SPM_SPECIAL] == [ours.encode(t) for t in SPM_PLAIN + SPM_SPECIAL]


def test_sentencepiece_model_with_a_template_and_config(tmp_path):
    train_sentencepiece(tmp_path, model_type="bpe", byte_fallback=True)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": True, "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"})
    )
    ours = Tokenizer.from_file(tmp_path / "tokenizer.model")
    assert ours.bos_id is not None and ours.add_bos and ours.encode("hi")[0] == ours.bos_id
    assert ours.apply_chat_template(CONVERSATIONS["one_turn"]) == "<s>What is the capital of France?</s>"
    ids = ours.apply_chat_template(CONVERSATIONS["one_turn"], tokenize=True)
    assert ids[0] == ours.bos_id and ids[-1] == ours.eos_ids[0] and ids.count(ours.bos_id) == 1


def test_not_a_sentencepiece_model_is_refused(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json \\(nor a SentencePiece tokenizer.model\\)"):
        Tokenizer.from_file(tmp_path)


def test_has_tokenizer_sees_either_file(tmp_path):
    from infodec.models.tokenizer import has_tokenizer

    assert not has_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"")
    assert has_tokenizer(tmp_path)
