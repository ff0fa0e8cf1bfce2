"""The ZS3 report: JSON for programs, a rich table for people (also saved as text)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.dataset.atomic import write_json_atomic, write_text_atomic
from pipeline.dataset.zero_shot import combine
from pipeline.evaluate.zs3.modes import MODES
from stages.metrics import zs3_scores
from stages.vocab import Vocabulary

LOSS_WINDOW = 5  # steps averaged for the first and last training loss (fewer on short runs: never overlapping)


def class_rows(vocabulary: Vocabulary) -> list[tuple[int, str, bool]]:
    """(id, name, seen) for background (a seen class: it is learned in every mode) and each class."""
    return [(0, "background", True), *((c.id, c.name, c.seen) for c in vocabulary.classes)]


def loss_summary(losses: list[float]) -> dict:
    """Steps, the mean loss of the first and of the last ``window`` steps, and every loss. The two windows
    never share a step (``window`` = ``LOSS_WINDOW``, or half the steps when there are fewer than twice
    as many), so equal numbers mean the loss did not change; one step has no last loss (None)."""
    window = min(LOSS_WINDOW, len(losses) // 2)
    if window == 0:
        return {"steps": len(losses), "loss_window": len(losses), "first_loss": losses[0] if losses else None,
                "last_loss": None, "losses": losses}
    return {"steps": len(losses), "loss_window": window, "first_loss": float(np.mean(losses[:window])),
            "last_loss": float(np.mean(losses[-window:])), "losses": losses}


def build_report(conf: np.ndarray, vocabulary: Vocabulary, mode: str, losses: list[float], context: dict) -> dict:
    rows = class_rows(vocabulary)
    scores = zs3_scores(conf, [seen for _, _, seen in rows])
    conf = np.asarray(conf)
    return {
        "mode": mode,
        "mode_description": MODES[mode],
        "vocabulary": vocabulary.name,
        "metrics": {k: scores[k] for k in ("miou_seen", "miou_unseen", "hiou", "miou", "pixel_accuracy")},
        "classes": [{"id": i, "name": name, "split": "seen" if seen else "unseen", "iou": iou,
                     "gt_pixels": int(conf[i].sum()), "predicted_pixels": int(conf[:, i].sum())}
                    for (i, name, seen), iou in zip(rows, scores["iou"], strict=True)],
        "absent_classes": [name for (_, name, _), iou in zip(rows, scores["iou"], strict=True) if iou is None],
        "training": loss_summary(losses),
        "confusion_matrix": conf.tolist(),
        **context,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def report_table(report: dict) -> Table:
    m = report["metrics"]
    table = Table(title=f"ZS3 ({report['vocabulary']}, {report['mode']}): mIoU seen {_pct(m['miou_seen'])}  "
                        f"unseen {_pct(m['miou_unseen'])}  hIoU {_pct(m['hiou'])}  (all {_pct(m['miou'])}, "
                        f"pixel acc. {_pct(m['pixel_accuracy'])})",
                  caption=report["mode_description"] + _zero_shot_caption(report))
    for column, justify in (("id", "right"), ("class", "left"), ("split", "left"), ("IoU %", "right"),
                            ("GT pixels", "right"), ("predicted", "right")):
        table.add_column(column, justify=justify)
    for c in report["classes"]:
        table.add_row(str(c["id"]), c["name"], c["split"], _pct(c["iou"]), str(c["gt_pixels"]),
                      str(c["predicted_pixels"]))
    return table


def zero_shot_note(synthetic_labels: dict[str, bool | None] | None) -> tuple[bool | None, str]:
    """Whether the unseen scores are zero-shot, and one line saying why. Real training images always have
    their unseen pixels ignored; ``synthetic_labels`` (None without synthetic data) maps each synthetic
    dataset to whether its labels are zero-shot (``pipeline.dataset.zero_shot.shards_zero_shot``)."""
    if synthetic_labels is None:
        return True, "zero-shot: unseen-class pixels of the real training images are ignored"
    status = combine(synthetic_labels.values())
    if status is False:
        tainted = ", ".join(k for k, v in synthetic_labels.items() if v is False)
        return False, (f"NOT zero-shot: the synthetic labels of {tainted} were made by a grounding module "
                       "trained with unseen classes as targets (train-annotated --train-on-unseen), so the "
                       "unseen scores are not zero-shot")
    if status is None:
        unknown = ", ".join(k for k, v in synthetic_labels.items() if v is None)
        return None, (f"zero-shot status unknown: no datagen manifest says what labelled {unknown}")
    return True, "zero-shot: the synthetic labels' grounding modules never had an unseen class as a target"


def _zero_shot_caption(report: dict) -> str:
    """The report's zero-shot status, loud when the unseen scores are not zero-shot."""
    note = report["zero_shot_note"]
    return f"\n[bold red]{note}[/]" if report["zero_shot"] is False else f"\n{note}"


def write_report(report: dict, out: Path, console: Console) -> None:
    """report.json and report.txt (the table as text), each written atomically; the table printed."""
    table = report_table(report)
    recorder = Console(record=True, width=110, file=io.StringIO())
    recorder.print(table)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.txt", recorder.export_text())
    console.print(table)
