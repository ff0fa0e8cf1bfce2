import pytest

from pipeline.config import ConfigError, resolve_vocabulary
from stages.prompts import prompt_for, prompt_spec, prompt_specs
from stages.vocab import VocabularyError, fill_template, load_vocabulary


def test_packaged_vocabularies_have_the_papers_splits():
    voc, split1, coco = (resolve_vocabulary(n) for n in ("voc", "voc-split1", "coco"))
    assert (len(voc.classes), len(voc.seen)) == (20, 15)
    assert {c.name for c in voc.unseen} == {"pottedplant", "sheep", "sofa", "train", "tvmonitor"}
    assert {c.name for c in split1.unseen} == {"tvmonitor", "car", "dog", "sofa", "train"}
    assert (len(coco.classes), len(coco.seen)) == (80, 65)
    assert "hair drier" in {c.name for c in coco.unseen}
    assert voc["sofa"].detector_name == "couch" and voc["tvmonitor"].prompt_name == "tv monitor"
    assert [c.id for c in voc.classes] == list(range(1, 21))


def test_user_vocabulary_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("classes: [dog, {name: sofa, detector: couch}]\nunseen: [sofa]\n")
    vocab = resolve_vocabulary(str(path))
    assert [c.name for c in vocab.seen] == ["dog"] and vocab["sofa"].detector_name == "couch"


@pytest.mark.parametrize("text, message", [
    ("classes: []", "no 'classes'"),
    ("classes: [dog, dog]", "repeats"),
    ("classes: [dog]\nunseen: [cat]", "not in the class list"),
])
def test_bad_vocabulary_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary(path)


def test_unknown_vocabulary_name():
    with pytest.raises(ConfigError, match="unknown vocabulary 'vok'"):
        resolve_vocabulary("vok")


def test_prompts_are_deterministic_and_independent_of_the_range(voc):
    a = prompt_specs(voc, voc.classes, "label", 7, range(0, 50))
    b = prompt_specs(voc, voc.classes, "label", 7, range(20, 30))
    assert a[20:30] == b
    assert prompt_specs(voc, voc.classes, "label", 8, range(0, 50)) != a
    assert len({s.seed for s in a}) == 50


def test_prompts_use_templates_and_only_the_given_classes(voc):
    specs = prompt_specs(voc, voc.seen, "oracle", 0, range(200))
    seen = {c.name for c in voc.seen}
    assert all(set(s.classes) <= seen for s in specs)
    pairs = [s for s in specs if len(s.classes) == 2]
    assert 60 < len(pairs) < 140 and all(s.classes[0] != s.classes[1] for s in pairs)
    one = prompt_spec(voc, (voc["pottedplant"],), "label", 0, 0)
    assert one.prompt == "a photograph of a potted plant"


@pytest.mark.parametrize("vocab_name, name, prompt", [
    ("coco", "umbrella", "a photograph of an umbrella"),
    ("coco", "airplane", "a photograph of an airplane"),
    ("coco", "oven", "a photograph of an oven"),
    ("coco", "hair drier", "a photograph of a hair drier"),
    ("coco", "tv", "a photograph of a tv"),
    ("voc", "aeroplane", "a photograph of an aeroplane"),
    ("voc", "tvmonitor", "a photograph of a tv monitor"),
])
def test_prompts_take_the_article_of_the_class_names_first_sound(vocab_name, name, prompt):
    vocab = resolve_vocabulary(vocab_name)
    assert prompt_spec(vocab, (vocab[name],), "label", 0, 0).prompt == prompt


def test_pair_prompts_give_each_class_its_article():
    coco = resolve_vocabulary("coco")
    specs = prompt_specs(coco, coco.classes, "label", 0, range(300), pair_fraction=1.0)
    assert all(" a umbrella" not in s.prompt and " an dog" not in s.prompt for s in specs)
    pair = next(s for s in specs if s.classes[1] == "umbrella")
    assert pair.prompt.endswith(" and an umbrella")
    assert prompt_for(coco, ["apple", "dog", "orange"]) == "a photograph of an apple and a dog and an orange"


@pytest.mark.parametrize("template, names, text", [
    ("a photograph of a {}", ["hour glass"], "a photograph of an hour glass"),  # silent h
    ("A {} and an {}", ["unicorn", "elephant"], "A unicorn and an elephant"),  # a vowel letter read /j/
    ("a/an {} beside a/an {}", ["one-way sign", "owl"], "a one-way sign beside an owl"),
    ("{} in a field", ["apple"], "apple in a field"),  # an article not before a placeholder is the template's
    ("a {{literal}} {}", ["ant"], "a {literal} ant"),  # 'a {{' is no article of a class
])
def test_templates_get_the_right_article(template, names, text):
    assert fill_template(template, names) == text
