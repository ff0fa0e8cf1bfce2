"""The testbed's models as a run names them: a preset's `world:` section is the testbed's to check, and a
bad one is still refused on loading (before a run claims its output folder) with one line naming the
preset and the key; the tiny preset's folder keeps its name in the cache."""

import pytest
import yaml

from pipeline.cli.options import run_config
from pipeline.config import CONFIG_DIR, ConfigError, load_preset
from pipeline.local_sources import TINY_MODEL_SEED, world_spec
from testbed.random_presets import random_preset_name
from testbed.world.spec import WorldSpec

BAD_WORLDS = [  # (the world: section, what the line says)
    ({"scenes": 0}, "world.scenes: Input should be greater than 0"),
    ({"vae": {"steps": 10}}, "world.vae.batch_size: Field required"),
    ({"scene": 300}, "world.scene: Extra inputs are not permitted"),
    ({"pair_fraction": "half"}, "world.pair_fraction: Input should be a valid number"),
    (3, "world: Input should be a valid dictionary"),
]


def world_preset(tmp_path, world) -> str:
    raw = yaml.safe_load((CONFIG_DIR / "presets" / "world.yaml").read_text())
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump({**raw, "world": world}))
    return str(path)


@pytest.mark.parametrize("world, message", BAD_WORLDS)
def test_a_bad_world_section_is_refused_on_loading_naming_the_key(tmp_path, world, message):
    preset = world_preset(tmp_path, world)
    with pytest.raises(ConfigError) as raised:
        run_config(vocab="shapes", out=str(tmp_path / "out"), models=preset, seed=0, device="cpu")
    text = str(raised.value)
    assert "\n" not in text and message in text and f"model preset '{preset}'" in text, text
    assert not (tmp_path / "out").exists()


def test_the_packaged_world_section_is_the_testbed_spec():
    spec = world_spec(load_preset("world"), "world")
    assert isinstance(spec, WorldSpec) and spec.vocab == "shapes" and spec.unet.steps == 6000


def test_a_preset_without_a_world_section_needs_none():
    assert load_preset("tiny").world is None
    with pytest.raises(ConfigError, match="model preset 'tiny': it uses `world` models but has no `world:` section"):
        world_spec(load_preset("tiny"), "tiny")


def test_the_tiny_preset_folder_is_keyed_as_before():
    """Its name in the cache is the one it had before the builders moved to testbed/: caches are reused."""
    assert random_preset_name(TINY_MODEL_SEED, load_preset("tiny").image_size) == "tiny-f7c71e764ad8"


def test_a_world_section_is_fingerprinted_with_its_defaults_filled_in(tmp_path):
    """A section that leaves a size to its default names the same dataset as one that writes it out
    (as when the preset's schema held the world's, so fingerprints are unchanged by the move)."""
    written = yaml.safe_load((CONFIG_DIR / "presets" / "world.yaml").read_text())["world"]
    filled = WorldSpec(**written).model_dump(mode="json")
    configs = [run_config(vocab="shapes", out=str(tmp_path / "out"), models=world_preset(tmp_path, world), seed=0,
                          device="cpu") for world in (written, filled)]  # one file, rewritten: one preset name
    assert written != filled and configs[0].preset.world == configs[1].preset.world == filled
    assert configs[0].fingerprint() == configs[1].fingerprint()
