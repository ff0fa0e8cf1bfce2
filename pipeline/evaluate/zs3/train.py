"""Driving the segmenter: processes (torch DDP under torchrun), batches, the training loop with
checkpoints, and evaluation into one confusion matrix."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset

from pipeline.dataset.atomic import replacing
from pipeline.evaluate.zs3.config import SegmenterPreset
from stages.errors import DataError
from stages.metrics import confusion_matrix
from stages.segmenter import class_pixels, median_frequency_weights, predict, segmentation_loss


@dataclass(frozen=True)
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str) -> Processes:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs) and pick the device."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device in ("auto", "cuda"):
        chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Processes(rank=dist.get_rank() if world > 1 else 0, world=world, device=chosen)


def wrap_for_processes(model: nn.Module, procs: Processes) -> nn.Module:
    """DDP (with synchronised batch norm on GPUs) when several processes train; the model itself otherwise."""
    if procs.world == 1:
        return model
    if procs.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[procs.device.index])
    return DistributedDataParallel(model)


def one_line(err: DataError) -> DataError:
    """The input error as raised, also when it comes from a DataLoader worker: torch re-raises it in the
    main process with the worker's whole traceback as its message, whose last line is the original one."""
    message = str(err)
    if message.startswith("Caught ") and "Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return DataError(message)


def _endless(loader: DataLoader, sampler: DistributedSampler | None) -> Iterator:
    for epoch in itertools.count():
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader


def batch_shares(preset: SegmenterPreset, world: int, real_images: int | None, synthetic: bool) -> tuple[int, int]:
    """(images per process, of which real) for ``world`` processes; ``real_images``: the real training
    split's size, None without real training. DataError when a batch cannot be filled: checked before
    the output folder is claimed, so a corrected rerun is not refused as another evaluation."""
    per_process = preset.batch_size // world
    if per_process < 2:
        raise DataError(f"batch size {preset.batch_size} over {world} processes leaves fewer than 2 "
                        "images per process (batch norm needs 2)")
    real_size = 0 if real_images is None else per_process if not synthetic else (per_process + 1) // 2
    if real_images is not None and real_images // world < real_size:
        raise DataError(f"the real training split has {real_images} images, fewer than one batch "
                        f"({real_size} per process x {world}); lower --batch-size")
    return per_process, real_size


def training_batches(real: Dataset | None, synthetic: IterableDataset | None, preset: SegmenterPreset,
                     procs: Processes, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, masks) batches of this process's share of ``preset.batch_size``; with both
    sources, half of each batch (rounded up) is real and the rest synthetic."""
    per_process, real_size = batch_shares(preset, procs.world, None if real is None else len(real),
                                          synthetic is not None)
    streams = []
    if real is not None:
        sampler = DistributedSampler(real, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        streams.append(_endless(DataLoader(real, batch_size=real_size, sampler=sampler, drop_last=True,
                                           num_workers=preset.workers, pin_memory=procs.device.type == "cuda"),
                                sampler))
    if synthetic is not None:
        streams.append(iter(DataLoader(synthetic, batch_size=per_process - real_size, drop_last=True,
                                       num_workers=preset.workers, pin_memory=procs.device.type == "cuda")))
    try:
        for parts in zip(*streams):
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    except DataError as err:
        raise one_line(err) from None
    raise DataError(f"the synthetic shards gave process {procs.rank} of {procs.world} no sample "
                        "(empty shards?)")


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    losses: list[float] | None = None
    class_balance: float = 0.0  # the preset's: 0 plain cross-entropy, else weights from pixels
    pixels: torch.Tensor | None = None  # (num_classes,) labelled pixels of each class trained on so far

    def state_dict(self, fingerprint: str) -> dict:
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        return {"fingerprint": fingerprint, "step": self.step, "losses": list(self.losses or []),
                "pixels": self.pixels, "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load(self, checkpoint: dict) -> None:
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step, self.losses = checkpoint["step"], list(checkpoint["losses"])
        self.pixels = checkpoint["pixels"]

    def class_weights(self, masks: torch.Tensor) -> torch.Tensor | None:
        """Count the batch's ``masks`` into ``pixels`` (every process's batch: all train with the same
        weights, and the main process's checkpoint holds all the counts); the loss's class weights from
        the counts so far, None for plain cross-entropy."""
        counts = class_pixels(masks, len(self.pixels))
        if dist.is_initialized():
            dist.all_reduce(counts)
        self.pixels += counts.to(self.pixels.device)
        return median_frequency_weights(self.pixels, self.class_balance) if self.class_balance else None


def new_train_state(model: nn.Module, preset: SegmenterPreset, device: torch.device, num_classes: int) -> TrainState:
    """SGD with momentum and poly(0.9) learning-rate decay (the DeepLab recipe); loss scaling on GPUs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum,
                                weight_decay=preset.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=preset.steps, power=0.9)
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=device.type == "cuda"),
                      losses=[], class_balance=preset.class_balance,
                      pixels=torch.zeros(num_classes, dtype=torch.int64, device=device))


def save_checkpoint(state: TrainState, path: Path, fingerprint: str) -> None:
    """Written to a temporary name and renamed: a kill never leaves a torn checkpoint, a full disk is one line
    (``atomic.WriteError``) and keeps the previous checkpoint."""
    with replacing(path) as tmp, open(tmp, "wb") as stream:
        try:
            torch.save(state.state_dict(fingerprint), stream)
        except RuntimeError as err:  # torch reports a failed write as its own error; the OSError is its context
            if isinstance(err.__context__, OSError):
                raise err.__context__ from err
            raise


def train(state: TrainState, batches: Iterator, steps: int, device: torch.device,
          on_step: Callable[[TrainState], None]) -> None:
    """Run from ``state.step`` to ``steps``; mixed precision (float16 autocast) on GPUs."""
    state.model.train()
    amp = device.type == "cuda"
    while state.step < steps:
        images, masks = next(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        weights = state.class_weights(masks)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = segmentation_loss(state.model(images), masks, class_weights=weights)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        state.step += 1
        state.losses.append(float(loss.detach()))
        on_step(state)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, procs: Processes, workers: int,
             on_image: Callable[[], None]) -> torch.Tensor:
    """The confusion matrix over the whole dataset (each process scores its share; summed across them)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=procs.device)
    share = Subset(dataset, range(procs.rank, len(dataset), procs.world))
    try:
        for image, mask in DataLoader(share, batch_size=1, num_workers=workers):
            with torch.autocast(procs.device.type, dtype=torch.float16, enabled=procs.device.type == "cuda"):
                pred = predict(model, image.to(procs.device))
            conf += confusion_matrix(pred, mask.to(procs.device), num_classes)
            on_image()
    except DataError as err:
        raise one_line(err) from None
    if procs.world > 1:
        dist.all_reduce(conf)
    return conf.cpu()
