"""Deterministic prompt specs: sample index -> classes, prompt text and seed.

Every field of a sample is a pure function of (run seed, phase, index), so any shard can be
(re)computed alone, on any worker, and gives the same samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from stages.vocab import ClassInfo, Vocabulary, fill_template, indefinite_article, with_articles

PHASES = {"oracle": 1, "label": 2, "holdout": 3, "eval labels": 4}  # random streams: one per phase


@dataclass(frozen=True)
class PromptSpec:
    index: int
    prompt: str
    classes: tuple[str, ...]  # vocabulary names, in prompt order
    seed: int  # seeds the initial diffusion noise

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_spec(vocab: Vocabulary, classes: tuple[ClassInfo, ...], phase: str, run_seed: int,
                index: int, pair_fraction: float = 0.5) -> PromptSpec:
    """The prompt of sample ``index``: one class, or with ``pair_fraction`` two distinct classes."""
    rng = np.random.default_rng([run_seed, PHASES[phase], index])
    two = len(classes) > 1 and rng.random() < pair_fraction
    picked = rng.choice(len(classes), size=2 if two else 1, replace=False)
    chosen = [classes[int(i)] for i in picked]
    templates = vocab.pair_templates if two else vocab.templates
    template = templates[int(rng.integers(len(templates)))]
    return PromptSpec(
        index=index,
        prompt=fill_template(template, [c.prompt_name for c in chosen]),
        classes=tuple(c.name for c in chosen),
        seed=int(rng.integers(2**31 - 1)),
    )


def prompt_specs(vocab: Vocabulary, classes: tuple[ClassInfo, ...], phase: str, run_seed: int,
                 indices: range, pair_fraction: float = 0.5) -> list[PromptSpec]:
    return [prompt_spec(vocab, classes, phase, run_seed, i, pair_fraction) for i in indices]


def prompt_for(vocab: Vocabulary, names: list[str]) -> str:
    """"a photograph of a {c}" / "... a {c1} and an {c2}" (the vocabulary's templates, each name with its
    article); more than two classes are chained with " and a {c}"."""
    if len(names) == 2:
        return fill_template(vocab.pair_templates[0], names)
    rest = "".join(f" and {indefinite_article(name)} {name}" for name in names[1:])
    return with_articles(vocab.templates[0], names[:1]).format(names[0] + rest)
