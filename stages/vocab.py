"""Vocabularies: class names, ids, the seen/unseen split and the detector's name for each class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stages.errors import DatagenError


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


def load_vocabulary(path: Path) -> Vocabulary:
    """Read a vocabulary YAML file (see configs/vocab/voc.yaml for the format)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise VocabularyError(f"cannot read vocabulary {path}: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list) or not raw["classes"]:
        raise VocabularyError(f"vocabulary {path} has no 'classes' list")
    unseen = set(raw.get("unseen", []))
    classes = []
    for i, entry in enumerate(raw["classes"], start=1):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not entry.get("name"):
            raise VocabularyError(f"vocabulary {path}: class #{i} has no name")
        name = str(entry["name"])
        classes.append(ClassInfo(
            id=i, name=name, seen=name not in unseen,
            detector_name=str(entry.get("detector", name)),
            synonyms=tuple(entry.get("synonyms", ())),
        ))
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise VocabularyError(f"vocabulary {path} repeats a class name")
    if missing := unseen - set(names):
        raise VocabularyError(f"vocabulary {path}: unseen classes not in the class list: {sorted(missing)}")
    if len(classes) > 254:
        raise VocabularyError(f"vocabulary {path} has {len(classes)} classes; seg.png holds at most 254")
    kwargs = {k: tuple(raw[k]) for k in ("templates", "pair_templates") if k in raw}
    if "text_template" in raw:
        kwargs["text_template"] = raw["text_template"]
    return Vocabulary(name=raw.get("name", Path(path).stem), classes=tuple(classes), **kwargs)
