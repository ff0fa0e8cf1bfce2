"""Training the grounding module: features from one guided UNet pass per batch, per-class BCE, Adam.

A batch (from oracle shards or from annotated images) holds ``prompts``, ``timestep``, ``names``
(per-sample class text names), ``targets`` (B, K, H, W) float, ``has_target`` (B, K) bool (a class the
oracle did not find gets no loss), optionally ``ignore`` (B, H, W) bool, and either ``latents``
(x_t at the capture step, stored by phase A) or ``images`` (B, 3, H, W) in [-1, 1] with
``noise_seeds``: real images, which are VAE-encoded and noised to the capture step first.

``GroundingTrainer`` adds what a long run needs: a learning-rate schedule (linear warm-up, then
constant or cosine), gradient accumulation, autocast on a GPU (bf16 where supported, else fp16 with
loss scaling), and a state that is saved and restored exactly, so a killed run resumes where its
last checkpoint left it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from stages.generate import Diffusion
from stages.grounding.metrics import IoU, add_predictions
from stages.grounding.model import (
    ClassTextEncoder,
    GroundingModule,
    class_embeddings,
    grounding_loss,
    load_grounding,
    save_grounding,
)

TRAINER_STATE = "trainer.pt"
PROGRESS = "progress.json"


class TrainOptions(BaseModel):
    """How the trainer optimises (a model preset's ``train:`` section extends it with the data side)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(gt=0, description="Optimizer steps.")
    lr: float = Field(gt=0, description="Adam learning rate (the official code: 1e-5).")
    accumulate: int = Field(1, gt=0, description="Batches per optimizer step (gradient accumulation).")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear learning-rate warm-up.")
    schedule: Literal["constant", "cosine"] = Field("constant", description="Learning rate after the warm-up: "
                                                    "constant, or cosine decay to 0 at the last step.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a CUDA GPU that has it, else fp16 with loss scaling; fp32 "
        "elsewhere. fp16 needs CUDA.")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None = plain float32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device (use bf16 or fp32 here)")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


class GroundingTrainer:
    """One grounding module, its optimizer and schedule, and the models that make its inputs."""

    def __init__(self, module: GroundingModule, text: ClassTextEncoder, diffusion: Diffusion,
                 template: str, options: TrainOptions):
        self.device = torch.device(diffusion.device)
        self.module = module.to(self.device)
        self.text, self.diffusion, self.template, self.options = text, diffusion, template, options
        self.optimizer = torch.optim.Adam(module.parameters(), lr=options.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, options.lr_factor)
        self.amp_dtype = autocast_dtype(options.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0  # optimizer steps taken
        self.losses: list[float] = []
        self.validation: list[dict] = []

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def features(self, batch: dict) -> dict[int, torch.Tensor]:
        """The capture-step UNet features of a batch: one guided pass (after VAE + noise for images)."""
        latents = batch.get("latents")
        if latents is None:
            latents = self.diffusion.latents_from_images(batch["images"], batch["timestep"], batch["noise_seeds"])
        features = self.diffusion.features_from_latent(latents, batch["timestep"], batch["prompts"])
        return {r: f.float().clone() for r, f in features.items()}  # leave inference mode

    def logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(batch)
        embeddings, valid = class_embeddings(self.text, batch["names"], self.template, self.device)
        with self._autocast():
            return self.module(features, embeddings).float(), valid

    def train_step(self, batches: list[dict]) -> float:
        """One optimizer step over ``batches`` (the accumulated micro-batches); returns the mean loss."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            logits, valid = self.logits(batch)
            ignore = batch.get("ignore")
            loss = grounding_loss(logits, batch["targets"], valid & batch["has_target"].to(self.device),
                                  None if ignore is None else ignore.to(self.device))
            self.scaler.scale(loss / len(batches)).backward()
            total += loss.item() / len(batches)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.losses.append(total)
        return total

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """mIoU (background included) and per-class IoU of the module's masks over ``batches``."""
        self.module.eval()
        iou = IoU()
        for batch in batches:
            logits, _ = self.logits(batch)
            add_predictions(iou, torch.sigmoid(logits), batch)
        return {"step": self.step, "miou": iou.mean(), "per_class": iou.per_class()}

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def save(self, folder: Path, record: dict | None = None) -> None:
        """Module, optimizer, schedule and progress into ``folder`` (the caller makes it appear whole)."""
        folder = Path(folder)
        save_grounding(self.module, folder)
        state = io.BytesIO()  # torch.save to a path turns a full disk into a RuntimeError; a write, an OSError
        torch.save(self.state_dict(), state)
        (folder / TRAINER_STATE).write_bytes(state.getvalue())
        progress = {"step": self.step, "losses": self.losses, "validation": self.validation,
                    "options": self.options.model_dump(), **(record or {})}
        (folder / PROGRESS).write_text(json.dumps(progress, indent=1))

    def restore(self, folder: Path) -> dict:
        """Continue from a folder written by ``save``; returns its progress record."""
        folder = Path(folder)
        loaded = load_grounding(folder, map_location=self.device)
        self.module.load_state_dict(loaded.state_dict())
        state = torch.load(folder / TRAINER_STATE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        progress = json.loads((folder / PROGRESS).read_text())
        self.step, self.losses, self.validation = state["step"], progress["losses"], progress["validation"]
        return progress


def fit(trainer: GroundingTrainer, batches: Iterator[dict], *,
        validate: Callable[[], Iterator[dict]] | None = None, validate_every: int = 0,
        checkpoint: Callable[[], None] | None = None, checkpoint_every: int = 0,
        on_step: Callable[[int, float], None] | None = None) -> None:
    """Train until ``trainer.options.steps`` optimizer steps, from ``trainer.step`` on.

    ``batches`` must already be positioned after the batches the trainer has consumed (a resumed run
    skips ``trainer.step * accumulate`` of them). Validation runs every ``validate_every`` steps and
    at the end; ``checkpoint`` is called every ``checkpoint_every`` steps.
    """
    options = trainer.options
    while trainer.step < options.steps:
        loss = trainer.train_step([next(batches) for _ in range(options.accumulate)])
        last = trainer.step == options.steps
        if validate and (last or (validate_every and trainer.step % validate_every == 0)):
            trainer.validation.append(trainer.evaluate(validate()))
        if on_step:
            on_step(trainer.step, loss)
        if checkpoint and checkpoint_every and trainer.step % checkpoint_every == 0 and not last:
            checkpoint()
    trainer.module.eval()
