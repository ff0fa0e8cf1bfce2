"""Model sources built here, not downloaded: a preset's ``sd`` / ``oracle_weights`` value ``tiny`` names
the tiny preset's random models (built from a seed on first use), ``world`` the miniature world its
``world:`` section describes (built once by ``datagen world build``). What they are is the testbed's
(``testbed/``); where they live in the models cache (folders keyed by their content, read by the normal
loaders), when they are built and how a preset's ``world:`` section is checked is the pipeline's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import ConfigError, Preset, RunConfig, resolve_vocabulary
from pipeline.dataset.atomic import build_folder_once
from stages.weights import WeightsMissingError
from testbed.random_presets import build_random_preset, random_preset_name
from testbed.world.build import Progress, build_world
from testbed.world.spec import WorldSpec, world_name

TINY_MODEL_SEED = 0  # the tiny preset's weights are fixed, whatever the run seed


def tiny_preset_dir(cache_dir: Path, seed: int, image_size: int) -> Path:
    """The tiny preset's folder in the cache, built on first use (keyed by its content)."""
    return build_folder_once(Path(cache_dir) / random_preset_name(seed, image_size),
                             lambda folder: build_random_preset(folder, seed, image_size))


def world_spec(preset: Preset, preset_name: str) -> WorldSpec:
    """The preset's ``world:`` section (checked by ``load_preset``) as the testbed's WorldSpec; ConfigError,
    one line naming the preset, when it has none."""
    if preset.world is None:
        raise ConfigError(f"model preset '{preset_name}': it uses `world` models but has no `world:` section "
                          "(see configs/presets/world.yaml)")
    return WorldSpec(**preset.world)


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


# The sources a run's config can name by these words instead of a hub id or a path: the folder of each
LOCAL_SOURCES: dict[str, Callable[[RunConfig], Path]] = {
    "tiny": lambda config: tiny_preset_dir(config.cache_dir, TINY_MODEL_SEED, config.preset.image_size),
    "world": lambda config: built_world(config.cache_dir, world_spec(config.preset, config.preset_name)),
}
