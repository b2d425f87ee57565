"""ACLSum loader: the real wheel (counts, fields, detokenisation) and a clear error for a wrong file."""

import json
import re
import zipfile

import pytest

from infodec.data.aclsum import ASPECTS, AclsumExample, detokenize_sentence, load_aclsum, parse_paper

# PTB artefacts that must not survive detokenisation.
ARTEFACTS = re.compile(r" n't\b| 's\b| ,| \.(?:\s|$)| ;| :|\( | \)|-[LR][RCS]B-|``|''")


@pytest.fixture(scope="module")
def splits():
    return {name: load_aclsum(name) for name in ("train", "val", "test")}


@pytest.mark.download
def test_counts_and_fields(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 150, "test": 300}
    papers = {ex.paper_id for v in splits.values() for ex in v}
    assert len(papers) == 250
    for examples in splits.values():
        for ex in examples:
            assert isinstance(ex, AclsumExample) and ex.aspect in ASPECTS
            assert ex.summary and ex.title and ex.evidence()
            assert ex.query == f"Summarise the {ex.aspect} of this paper in one sentence."
            assert all(len(ex.highlights[s]) == len(ex.sentences[s]) for s in ex.sentences)
    first = splits["train"][:3]
    assert [ex.aspect for ex in first] == list(ASPECTS) and len({ex.paper_id for ex in first}) == 1


@pytest.mark.download
def test_no_ptb_artefacts(splits):
    for examples in splits.values():
        for ex in examples[::3]:  # each paper once
            for sentences in ex.sentences.values():
                for sentence in sentences:
                    assert not ARTEFACTS.search(sentence), sentence
    assert (
        detokenize_sentence("We do n't know ( see Table 1 ): it 's -- as `` said '' , fine .")
        == "We don't know (see Table 1): it's -- as \"said,\" fine."
    )  # corpora.detokenize's quote convention


@pytest.mark.download
def test_evidence_sections_and_highlights(splits):
    ex = splits["test"][0]
    assert ex.evidence() == " ".join(ex.sentences["abstract"])
    assert ex.evidence(("abstract", "conclusion")).count("\n\n") == 1
    assert set(ex.highlighted()) <= {s for v in ex.sentences.values() for s in v}
    with pytest.raises(ValueError, match="sections must be"):
        ex.evidence(("methods",))


def test_bad_split_and_wrong_wheel(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_aclsum("dev")
    wheel = tmp_path / "aclsum-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("aclsum/other.txt", "")
    with pytest.raises(ValueError, match="no member 'aclsum/dataset/test.jsonl'"):
        load_aclsum("test", wheel=wheel)
    with pytest.raises(ValueError, match="lacks fields"):
        parse_paper(json.loads('{"id": "X", "title": "T"}'))
