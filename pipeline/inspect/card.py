"""The dataset card (README.md in the output folder): what made the data, what it holds, how to load it."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.dataset.atomic import write_text_atomic
from pipeline.dataset.checkpoint import grounding_installed
from pipeline.dataset.layout import DATA_DIR, GROUNDING_DIR, WIDS_INDEX, Phase
from pipeline.dataset.location import location
from pipeline.dataset.provenance import file_sha256
from pipeline.dataset.shards import finished_shards
from pipeline.dataset.zero_shot import LABELS, dataset_zero_shot, describe
from pipeline.inspect.card_metadata import front_matter
from pipeline.inspect.folder import DatasetFolder
from pipeline.inspect.stats import dataset_stats


def _model(record: dict | None, fallback: str) -> str:
    if not record:
        return f"`{fallback}`"
    pin = record.get("revision") and f"revision `{record['revision']}`" or f"sha256 `{record.get('sha256')}`"
    return f"`{record['source']}`, {pin}"


def _oracle(record: dict | None, fallback: str) -> str:
    """The oracle's row: backend, config, weights."""
    record = record or {}
    config = record.get("config")
    config = f" `{config['source']}` (sha256 `{config['sha256']}`)" if config else ""
    return f"`{record.get('backend')}`{config}, weights {_model(record or None, fallback)}"


def _grounding(out: Path) -> str:
    weights, training = out / GROUNDING_DIR / "model.safetensors", out / GROUNDING_DIR / "training.json"
    if not grounding_installed(out):
        return "none"
    line = f"`{GROUNDING_DIR}/model.safetensors`, sha256 `{file_sha256(weights)}`"
    if training.exists():
        t = json.loads(training.read_text())
        source = {"oracle": "oracle shards", "annotated": f"annotated images `{t.get('root')}`"}.get(t.get("source"))
        line += f"; trained {t['steps']} steps{f' on {source}' if source else ''}, loss {t['first_loss']:.4f} -> " \
                f"{t['last_loss']:.4f}"
        if t.get("train_on_unseen"):
            line += ", unseen classes as targets (`--train-on-unseen`)"
    return line


def _labeler(labels: dict) -> str:
    """The card's table row for the labeler, as the manifest's ``labels`` records it."""
    details = labels.get("card", {}).get("details")
    return f"| labeler | `{labels.get('labeler')}`{': ' + details if details else ''} |"


def _zero_shot(out: Path, manifest: dict) -> tuple[str, str]:
    """The card's warning (empty when zero-shot) and its table row."""
    status = dataset_zero_shot(out, manifest)
    labels = manifest.get(LABELS, {})
    sources = ", ".join(sorted({str(c.get("source")) for c in labels.get("grounding", [])})) or "not recorded"
    origin = f"labelled by checkpoints trained on: {sources}" if labels.get("trained") else \
        f"nothing trained: the {labels.get('labeler')} labeler"
    row = f"| zero-shot labels | {'yes' if status else '**no**' if status is False else 'unknown'}: " \
          f"{describe(status)} ({origin}) |"
    warning = f"\n> **{describe(status)}.**\n" if status is False else ""
    return warning, row


def card_text(out: Path, manifest: dict, classes: list[dict]) -> str:
    out = location(out)
    ds = DatasetFolder(out, manifest, classes, out / DATA_DIR, Phase.LABEL, finished_shards(out / DATA_DIR))
    stats = dataset_stats(ds)
    config, preset, code = manifest["config"], manifest["config"]["preset"], manifest.get("code", {})
    models, sources = manifest.get("model_revisions", {}), manifest.get("models", {})
    commit = f", git `{code['git_commit']}`{' (uncommitted changes)' if code.get('git_dirty') else ''}" \
        if code.get("git_commit") else ""
    tiny = ("\n> Made with the offline `tiny` preset: random weights. Its images are noise and its masks mean "
            "nothing;\n> it proves the code paths, not quality.\n" if config["preset_name"] == "tiny" else "")
    s, sh = stats["samples"], stats["shards"]
    failures = ", ".join(f"{k}: {v}" for k, v in stats["failures"].items()) or "none"
    rows = "\n".join(f"| {c['id']} | {c['name']} | {c['split']} | {c['instances']} | {c['pixel_share']:.2%} |"
                     for c in stats["classes"])
    last = max(sh["count"] - 1, 0)
    preset_json = json.dumps(preset, sort_keys=True)
    labels = manifest.get(LABELS, {})
    warning, zero_shot_row = _zero_shot(out, manifest)
    oracle = _oracle(models.get('oracle'), sources.get('oracle', '?')) if sources.get('oracle', '?') else "not used"
    return front_matter(out.name, config["preset_name"], classes, s["written"]) + f"""# datagen dataset `{out.name}`

{labels.get("card", {}).get("opening", "Synthetic semantic segmentation data made by datagen.")}
{warning}{tiny}
## What made it

| | |
|---|---|
| code | datagen {code.get('datagen', manifest.get('packages', {}).get('datagen', '?'))}{commit} |
| Stable Diffusion | {_model(models.get('stable_diffusion'), sources.get('stable_diffusion', '?'))} |
| Mask R-CNN oracle | {oracle} |
{_labeler(labels)}
| grounding module | {_grounding(out)} |
{zero_shot_row}
| model preset | `{config['preset_name']}` |
| vocabulary | `{manifest['vocabulary'].get('name')}`: {stats['splits']['seen']['classes']} seen, \
{stats['splits']['unseen']['classes']} unseen classes |
| seed | {config['seed']} |
| config fingerprint | `{manifest.get('fingerprint')}` |
| packages | {', '.join(f'{k} {v}' for k, v in sorted(manifest.get('packages', {}).items()))} |

Preset settings: `{preset_json}`. The whole resolved config is in `manifest.json`.

## What it holds

- {s['written']} samples written of {s['planned']} planned, in {sh['count']} shards under `{DATA_DIR}/`
  ({sh['total_mb']} MB, about {sh['mb_per_sample']} MB per sample); {s['filtered']} filtered and
  {s['errored']} errored: {failures}
- images {preset['image_size']}x{preset['image_size']} `{config['image_format']}`; `seg.png` is a one-channel
  uint8 class-index mask of the same size (0 background, 255 ignore); `json` has the prompt, class
  names and ids, seed, instances as COCO RLE (ASCII counts) and provenance
- pixels: {stats['background_pixel_share']:.2%} background (0), {stats['ignore_pixel_share']:.2%} ignore (255); \
seen classes {stats['splits']['seen']['pixel_share']:.2%}, \
unseen {stats['splits']['unseen']['pixel_share']:.2%}
- `{DATA_DIR}/{WIDS_INDEX}` is the wids shard index; `classes.json` maps ids to names and splits

| id | class | split | instances | pixel share |
|---:|---|---|---:|---:|
{rows}

## How to load it

```python
import torch                                       # datagen's readers: images, class-id masks, metas
from pipeline.dataset.reader import collate, open_dataset, training_dataset, wids_dataset
loader = torch.utils.data.DataLoader(training_dataset("."), batch_size=8, num_workers=4, collate_fn=collate)
for images, masks, metas in loader:                # uint8 (B, 3, H, W), int64 (B, H, W) class ids, B dicts
    ...

import webdataset as wds                           # plain webdataset (decode seg.png yourself:
ds = wds.WebDataset("data/shard-{{000000..{last:06d}}}.tar", shardshuffle=False)  # its image decoders make RGB)

import wids                                        # random access through the index
ds = wids.ShardListDataset("data/{WIDS_INDEX}")

import datasets, os                                # Hugging Face datasets: the front matter names data/*.tar
ds = datasets.load_dataset(os.path.abspath("."), split="train")  # or the Hub repo's id, once uploaded
ds[0]["jpg"], ds[0]["seg.png"], ds[0]["json"]["prompt"]          # PIL RGB, PIL mode L (class ids), str

import ray, glob                                   # Ray Data
ds = ray.data.read_webdataset(sorted(glob.glob("data/shard-*.tar")))
```

Never decode these shards with decoders that unpickle (`.pyd`/`.pickle` members): datagen writes none,
and `datagen validate` rejects shards that hold any. `datagen stats .` and `datagen show .` summarise
and picture the data.
"""


def write_card(out: Path) -> None:
    """Write the dataset card (README.md in the output folder) from the manifest and the shards' stats."""
    manifest = json.loads((out / "manifest.json").read_text())
    classes = json.loads((out / "classes.json").read_text())["classes"]
    write_text_atomic(out / "README.md", card_text(out, manifest, classes))
