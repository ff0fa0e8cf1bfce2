"""No silent wrong answers: commands on a dataset take its vocabulary and model preset from its manifest,
refuse a flag that names another, and never overwrite a report made with other settings."""

import json

import pytest

TRIES = {  # a command on the dataset folder, with the flag that names another vocabulary or preset
    "eval grounding": lambda out, tmp: ["eval", "grounding", "--out", out],
    "eval labels": lambda out, tmp: ["eval", "labels", "--real", tmp, "--out", out],
    "label": lambda out, tmp: ["label", "--n", "16", "--out", out],
    "generate": lambda out, tmp: ["generate", "--n", "16", "--out", out],
    "train": lambda out, tmp: ["train", "--n", "16", "--out", out],
    "run": lambda out, tmp: ["run", "--n", "16", "--out", out],
    "train-annotated": lambda out, tmp: ["train-annotated", "--data", tmp, "--out", out],
}


@pytest.mark.parametrize("command", TRIES)
@pytest.mark.parametrize("flag, theirs, ours", [("--vocab", "voc", "coco"), ("--models", "tiny", "sd15")])
def test_a_flag_naming_another_vocabulary_or_preset_is_refused_naming_both(datagen, copy, tmp_path, command,
                                                                           flag, theirs, ours):
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = datagen(*TRIES[command](copy, tmp_path), flag, ours)
    assert result.returncode == 2
    assert f"{flag} {ours}, but --out {copy} was made with {flag} {theirs}" in result.one_line()
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_eval_zs3_takes_the_synthetic_datasets_vocabulary_and_refuses_another(datagen, copy, tmp_path):
    result = datagen("eval", "zs3", "--real", tmp_path, "--synthetic", copy, "--vocab", "voc-split1",
                     "--out", tmp_path / "zs3")
    assert result.returncode == 2
    assert f"--vocab voc-split1, but --synthetic {copy} was made with --vocab voc" in result.one_line()


def test_eval_grounding_scores_with_the_datasets_settings_and_keeps_a_report_of_others(datagen, copy):
    first = datagen("eval", "grounding", "--out", copy, "--n", "2", "--batch-size", "2", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    path = copy / "eval" / "protocol1.json"
    report = json.loads(path.read_text())
    assert (report["vocab"], report["preset"]) == ("voc", "tiny") and len(report["classes"]) == 20
    written = path.read_bytes()

    other = datagen("eval", "grounding", "--out", copy, "--n", "2", "--batch-size", "2", "--labeler", "attention")
    assert other.returncode == 2
    assert f"{path} holds a report made with other settings (labelers grounding, this run attention)" in \
        other.one_line()
    assert path.read_bytes() == written


def test_a_phase_command_without_vocab_or_models_resumes_the_dataset_it_finds(datagen, copy):
    made = ["--bootstrap-n", "4", "--train-steps", "3", "--shard-size", "4", "--batch-size", "2", "--seed", "3"]
    result = datagen("label", "--n", "16", *made, "--out", copy)  # tiny_dataset's flags but --vocab and --models
    assert result.returncode == 0, result.stderr
    assert "dataset is complete" in result.stderr
