"""ZS3 data: VOC and COCO readers, names mapped through the vocabulary, synthetic shards, augmentation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from zs3_fixtures import CLASSES, corrupt_member, make_synthetic, make_voc

from pipeline.dataset.labels import name_index
from pipeline.evaluate.zs3.config import load_segmenter_preset
from pipeline.evaluate.zs3.real import coco_split, voc_split
from pipeline.evaluate.zs3.synthetic import check_synthetic, synthetic_stream, synthetic_urls, vocabulary_mask
from pipeline.evaluate.zs3.train import Processes, training_batches
from pipeline.evaluate.zs3.transforms import eval_transform, train_transform
from stages.errors import DataError
from stages.vocab import load_vocabulary

VOC_TO_VOCAB = {1: 1, 7: 7, 15: 15, 17: 17}  # the voc vocabulary keeps VOC's order for these four


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc") / "VOC2012", n_train=4, n_val=2)


def raw_mask(root, split, i):
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    return np.array(Image.open(root / "SegmentationClass" / f"{ids[i]}.png"))


def test_voc_masks_keep_labels_and_borders(voc_root, voc):
    val = voc_split(voc_root, "val", voc, eval_transform())
    image, mask = val[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    np.testing.assert_array_equal(mask.numpy(), raw_mask(voc_root, "val", 0))
    assert 255 in mask and set(mask.unique().tolist()) - {0, 255} <= set(CLASSES)


def test_real_seen_training_ignores_unseen_pixels(voc_root, voc):
    unseen = frozenset(c.id for c in voc.unseen)
    train = voc_split(voc_root, "train", voc, eval_transform(), ignored_ids=unseen)
    for i in range(len(train)):
        raw, mask = raw_mask(voc_root, "train", i), train[i][1].numpy()
        np.testing.assert_array_equal(mask[raw == 17], 255)  # sheep is unseen in the voc split
        np.testing.assert_array_equal(mask[raw != 17], raw[raw != 17])


def test_classes_are_matched_by_name_not_position(voc_root, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nunseen: [sheep]\nclasses: [sheep, {name: airplane, synonyms: [aeroplane]}]\n")
    two = load_vocabulary(path)
    mask = voc_split(voc_root, "val", two, eval_transform())[0][1].numpy()
    raw = raw_mask(voc_root, "val", 0)
    np.testing.assert_array_equal(mask[raw == 17], 1)   # sheep is class 1 of this vocabulary
    np.testing.assert_array_equal(mask[raw == 1], 2)    # VOC's aeroplane is its 'airplane'
    np.testing.assert_array_equal(mask[np.isin(raw, [7, 15])], 255)  # VOC classes it lacks are ignored


def test_vocabulary_class_missing_from_the_dataset_is_refused(voc_root, tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("classes: [sheep, unicorn]\n")
    with pytest.raises(DataError, match="no class named unicorn"):
        voc_split(voc_root, "val", load_vocabulary(path), eval_transform())


def test_missing_split_and_files_are_refused(voc_root, voc, tmp_path):
    with pytest.raises(DataError, match="no list file"):
        voc_split(voc_root, "trainval", voc, eval_transform())
    broken = make_voc(tmp_path / "VOC", n_train=2, n_val=1)
    (broken / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        voc_split(broken, "val", voc, eval_transform())


def test_coco_instances_become_a_semantic_mask(tmp_path, voc):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "val2017" / "1.jpg")

    def box(ann_id, cat, x, y, w, h, crowd=0):
        poly = [x, y, x + w, y, x + w, y + h, x, y + h]
        return {"id": ann_id, "image_id": 1, "category_id": cat, "segmentation": [poly], "area": w * h,
                "bbox": [x, y, w, h], "iscrowd": crowd}

    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "height": 40, "width": 50}],
        "categories": [{"id": i, "name": n} for i, n in enumerate(
            ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat", "dog",
             "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv",
             "giraffe"], start=1)],
        "annotations": [box(1, 5, 0, 0, 30, 30), box(2, 13, 10, 10, 10, 10), box(3, 21, 40, 0, 10, 10),
                        box(4, 1, 0, 32, 10, 8, crowd=1)]}))
    _, mask = coco_split(tmp_path, "val2017", voc, eval_transform())[0]
    mask = mask.numpy()
    assert mask[5, 5] == voc["aeroplane"].id          # COCO 'airplane' through the detector name
    assert mask[14, 14] == voc["sheep"].id            # the smaller instance stays on top
    assert mask[5, 45] == 255                         # giraffe is not in the vocabulary
    assert mask[35, 5] == 255                         # crowd region
    assert mask[35, 30] == 0


def test_synthetic_ids_are_mapped_by_the_sample_names(voc):
    seg = np.array([[0, 3], [5, 9]], np.uint8)
    mask = vocabulary_mask(seg, {"classes": ["sheep", "dining table"], "class_ids": [3, 5]}, name_index(voc))
    np.testing.assert_array_equal(mask, [[0, voc["sheep"].id], [voc["diningtable"].id, 255]])


def test_synthetic_stream_reads_the_shards_endlessly_with_augmentation(tmp_path, voc):
    out = make_synthetic(tmp_path / "syn", shards=2, per_shard=3)
    urls = synthetic_urls(str(out))
    assert len(urls) == 2 and check_synthetic(urls, voc, str(out))["classes"]
    preset = load_segmenter_preset("tiny")
    stream = iter(synthetic_stream(urls, voc, train_transform(preset), seed=0, buffer=4))
    pairs = [next(stream) for _ in range(10)]  # more than the 6 samples: a second pass
    for image, mask in pairs:
        assert image.shape == (3, preset.crop_size, preset.crop_size) and mask.shape == (preset.crop_size,) * 2
        assert set(mask.unique().tolist()) <= {0, 255, 1, 7, 15, 17}


def test_a_corrupt_synthetic_sample_stops_training_with_one_line_naming_shard_and_key(tmp_path, voc):
    out = make_synthetic(tmp_path / "syn", shards=2, per_shard=3)
    urls = synthetic_urls(str(out))
    corrupt_member(out / "data" / "shard-000001.tar", "000000000004")
    check_synthetic(urls, voc, str(out))  # the first sample is fine: the damage shows during training
    preset = load_segmenter_preset("tiny", {"workers": 1, "batch_size": 2})  # read in a DataLoader worker
    stream = synthetic_stream(urls, voc, train_transform(preset), seed=0, buffer=0)
    batches = training_batches(None, stream, preset, Processes(0, 1, torch.device("cpu")), seed=0)
    with pytest.raises(DataError) as err:
        for _ in range(4):
            next(batches)
    assert len(str(err.value).splitlines()) == 1
    assert "shard-000001.tar" in str(err.value) and "000000000004" in str(err.value)


def test_synthetic_shards_can_be_listed_in_a_text_file_or_a_brace_pattern(tmp_path):
    out = make_synthetic(tmp_path / "syn", shards=2, per_shard=1)
    shards = synthetic_urls(str(out))
    listing = tmp_path / "shards.txt"
    listing.write_text("\n".join(shards) + "\n\n")
    assert synthetic_urls(str(listing)) == shards
    pattern = shards[0].replace("shard-000000", "shard-{000000..000001}")
    assert synthetic_urls(pattern) == shards
    listing.write_text("")
    with pytest.raises(DataError, match="lists no shards"):
        synthetic_urls(str(listing))


def test_empty_or_missing_synthetic_data_is_refused(tmp_path, voc):
    with pytest.raises(DataError, match="no such folder"):
        synthetic_urls(str(tmp_path / "nothing"))
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(DataError, match="no finished shards"):
        synthetic_urls(str(tmp_path / "empty"))
    from pipeline.dataset.shards import write_shard
    write_shard(tmp_path / "empty" / "data", 0, [], {"written": 0})
    with pytest.raises(DataError, match="hold no samples"):
        check_synthetic(synthetic_urls(str(tmp_path / "empty")), voc, str(tmp_path / "empty"))


def test_augmentation_pads_with_ignore_and_keeps_labels_on_their_pixels():
    preset = load_segmenter_preset("tiny", {"base_size": 24, "scale_range": (1.0, 1.0), "crop_size": 40})
    image = np.zeros((24, 24, 3), np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    image[:, 12:] = 255
    mask[:, 12:] = 9
    out_image, out_mask = train_transform(preset)(image, mask)
    assert (out_mask == 255).sum() == 40 * 40 - 24 * 24
    bright = out_image[0] > 0.5
    assert bool((out_mask[bright] == 9).all()) and bool((out_mask[(~bright) & (out_mask != 255)] == 0).all())
