"""The miniature world's place in the models cache: ``sd: world`` and ``oracle_weights: world`` in a
preset name the world its ``world:`` section describes, built once by ``datagen world build`` into a
folder keyed by its content (like the tiny preset) and loaded from there by the normal loaders."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError, Preset, resolve_vocabulary
from pipeline.dataset.atomic import build_folder_once
from stages.weights import WeightsMissingError
from stages.world.build import Progress, build_world
from stages.world.spec import WorldSpec, world_name

WORLD = "world"  # the value of `sd` / `oracle_weights` that points at the preset's world


def world_spec(preset: Preset) -> WorldSpec:
    if preset.world is None:
        raise ConfigError("the model preset uses `world` models but has no `world:` section "
                          "(see configs/presets/world.yaml)")
    return preset.world


def world_folder(cache_dir: Path, spec: WorldSpec) -> Path:
    """Where the world of ``spec`` lives in the cache (built or not)."""
    return Path(cache_dir) / world_name(spec, resolve_vocabulary(spec.vocab).to_dict())


def built_world(cache_dir: Path, spec: WorldSpec) -> Path:
    """The world's folder; WeightsMissingError (one line) when it has not been built."""
    folder = world_folder(cache_dir, spec)
    if not folder.is_dir():
        raise WeightsMissingError(f"the world's models are not built yet ({folder}): run "
                                  "`datagen world build --models PRESET` first (about 20 minutes on 2 CPU cores)")
    return folder


def build(cache_dir: Path, spec: WorldSpec, progress: Progress | None = None) -> tuple[Path, bool]:
    """Build the world unless it is in the cache already: (its folder, whether it was built now)."""
    folder = world_folder(cache_dir, spec)
    existed = folder.is_dir()
    vocab = resolve_vocabulary(spec.vocab)
    return build_folder_once(folder, lambda tmp: build_world(tmp, spec, vocab, progress)), not existed
