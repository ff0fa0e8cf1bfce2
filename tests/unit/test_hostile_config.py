"""Hostile configs (issue 18): YAML files, vocabularies and model presets that cannot be used are refused
with one line naming the file and the entry, before a run claims its output folder."""

from types import SimpleNamespace

import pytest

from pipeline.config import CONFIG_DIR, ConfigError, RunConfig, load_preset
from pipeline.runtime import Runtime
from stages.errors import DatagenError
from stages.vocab import VocabularyError, load_vocabulary
from testbed.random_presets import SD15_SD, TINY_SD
from testbed.world.spec import WORLD_ARCH

NOT_A_MAPPING = [  # (file bytes, what the line says)
    (b"- a\n- b\n", "holds a list, not a mapping"),
    (b"", "holds nothing, not a mapping"),
    (b"3\n", "holds only '3', not a mapping"),
    (b"\x00\xff\xfe\x89PNG", "is not a text file"),
    (b"a: [\n", "is not valid YAML (line 2, column 1"),
    (b"a: b: c\n", "is not valid YAML (line 1, column 5"),
]


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("content, message", NOT_A_MAPPING)
@pytest.mark.parametrize("kind", ["preset", "vocabulary"])
def test_a_yaml_file_that_is_not_a_mapping_is_one_line_naming_it(tmp_path, kind, content, message):
    path = tmp_path / f"bad-{kind}.yaml"
    path.write_bytes(content)
    load, error = (load_preset, ConfigError) if kind == "preset" else (load_vocabulary, VocabularyError)
    with pytest.raises(error) as raised:
        load(str(path))
    assert message in one_line(raised.value) and str(path) in str(raised.value)


BAD_VOCABULARIES = [  # (YAML, what the line says)
    ("classes: [a, b]\nunseen: 3\n", "unseen must be a list of names, not 3"),
    ("classes: [a, b]\nunseen: [[a]]\n", "unseen entry must be a name (a text), not ['a']"),
    ("classes: [a, b]\nunseen: [c]\n", "unseen classes not in the class list: ['c']"),
    ("classes: [{name: a, synonyms: 3}, b]\n", "class #1 'a': synonyms must be a list of names, not 3"),
    ("classes: [{name: a, synonyms: [[x]]}, b]\n", "synonyms entry must be a name (a text), not ['x']"),
    ("classes: [{name: a, synonyms: x}, b]\n", "synonyms must be a list of names, not 'x'"),
    ("classes: [{name: a, detector: [x]}, b]\n", "detector must be a name (a text), not ['x']"),
    ("classes: [{name: a, synonym: [x]}, b]\n", "class #1 has unknown keys ['synonym']"),
    ("classes: [a, b]\ntemplate: ['a {}']\n", "unknown keys ['template']"),
    ("classes: [a, b]\ntemplates: ['a {} and {}']\n", "'a {} and {}' must hold exactly 1 '{}' placeholder"),
    ("classes: [a, b]\ntemplates: 'a photo of {}'\n", "templates must be a non-empty list of texts, not 'a photo"),
    ("classes: [a, b]\ntemplates: []\n", "templates must be a non-empty list"),
    ("classes: [a, b]\ntemplates: ['a photo']\n", "'a photo' must hold exactly 1 '{}' placeholder"),
    ("classes: [a, b]\ntemplates: ['a {name}']\n", "'a {name}' must hold exactly 1 '{}' placeholder"),
    ("classes: [a, b]\ntemplates: ['a {']\n", "templates entry 'a {'"),
    ("classes: [a, b]\npair_templates: ['a {}']\n", "'a {}' must hold exactly 2 '{}' placeholders"),
    ("classes: [a, b]\ntext_template: 3\n", "text_template entry 3 is not a text"),
    ("classes: [background, a]\n", "class #1 is named 'background': 'background' is id 0 of every mask"),
    ("classes: [a, Back Ground]\n", "class #2 is named 'Back Ground'"),
    ("classes: ['potted plant', pottedplant]\n", "classes 'potted plant' and 'pottedplant' are one name"),
    ("classes: [Dog, dog]\n", "classes 'Dog' and 'dog' are one name"),
    ("classes: [dog, dog]\n", "repeats a class name"),
    ('classes: ["a\\nb", c]\n', "class #1 'a\\nb' holds a line break or control character"),
    ("classes: ['a|b', c]\n", "class #1 'a|b' holds '|'"),
    ("classes: [1, 2]\n", "class #1 must be a name (a text), not 1"),
    ("classes: ['', a]\n", "class #1 must be a name (a text), not ''"),
    ("classes: ['!!', a]\n", "class #1 '!!' has no letter or digit"),
    ("classes: {a: 1}\n", "has no 'classes' list"),
    ("classes: []\n", "has no 'classes' list"),
    ("name: [x]\nclasses: [a]\n", "name must be a text, not ['x']"),
]


@pytest.mark.parametrize("text, message", BAD_VOCABULARIES)
def test_a_vocabulary_a_run_could_not_use_is_refused_naming_the_entry(tmp_path, text, message):
    path = tmp_path / "vocab.yaml"
    path.write_text(text)
    with pytest.raises(VocabularyError) as raised:
        load_vocabulary(path)
    assert message in one_line(raised.value) and str(path) in str(raised.value)


def test_a_good_vocabulary_with_every_key_still_loads(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_text("name: mine\ntemplates: ['a {}', 'the {}']\npair_templates: ['a {} and a {}']\n"
                    "text_template: 'a photo of a {}'\nunseen: [sofa]\n"
                    "classes: [dog, {name: sofa, detector: couch, synonyms: [settee]}, hair drier]\n")
    vocab = load_vocabulary(path)
    assert [c.name for c in vocab.classes] == ["dog", "sofa", "hair drier"] and vocab["sofa"].prompt_name == "settee"
    assert vocab.templates == ("a {}", "the {}") and not vocab["sofa"].seen


BAD_PRESETS = [  # (overrides of the tiny preset, what the line says)
    ({"capture_step": 11}, "capture_step 11 is beyond the 10 steps"),
    ({"guidance": float("nan")}, "guidance.oracle: Input should be a finite number"),
    ({"guidance": float("inf")}, "guidance.oracle: Input should be a finite number"),
    ({"guidance": {"oracle": 5.0, "label": float("-inf")}}, "guidance.label: Input should be a finite number"),
    ({"oracle_score_threshold": float("nan")}, "oracle_score_threshold: Input should be a finite number"),
    ({"train": {"lr": float("nan")}}, "train.lr: Input should be a finite number"),
    ({"min_mask_fraction": float("nan")}, "min_mask_fraction: Input should be a finite number"),
    ({"attention": {"threshold": float("nan")}}, "attention.threshold.float: Input should be a finite number"),
    ({"attention": {"threshold": 0.6, "uncertain": float("inf")}}, "attention.uncertain: Input should be a finite"),
    ({"attention": {"steps": [0.95, 1.0]}}, "attention.steps [0.95, 1.0] select none of the 10 sampling steps"),
]


@pytest.mark.parametrize("overrides, message", BAD_PRESETS)
def test_a_preset_is_validated_whole_on_loading(overrides, message):
    with pytest.raises(ConfigError) as raised:
        load_preset("tiny", overrides)
    assert message in one_line(raised.value) and "model preset 'tiny'" in str(raised.value)


def test_a_nested_section_of_the_wrong_type_is_named_not_merged(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text((load_preset_text() + "\ntrain: 3\n"))
    with pytest.raises(ConfigError, match="train: Input should be a valid dictionary"):
        load_preset(str(path), {"train": {"steps": 5}})


def load_preset_text() -> str:
    return "\n".join(line for line in (CONFIG_DIR / "presets" / "tiny.yaml").read_text().splitlines()
                     if not line.startswith("train:"))


BAD_SIZES = [  # (tiny preset overrides, what the line says): the tiny models downsample 4x (VAE) and 2x twice (UNet)
    ({"image_size": 7}, "image_size 7 is not a multiple of 16"),
    ({"image_size": 8}, "image_size 8 is not a multiple of 16"),
    ({"image_size": 33}, "image_size 33 is not a multiple of 16"),
    ({"grounding": {"reduce_channels": [8, 16]}}, "reduce_channels has 2 entries"),
    ({"grounding": {"reduce_channels": [8, 16, 32], "patch_size": 3}}, "patch_size 3 does not divide"),
    ({"grounding": {"reduce_channels": [8, 16, 32], "width": 60}}, "width 60 is not divisible by heads 8"),
]


@pytest.mark.parametrize("overrides, message", BAD_SIZES)
def test_preset_sizes_that_do_not_fit_the_models_are_refused_before_any_work(tmp_path, tiny_pipe, overrides,
                                                                           message):
    preset = load_preset("tiny", overrides)
    runtime = Runtime(RunConfig(vocab="voc", out=tmp_path / "out", preset_name="tiny", preset=preset, n=1))
    runtime.__dict__["pipe"] = tiny_pipe  # the models' downsampling does not depend on the size they were built at
    with pytest.raises(ConfigError) as raised:
        runtime.check_preset()
    assert message in one_line(raised.value) and "model preset 'tiny'" in str(raised.value)
    assert not (tmp_path / "out").exists()


# Each packaged preset's model architecture (what check_preset reads of it): the tiny preset's as built,
# SD 1.5's config.json written out, the miniature world's; a new preset without an entry fails below.
ARCHITECTURES = {"tiny": TINY_SD, "sd15": SD15_SD, "world": WORLD_ARCH}


def architecture_of(arch: dict) -> SimpleNamespace:
    """What ``Runtime.check_preset`` reads of a loaded pipeline, from an architecture's configs (SD 1.5's
    weights are not on these machines, and its random-weight build takes minutes)."""
    vae_levels = len(arch["vae"]["block_out_channels"])
    return SimpleNamespace(vae_scale_factor=2 ** (vae_levels - 1),
                           unet=SimpleNamespace(config=SimpleNamespace(**arch["unet"])))


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml")))
def test_the_packaged_presets_fit_their_models(tmp_path, tiny_pipe, name):
    runtime = Runtime(RunConfig(vocab="voc", out=tmp_path, preset_name=name, preset=load_preset(name), n=1))
    runtime.__dict__["pipe"] = architecture_of(ARCHITECTURES[name])
    runtime.check_preset()  # no error
    tiny = architecture_of(TINY_SD)  # the stand-in holds what the loaded models hold
    assert (tiny.vae_scale_factor, tuple(tiny.unet.config.block_out_channels)) == \
        (tiny_pipe.vae_scale_factor, tuple(tiny_pipe.unet.config.block_out_channels))
    assert issubclass(VocabularyError, DatagenError) and issubclass(ConfigError, DatagenError)
