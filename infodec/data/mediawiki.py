"""MediaWiki XML to prose: the cleaner that turns the gensim wheel's Wikipedia dump into the ``wiki`` corpus.

Templates, tables, references, comments, math, files, categories, headings, lists and bold / italic marks
are removed; links become their label; the reference sections ("See also", "References", ...) are skipped;
what is left are prose paragraphs.
"""

from __future__ import annotations

import bz2
import html
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from infodec.data.documents import Document

_SKIP_SECTIONS = {
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "references and notes",
    "works cited",
    "gallery",
    "discography",
    "filmography",
    "selected works",
    "publications",
    "works",
    "primary sources",
    "secondary sources",
    "literature",
    "sources and further reading",
    "explanatory notes",
    "reference notes",
    "general references",
    "cited sources",
}
_DROP_LINK_PREFIXES = (
    "file:",
    "image:",
    "category:",
    "media:",
    "wikt:",
    "wiktionary:",
    "s:",
    "commons:",
    "wikisource:",
    "special:",
)
_DROP_TAGS = (
    "ref",
    "gallery",
    "timeline",
    "imagemap",
    "source",
    "syntaxhighlight",
    "score",
    "hiero",
    "graph",
    "mapframe",
    "references",
    "chem",
    "ce",
)
_SENTINEL = "\x00"  # marks removed math: a paragraph containing it is not kept
_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}).)*)\}\}", re.S)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.S)
_CONVERT_UNITS = {
    "C": "\u00b0C",
    "F": "\u00b0F",
    "C-change": "\u00b0C",
    "F-change": "\u00b0F",
    "K-change": "K",
    "km2": "km\u00b2",
    "m2": "m\u00b2",
    "sqmi": "sq mi",
    "mi2": "sq mi",
    "sqft": "sq ft",
    "ft2": "sq ft",
    "acre": "acres",
    "ha": "ha",
    "km3": "km\u00b3",
    "m3": "m\u00b3",
    "cuft": "cu ft",
    "kph": "km/h",
    "km/h": "km/h",
    "mph": "mph",
}
_NUMBERISH = re.compile(r"^[-+\u2212]?[\d.,/]+$|^(to|and|or|-|\u2013|x|by|\+/-|\u00b1)$", re.I)


def parse_wiki_xml(data: bytes | str | Path, *, min_words: int = 50) -> list[Document]:
    """Articles of a MediaWiki XML dump (bytes, bz2-compressed or not, or a file path).

    Keeps main-namespace pages that are not redirects, cleans them with :func:`clean_wikitext` and
    drops those left with fewer than ``min_words`` words (disambiguation pages are mostly lists).
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if data[:3] == b"BZh":
        data = bz2.decompress(data)
    documents = []
    page: dict[str, Any] = {}
    for _, element in ET.iterparse(io.BytesIO(data), events=("end",)):
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ("title", "ns", "text") and not page.get(tag):
            page[tag] = element.text or ""
        elif tag == "id" and "id" not in page:
            page["id"] = element.text  # the page id comes before the revision's
        elif tag == "redirect":
            page["redirect"] = True
        elif tag == "page":
            if page.get("ns", "0") == "0" and not page.get("redirect"):
                text = clean_wikitext(page.get("text", ""))
                if len(text.split()) >= min_words:
                    documents.append(Document(f"wiki-{page.get('id')}", text, page.get("title")))
            page = {}
            element.clear()
    return documents


def clean_wikitext(text: str) -> str:
    """Prose paragraphs of one article's wikitext, separated by blank lines."""
    text = re.sub(r"<!--.*?(?:-->|$)", "", text, flags=re.S)
    for tag in _DROP_TAGS:
        text = re.sub(rf"<{tag}\b[^>]*/>", "", text, flags=re.I)
        text = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", text, flags=re.I | re.S)
    text = re.sub(r"<math\b[^>]*>.*?</math\s*>", _SENTINEL, text, flags=re.I | re.S)
    text = re.sub(r"<br\s*/?\s*>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*>", "", text)  # other tags: keep the content
    text = _expand_templates(text)
    text = _strip_tables(text)
    text = _expand_links(text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]", lambda m: m.group(1) or "", text)
    text = re.sub(r"'''''|'''|''", "", text)
    text = re.sub(r"__[A-Z]+__", "", text)
    text = html.unescape(text).replace("\xa0", " ").replace("\u200b", "")

    paragraphs: list[str] = []
    current: list[str] = []
    skipping = False

    def flush() -> None:
        if current and not skipping:
            paragraph = _tidy(" ".join(current))
            if _is_prose(paragraph):
                paragraphs.append(paragraph)
        current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = re.fullmatch(r"(={1,6})\s*(.*?)\s*\1", stripped)
        if heading:
            flush()
            skipping = heading.group(2).strip().lower() in _SKIP_SECTIONS
        elif not stripped or stripped[0] in "*#:;|!{}" or stripped.startswith("----"):
            flush()  # blank lines, lists, indents, table and template leftovers end a paragraph
        else:
            current.append(stripped)
    flush()
    return "\n\n".join(paragraphs)


def _split_args(body: str) -> list[str]:
    """Splits a template body at the pipes that are not inside a [[link]]."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(body):
        if body.startswith("[[", i):
            depth += 1
            i += 2
            continue
        if body.startswith("]]", i) and depth:
            depth -= 1
            i += 2
            continue
        if body[i] == "|" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    parts.append(body[start:])
    return [part.strip() for part in parts]


def _render_template(body: str) -> str:
    """The text a few inline templates show; every other template renders as nothing."""
    parts = _split_args(body)
    name = parts[0].strip().lower().replace("_", " ")
    if ":" in name:  # parser functions and magic words: {{formatnum:1234}}, {{lc:...}}
        function, _, argument = parts[0].partition(":")
        return argument.strip() if function.strip().lower() in ("formatnum", "lc", "uc", "ucfirst", "lcfirst") else ""
    args = [p for p in parts[1:] if not re.match(r"^[\w -]+=", p)]
    named = dict(p.split("=", 1) for p in parts[1:] if re.match(r"^[\w -]+=", p))
    named = {k.strip().lower(): v.strip() for k, v in named.items()}
    if name in ("convert", "cvt"):
        shown = []
        for arg in args:
            if not _NUMBERISH.match(arg):
                shown.append(_CONVERT_UNITS.get(arg, arg))
                break
            shown.append(arg)
        return " ".join(shown)
    if name in ("lang", "transl", "transliteration") or name.startswith("lang-"):
        return args[-1] if args else ""
    if name in (
        "nihongo",
        "nihongo2",
        "vanchor",
        "visible anchor",
        "abbr",
        "flag",
        "flagcountry",
        "nts",
        "ntsh",
        "sortname",
        "small",
        "smaller",
        "big",
        "nowrap",
        "nobr",
        "nowiki",
        "em",
        "strong",
        "var",
        "mvar",
        "math",
        "sic",
        "not a typo",
        "keypress",
        "code",
        "angbr",
        "lang-en",
        "w",
        "linktext",
        "midsize",
        "resize",
        "sc",
        "smallcaps",
        "serif",
        "sans-serif",
        "chem",
        "ill",
        "interlanguage link",
    ):
        if name in ("sortname",) and len(args) >= 2:
            return f"{args[0]} {args[1]}"
        if name in ("resize",) and len(args) >= 2:
            return args[-1]
        return args[0] if args else ""
    if name in ("quote", "quotation", "cquote", "blockquote", "poem quote"):
        return named.get("text", args[0] if args else "")
    if name in ("as of", "asof"):
        prefix = "as of" if named.get("lc") in ("y", "yes") else "As of"
        return f"{prefix} {' '.join(args[:3])}" if args else ""
    if name in ("circa", "c."):
        return f"c. {args[0]}" if args else "c."
    if name in ("frac", "sfrac", "fraction"):
        return "/".join(args) if args else ""
    if name in ("ndash", "snd", "spaced ndash", "spnd", "dash"):
        return " \u2013 " if name != "ndash" else "\u2013"
    if name in ("mdash", "spaced mdash", "pipe", "!"):
        return {"pipe": "|", "!": "|"}.get(name, "\u2014")
    if name in ("'", "' \"", "\" '"):
        return "'"
    if name in ("'s",):
        return "'s"
    if name == "nbsp":
        return " "
    if name in ("inflation", "formatprice"):
        return ""
    return ""


def _expand_templates(text: str) -> str:
    """Replaces templates, innermost first, with what :func:`_render_template` shows."""
    for _ in range(50):
        text, count = _TEMPLATE.subn(lambda m: _render_template(m.group(1)), text)
        if not count:
            break
    text = re.sub(r"\{\{\{[^{}]*\}\}\}", "", text)
    return text


def _strip_tables(text: str) -> str:
    """Drops ``{| ... |}`` tables (nested ones too), line by line."""
    out, depth = [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("{|"):
            depth += 1
            continue
        if depth:
            if stripped.startswith("|}"):
                depth -= 1
            continue
        out.append(line)
    return "\n".join(out)


def _render_link(body: str) -> str:
    target, _, label = body.partition("|")
    target = target.strip()
    lowered = target.lower()
    if lowered.startswith(_DROP_LINK_PREFIXES) or re.match(r"^[a-z]{2,3}(?:-[a-z]+)?:", target):
        return ""  # files, categories, interlanguage and sister-project links
    if label:
        return label.rsplit("|", 1)[-1].strip() if "|" in label else label.strip()
    target = target.lstrip(":")
    return target.split("#", 1)[0] if not target.startswith("#") else target[1:]


def _expand_links(text: str) -> str:
    for _ in range(20):
        text, count = _LINK.subn(lambda m: _render_link(m.group(1)), text)
        if not count:
            break
    return text


def _tidy(paragraph: str) -> str:
    """Whitespace and the punctuation that removed templates and references leave behind."""
    text = re.sub(r"\s+", " ", paragraph)
    for _ in range(3):
        text = re.sub(r"\(\s*[,;:]\s*", "(", text)
        text = re.sub(r"\s*[,;:]\s*\)", ")", text)
        text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    text = re.sub(r"\s+([,.;:!?)\]%])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    text = re.sub(r"\s{2,}", " ", text)
    return text.strip()


def _is_prose(paragraph: str) -> bool:
    """Whether a cleaned paragraph reads as running text: enough words, mostly alphabetic, ending
    like a sentence, and not holding a removed formula."""
    if _SENTINEL in paragraph:
        return False
    words = paragraph.split()
    if len(words) < 8:
        return False
    alphabetic = sum(bool(re.search(r"[A-Za-z]", w)) for w in words)
    if alphabetic < 0.7 * len(words):
        return False
    return bool(re.search(r"[.!?:;\"')\u201d]$", paragraph))
