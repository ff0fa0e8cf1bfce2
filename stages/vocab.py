"""Vocabularies: class names, ids, the seen/unseen split and the detector's name for each class."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stages.errors import DatagenError
from stages.yaml_file import read_yaml_mapping


@dataclass(frozen=True)
class ClassInfo:
    """One vocabulary class. ``id`` is the value written in ``seg.png`` (1..K; 0 is background)."""

    id: int
    name: str
    seen: bool
    detector_name: str  # the COCO category name the oracle detector uses for this class
    synonyms: tuple[str, ...] = ()

    @property
    def prompt_name(self) -> str:
        """The name as it reads in a prompt ("pottedplant" -> "potted plant")."""
        return self.synonyms[0] if self.synonyms else self.name


@dataclass(frozen=True)
class Vocabulary:
    name: str
    classes: tuple[ClassInfo, ...]
    templates: tuple[str, ...] = ("a photograph of a {}",)
    pair_templates: tuple[str, ...] = ("a photograph of a {} and a {}",)
    text_template: str = "a photograph of a {}"  # the grounding module's class text
    _by_name: dict = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {c.name: c for c in self.classes})

    @property
    def seen(self) -> tuple[ClassInfo, ...]:
        return tuple(c for c in self.classes if c.seen)

    @property
    def unseen(self) -> tuple[ClassInfo, ...]:
        return tuple(c for c in self.classes if not c.seen)

    def __getitem__(self, name: str) -> ClassInfo:
        return self._by_name[name]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "templates": list(self.templates),
            "pair_templates": list(self.pair_templates),
            "text_template": self.text_template,
            "classes": [
                {"id": c.id, "name": c.name, "seen": c.seen, "detector_name": c.detector_name,
                 "synonyms": list(c.synonyms)}
                for c in self.classes
            ],
        }


class VocabularyError(DatagenError, ValueError):
    """A vocabulary file that cannot be used."""


KEYS = {"name", "classes", "unseen", "templates", "pair_templates", "text_template"}
CLASS_KEYS = {"name", "detector", "synonyms"}
RESERVED = "background"  # id 0 of every mask: no class may be called so
FORBIDDEN = "|"  # breaks the dataset card's class table
# The indefinite article goes by the first sound, not the first letter. Exceptions to "a vowel letter
# takes 'an'": a silent h ("an hour"), and a vowel letter read as a consonant ("a unicorn", "a one-way
# sign", "a european"). None of COCO's or VOC's names needs one (their vowel-initial ones, "an umbrella",
# "an airplane", "an oven", read as written); they are here for user vocabularies. inflect knows more
# cases but takes over 2 s to import, in every worker and `datagen prompts`.
SILENT_H = ("hour", "honest", "honor", "honour", "heir")
CONSONANT_VOWEL = ("uni", "use", "usu", "uten", "eu", "ewe", "one", "once")
ARTICLE = re.compile(r"(^|\s)(a/an|an|a)(\s+)$", re.IGNORECASE)  # the article word right before a '{}'


def indefinite_article(name: str) -> str:
    """"a" or "an" before ``name``, by its first sound."""
    word = name.strip().lower()
    if word.startswith(SILENT_H):
        return "an"
    return "an" if word[:1] in tuple("aeiou") and not word.startswith(CONSONANT_VOWEL) else "a"


def with_articles(template: str, names: Sequence[str]) -> str:
    """``template`` with the article before each '{}' ("a", "an" or "a/an") made right for the name that
    fills it, placeholders kept: ("a photograph of a {}", ["umbrella"]) -> "a photograph of an {}"."""
    pieces, fill = [], iter(names)
    for literal, placeholder, _, _ in string.Formatter().parse(template):
        if placeholder is not None:
            name = next(fill)
            literal = ARTICLE.sub(lambda m: m[1] + _cased(indefinite_article(name), m[2]) + m[3], literal)
        pieces.append(literal.replace("{", "{{").replace("}", "}}") + ("{}" if placeholder is not None else ""))
    return "".join(pieces)


def fill_template(template: str, names: Sequence[str]) -> str:
    """The text of ``template`` for ``names``, each with its right article: "a photograph of an umbrella"."""
    return with_articles(template, names).format(*names)


def _cased(article: str, written: str) -> str:
    return article.capitalize() if written[:1].isupper() else article


def normalize(name: str) -> str:
    """"Potted plant", "potted_plant" and "pottedplant" are one name."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_vocabulary(path: Path) -> Vocabulary:
    """Read a vocabulary YAML file (see configs/vocab/voc.yaml for the format); VocabularyError, one line
    naming the file and the entry, for anything a run could not use as it reads."""
    raw = read_yaml_mapping(path, "vocabulary", VocabularyError)

    def fail(problem: str) -> VocabularyError:
        return VocabularyError(f"vocabulary {path}: {problem}")

    if unknown := sorted(set(raw) - KEYS):
        raise fail(f"unknown keys {unknown} (known: {sorted(KEYS)})")
    if not isinstance(raw.get("classes"), list) or not raw["classes"]:
        raise VocabularyError(f"vocabulary {path} has no 'classes' list")
    unseen = set(_names(raw.get("unseen", []), "unseen", fail))
    classes = [_class(i, entry, unseen, fail) for i, entry in enumerate(raw["classes"], start=1)]
    spellings: dict[str, str] = {}  # normalised name -> the first class spelled so
    for c in classes:
        if (twin := spellings.setdefault(normalize(c.name), c.name)) != c.name:
            raise fail(f"classes '{twin}' and '{c.name}' are one name once case, spaces and punctuation are ignored")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise VocabularyError(f"vocabulary {path} repeats a class name")
    if missing := unseen - set(names):
        raise VocabularyError(f"vocabulary {path}: unseen classes not in the class list: {sorted(missing)}")
    if len(classes) > 254:
        raise VocabularyError(f"vocabulary {path} has {len(classes)} classes; seg.png holds at most 254")
    kwargs = {key: tuple(_templates(raw[key], key, places, fail))
              for key, places in (("templates", 1), ("pair_templates", 2)) if key in raw}
    if "text_template" in raw:
        kwargs["text_template"] = _template(raw["text_template"], "text_template", 1, fail)
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str) or not name.strip():
        raise fail(f"name must be a text, not {name!r}")
    return Vocabulary(name=name, classes=tuple(classes), **kwargs)


def _class(i: int, entry, unseen: set[str], fail) -> ClassInfo:
    """Class #i of the list: a name, or a mapping with name, detector and synonyms."""
    entry = entry if isinstance(entry, dict) else {"name": entry}
    if unknown := sorted(set(entry) - CLASS_KEYS):
        raise fail(f"class #{i} has unknown keys {unknown} (known: {sorted(CLASS_KEYS)})")
    name = _name(entry.get("name"), f"class #{i}", fail)
    if FORBIDDEN in name:
        raise fail(f"class #{i} {name!r} holds '{FORBIDDEN}': class names appear in the dataset card's table")
    if normalize(name) == RESERVED:
        raise fail(f"class #{i} is named {name!r}: '{RESERVED}' is id 0 of every mask, not a class")
    detector = _name(entry.get("detector", name), f"class #{i} {name!r}: detector", fail)
    synonyms = _names(entry.get("synonyms", []), f"class #{i} {name!r}: synonyms", fail)
    return ClassInfo(id=i, name=name, seen=name not in unseen, detector_name=detector, synonyms=tuple(synonyms))


def _name(value, where: str, fail) -> str:
    """A class name or spelling: a non-empty text on one line, with a letter or digit."""
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{where} must be a name (a text), not {value!r}")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise fail(f"{where} {value!r} holds a line break or control character")
    if not normalize(value):
        raise fail(f"{where} {value!r} has no letter or digit")
    return value


def _names(value, where: str, fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(f"{where} must be a list of names, not {value!r}")
    return [_name(v, f"{where} entry", fail) for v in value]


def _templates(value, key: str, places: int, fail) -> list[str]:
    if not isinstance(value, list) or not value:
        raise fail(f"{key} must be a non-empty list of texts, not {value!r}")
    return [_template(v, key, places, fail) for v in value]


def _template(value, key: str, places: int, fail) -> str:
    """A prompt template with exactly ``places`` '{}' placeholders (one per class it names)."""
    if not isinstance(value, str):
        raise fail(f"{key} entry {value!r} is not a text")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as err:
        raise fail(f"{key} entry {value!r}: {err}") from err
    if len(fields) != places or any(fields):
        raise fail(f"{key} entry {value!r} must hold exactly {places} '{{}}' placeholder{'s' * (places > 1)}")
    return value
