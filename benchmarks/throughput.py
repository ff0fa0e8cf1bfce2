"""Throughput of datagen against bare diffusers and the hardware, on Stable Diffusion 1.5's architecture.

The models are SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder (their configs are written out in
``testbed.random_presets.SD15_SD``), a COCO-sized Mask R-CNN v2 oracle and a paper-sized grounding module, all
with random weights built here: compute cost does not depend on weight values. They are built once
into the models cache and loaded through ``from_pretrained``, as a real run loads SD 1.5.

Measured in one run, per image, for each scheduler (``--schedulers``: DDIM, DPM-Solver++, UniPC, each with its
steps) at the same resolution, guidance, batch and dtype, in rounds that take each mode in turn (so load from
other processes on the machine falls on all modes alike):

  a  bare diffusers: ``StableDiffusionPipeline.__call__`` (the same scheduler, guidance, VAE decode, numpy images)
  b  datagen phase C through the shard worker: generation, feature capture, grounding module, masks,
     encoding and the shard's atomic write (``ShardWorker.process``: no overlap of writing and compute)
  c  datagen phase A through the shard worker: generation, Mask R-CNN oracle (score threshold 0, so its
     mask head runs on a full set of detections, as COCO weights give), encoding and the shard write
  d  phase C with the attention labeler (``--labeler attention``)
  e  phase C's compute alone (``ShardWorker.compute``: b without encoding and writing, which a run's
     writer thread overlaps with the next shard's compute): e/a is what phase C costs in a run

FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products,
convolutions and attention; not element-wise operations) on a 1-step run of each mode, with the UNet's
count added for each further step (so no long counted run is needed), and turned into
achieved TFLOP/s and a fraction of the device's dense fp16/bf16 peak where the device is in PEAK_TFLOPS.
The first run of each mode after counting is the warm-up (with ``--compile``, the UNet's compilation),
reported apart. ``--loading`` measures loading the SD folder with and without ``low_cpu_mem_usage``.
``--profile`` runs one more batch of mode e per scheduler under ``torch.profiler`` and sums the time of phase C's
parts (the UNet, the text encoder, the VAE decoder, the grounding module; the rest is feature handling, masks
and host copies) and the operators that take the most of it outside the UNet: CPU time on a CPU, GPU time on a
GPU.

    python benchmarks/throughput.py                 # reduced: 128 px, 8 steps of each scheduler, batch 2 (CPU)
    python benchmarks/throughput.py --full          # 512 px, DDIM 50, DPM-Solver++ 20, UniPC 20, batch 16 (a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import diffusers
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import RunConfig, default_cache_dir, load_preset
from pipeline.dataset.atomic import build_folder_once
from pipeline.dataset.layout import GROUNDING_DIR, Phase
from pipeline.dataset.plan import plan_shards
from pipeline.run.workers import ShardWorker
from pipeline.runtime import Runtime
from pipeline.training.job import new_trainer
from stages.generate import SCHEDULERS
from stages.grounding.model import save_grounding
from stages.models import MASKRCNN_FILE
from testbed.random_presets import build_random_preset, random_preset_name

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets, matched
# by substring against torch.cuda.get_device_name(). A device not listed has no fraction of peak.
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0,
               "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.2}
FULL = {"image_size": 512, "steps": 50, "batch_size": 16}
REDUCED = {"image_size": 128, "steps": 8, "batch_size": 2}
FULL_SCHEDULERS = ("ddim:50", "dpmsolver++:25", "unipc:20")  # the paper's, sd15's default, and UniPC 20
REDUCED_SCHEDULERS = ("ddim", "dpmsolver++", "unipc")  # each at --steps
MODES = {"a": "bare diffusers StableDiffusionPipeline.__call__",
         "b": "datagen phase C (worker: generate, capture, ground, masks, encode, write)",
         "c": "datagen phase A (worker: generate, oracle, encode, write)",
         "d": "datagen phase C, attention labeler",
         "e": "datagen phase C compute alone (b less encoding and writing)"}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"


def peak_tflops(name: str, dtype: torch.dtype) -> float | None:
    if dtype not in (torch.float16, torch.bfloat16):
        return None
    return next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (Linux: VmHWM, which unlike ru_maxrss does not carry
    the parent's peak over into a child process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # not Linux: ru_maxrss in KiB (bytes on macOS)


def peak_memory_gb(device: str) -> float:
    """The device's peak allocated memory (CUDA) or this process's peak resident memory (CPU), in GB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_gb()


def models_folder(cache: Path, arch: str, image_size: int) -> Path:
    """The random-weight preset of ``arch`` in the models cache, built on first use."""
    return build_folder_once(cache / random_preset_name(0, image_size, arch),
                             lambda folder: build_random_preset(folder, 0, image_size, arch))


@contextmanager
def sampling_steps(worker: ShardWorker, steps: int):
    """The worker's sampler with ``steps`` DDIM steps for a while (FLOP counting on short runs)."""
    diffusion = worker.runtime.diffusion
    saved = diffusion.steps, diffusion.capture_index
    diffusion.steps, diffusion.capture_index = steps, steps - worker.config.preset.capture_step
    try:
        yield
    finally:
        diffusion.steps, diffusion.capture_index = saved


class Modes:
    """Each mode as one call on one shard's samples (one batch), all sharing one set of models."""

    def __init__(self, config: RunConfig, runtime: Runtime, work: Path, rounds: int, only: list[str] | None = None):
        self.config, self.runtime, self.device, self.only = config, runtime, runtime.device, only
        size = config.preset.batch_size
        batches = rounds + 2  # warm-up, the rounds, a profiled one
        self.label_tasks = plan_shards(Phase.LABEL, batches * size, size, work / "label")
        self.oracle_tasks = plan_shards(Phase.ORACLE, batches * size, size, work / "oracle")
        for task in self.label_tasks[:1] + self.oracle_tasks[:1]:
            task.folder.mkdir(parents=True, exist_ok=True)
        self.workers = {"b": ShardWorker(config, runtime), "c": ShardWorker(config, runtime)}
        self.unavailable: dict[str, str] = {}
        attention = attention_config(config)
        if isinstance(attention, str):
            self.unavailable["d"] = attention
        else:
            self.workers["d"] = ShardWorker(attention, runtime)

    def use_scheduler(self) -> None:
        """Make this config's solver the pipeline's (mode a samples with it; the models are shared)."""
        self.runtime.pipe.scheduler = self.runtime.diffusion.solver

    @property
    def names(self) -> list[str]:
        return [m for m in ["a", *self.workers, "e"] if self.only is None or m in self.only]

    def task(self, mode: str, index: int):
        return (self.oracle_tasks if mode == "c" else self.label_tasks)[index]

    def run(self, mode: str, index: int, steps: int | None = None, write: bool = True) -> int:
        """Mode ``mode`` on the samples of shard ``index``; the number of images. ``steps`` overrides
        the sampling steps; ``write=False`` leaves out encoding and writing (FLOP counting)."""
        if mode == "a":
            return self._bare(self.task("b", index), steps or self.config.preset.steps)
        write = write and mode != "e"
        worker, task = self.workers["b" if mode == "e" else mode], self.task(mode, index)
        with sampling_steps(worker, steps or self.config.preset.steps):
            worker.process(task) if write else worker.compute(task)
        return task.end - task.start

    def _bare(self, task, steps: int) -> int:
        specs = self.workers["b"].specs(task)
        size, preset = self.config.preset.image_size, self.config.preset
        self.runtime.pipe(prompt=[s.prompt for s in specs], height=size, width=size, num_inference_steps=steps,
                          guidance_scale=preset.guidance.label, eta=0.0, output_type="np",
                          generator=[torch.Generator().manual_seed(s.seed) for s in specs])
        return len(specs)

    def timed(self, mode: str, index: int, steps: int | None = None) -> tuple[float, int]:
        synchronize(self.device)
        started = time.perf_counter()
        images = self.run(mode, index, steps)
        synchronize(self.device)
        return time.perf_counter() - started, images

    def flops_per_image(self, mode: str) -> float:
        """FLOPs per image at the configured steps: a counted 1-step run, plus the UNet's share of it once
        for every further step. An uncounted run first fills the caches of the empty prompt's and the
        class names' embeddings, as a long run has them."""
        self.run(mode, 0, 1, write=False)
        counter = FlopCounterMode(display=False, depth=1)
        with counter, torch.inference_mode():
            images = self.run(mode, 0, 1, write=False)
        unet = sum(counter.get_flop_counts().get(type(self.runtime.pipe.unet).__name__, {}).values())
        return (counter.get_total_flops() + (self.config.preset.steps - 1) * unet) / images


def attention_config(config: RunConfig) -> RunConfig | str:
    """Phase C's config with the attention labeler, or why its preset cannot have it."""
    try:
        return RunConfig.model_validate({**config.model_dump(), "labeler": "attention"})
    except ValueError as err:
        return f"not available: {str(err).splitlines()[0]}"


def untrained_grounding(config: RunConfig, runtime: Runtime) -> None:
    """A preset-sized grounding checkpoint with random weights (training is not what is measured)."""
    save_grounding(new_trainer(config, runtime).module, config.out / GROUNDING_DIR)


LOAD = """
import importlib.util, json, math, time, torch
from diffusers import StableDiffusionPipeline
started = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained({folder!r}, dtype=torch.{dtype}, safety_checker=None,
    requires_safety_checker=False, local_files_only=True, low_cpu_mem_usage={low})
loaded = time.perf_counter() - started
pipe.to({device!r})
with torch.inference_mode():
    total = sum(float(p.float().sum()) for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
if {device!r}.startswith("cuda"):
    torch.cuda.synchronize()
ready = time.perf_counter() - started
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"from_pretrained_s": round(loaded, 2), "ready_s": round(ready, 2),
                  "peak_rss_gb": round(hwm / 1e6, 2), "finite": math.isfinite(total),
                  "accelerate": importlib.util.find_spec("accelerate") is not None}}))
"""


def measure_loading(folder: Path, dtype: str, device: str) -> dict:
    """Loading the SD folder in a fresh process each (which imports torch and diffusers only), without and
    with ``low_cpu_mem_usage`` (without the ``accelerate`` package diffusers ignores it: ``accelerate`` in the
    result says whether it was there): seconds until ``from_pretrained``
    returns, seconds until the models are on the device with every weight read once (diffusers maps
    safetensors files, so weights are read when first used), and peak resident memory (VmHWM)."""
    results = {}
    for low in (False, True):
        code = LOAD.format(folder=str(folder), dtype=dtype, device=device, low=low)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            results[f"low_cpu_mem_usage={low}"] = json.loads(lines[-1])
        else:
            results[f"low_cpu_mem_usage={low}"] = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return results


def scheduler_settings(names: list[str] | None, full: bool, steps: int) -> list[tuple[str, int]]:
    """(scheduler, steps) pairs from NAME or NAME:STEPS (NAME alone: ``steps``)."""
    pairs = []
    for item in names or (FULL_SCHEDULERS if full else REDUCED_SCHEDULERS):
        name, _, count = item.partition(":")
        if name not in SCHEDULERS:
            raise SystemExit(f"--schedulers {item}: not one of {', '.join(SCHEDULERS)}")
        pairs.append((name, int(count) if count else steps))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "tiny"], default="sd15",
                        help="sd15: SD 1.5's architecture; tiny: the tiny preset's (the smoke test)")
    parser.add_argument("--full", action="store_true", help=f"{FULL}, schedulers {list(FULL_SCHEDULERS)} (a GPU)")
    parser.add_argument("--image-size", type=int, default=None, help=f"default {REDUCED['image_size']}")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps of a scheduler named without :STEPS; default {REDUCED['steps']}")
    parser.add_argument("--schedulers", nargs="+", default=None, metavar="NAME[:STEPS]",
                        help=f"{', '.join(SCHEDULERS)}; default {list(REDUCED_SCHEDULERS)} at --steps "
                             f"({list(FULL_SCHEDULERS)} with --full)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {REDUCED['batch_size']}")
    parser.add_argument("--rounds", type=int, default=2, help="timed batches per mode")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None, help="only these modes (default: all)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--dtype", default="auto", help="auto (float16 on a GPU, float32 on a CPU), float32, ...")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (after FLOP counting)")
    parser.add_argument("--loading", action="store_true", help="also measure loading with/without low_cpu_mem_usage")
    parser.add_argument("--profile", action="store_true", help="also profile phase C's compute (mode e), one batch "
                        "per scheduler: the time outside the UNet")
    parser.add_argument("--work", type=Path, default=None, help="folder for the shards (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    sizes = {**(FULL if args.full else REDUCED),
             **{k: v for k, v in {"image_size": args.image_size, "steps": args.steps,
                                  "batch_size": args.batch_size}.items() if v is not None}}
    settings = scheduler_settings(args.schedulers, args.full, sizes["steps"])
    cache = default_cache_dir()
    work = args.work or Path(tempfile.mkdtemp(prefix="datagen-throughput-"))
    started = time.perf_counter()
    folder = models_folder(cache, args.arch, sizes["image_size"])
    build_s = time.perf_counter() - started
    try:
        report = run(args, sizes, settings, folder, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["build_or_find_models_s"] = round(build_s, 1)
    print_report(report)
    print(json.dumps(report))


def sharing(runtime: Runtime, config: RunConfig) -> Runtime:
    """A runtime for ``config`` (another scheduler) on ``runtime``'s loaded models: its own sampler, the same
    weights (each scheduler would otherwise load SD 1.5 again)."""
    other = Runtime(config)
    for name in ("pipe", "oracle", "grounding", "class_text"):
        setattr(other, name, getattr(runtime, name))  # cached properties: the instance's value wins
    return other


def run(args, sizes: dict, settings: list[tuple[str, int]], folder: Path, work: Path) -> dict:
    preset = load_preset("sd15", {
        "sd": str(folder), "oracle_weights": str(folder / MASKRCNN_FILE), **sizes, "shard_size": sizes["batch_size"],
        "guidance": args.guidance, "dtype": args.dtype, "oracle_score_threshold": 0.0})
    if args.arch == "tiny":  # the tiny UNet's grounding sizes; the attention settings stay sd15's (UNet levels)
        preset = preset.model_copy(update={"grounding": load_preset("tiny").grounding})
    config = RunConfig(vocab="coco", out=work, preset_name="sd15", preset=preset, n=sizes["batch_size"],
                       device=args.device)
    runtime = Runtime(config)
    started = time.perf_counter()
    runtime.pipe, runtime.oracle
    load_s = time.perf_counter() - started
    untrained_grounding(config, runtime)
    name = device_name(runtime.device)
    processors = sorted({type(p).__name__ for p in runtime.pipe.unet.attn_processors.values()})
    per_scheduler = {}
    for scheduler, steps in settings:
        own = config.model_copy(update={"preset": preset.model_copy(update={"scheduler": scheduler, "steps": steps})})
        modes = Modes(own, sharing(runtime, own), work / f"{scheduler}-{steps}", args.rounds, args.modes)
        modes.use_scheduler()
        say(f"{scheduler} {steps} steps: counting FLOPs (1-step runs of each mode)")
        per_scheduler[(scheduler, steps)] = modes, {m: modes.flops_per_image(m) for m in modes.names}
    say(f"models loaded in {load_s:.1f} s")
    if args.compile:  # after counting: a compiled graph hides its operations
        runtime.pipe.unet.compile()
    peak = peak_tflops(name, runtime.dtype)
    results = [measure(modes, flops, peak, args.rounds, args.profile) for modes, flops in per_scheduler.values()]
    return {
        "arch": args.arch, **sizes, "guidance": args.guidance, "dtype": str(runtime.dtype).removeprefix("torch."),
        "device": name, "torch_threads": torch.get_num_threads(), "compile": args.compile,
        "attention_processors": processors, "attention_settings": config.preset.attention.to_dict(),
        "peak_tflops": peak, "load_s": round(load_s, 1), "schedulers": results,
        "peak_memory_gb": round(peak_memory_gb(runtime.device), 2),
        "loading": measure_loading(folder, str(runtime.dtype).removeprefix("torch."), runtime.device)
        if args.loading else None,
    }


def measure(modes: Modes, flops: dict, peak: float | None, rounds: int, profile: bool) -> dict:
    """One scheduler's table: a warm-up batch of each mode, then ``rounds`` rounds that take the modes in turn."""
    preset = modes.config.preset
    modes.use_scheduler()
    warmup = {}
    for m in modes.names:
        seconds, _ = modes.timed(m, 0)
        warmup[m] = round(seconds, 2)
        say(f"{preset.scheduler} warm-up {m}: {seconds:.1f} s")
    seconds = {m: 0.0 for m in modes.names}
    images = {m: 0 for m in modes.names}
    for r in range(1, rounds + 1):
        for m in modes.names:
            s, k = modes.timed(m, r)
            seconds[m] += s
            images[m] += k
            say(f"{preset.scheduler} round {r} {m}: {s / k:.3f} s/image")
    rows = {}
    for m in modes.names:
        per_image = seconds[m] / images[m]
        achieved = flops[m] / per_image / 1e12
        rows[m] = {"mode": MODES[m], "s_per_image": round(per_image, 4), "images": images[m],
                   "warmup_s": warmup[m], "gflop_per_image": round(flops[m] / 1e9, 3),
                   "achieved_tflops": round(achieved, 3),
                   "fraction_of_peak": round(achieved / peak, 3) if peak else None}
    for m, why in modes.unavailable.items():
        rows[m] = {"mode": MODES[m], "unavailable": why}
    ratios = {f"{m}/a": round(rows[m]["s_per_image"] / rows["a"]["s_per_image"], 3)
              for m in modes.names if m != "a" and "a" in rows}
    return {"scheduler": preset.scheduler, "steps": preset.steps,
            "capture_timestep": modes.runtime.diffusion.capture_timestep, "modes": rows, "ratios": ratios,
            "profile": profile_compute(modes, rounds + 1) if profile else None}


PARTS = {"unet": "UNet", "text_encoder": "text encoder", "vae_decoder": "VAE decoder", "grounding": "grounding module"}


@contextmanager
def labelled_parts(modules: dict):
    """While entered, each module's forward runs inside a ``torch.profiler.record_function`` range of its name."""
    with ExitStack() as hooks:
        for name, module in modules.items():
            ranges = []

            def enter(_module, _args, ranges=ranges, name=name):
                ranges.append(torch.profiler.record_function(f"datagen::{name}").__enter__())

            def leave(_module, _args, _output, ranges=ranges):
                ranges.pop().__exit__(None, None, None)

            hooks.callback(module.register_forward_pre_hook(enter).remove)
            hooks.callback(module.register_forward_hook(leave).remove)
        yield


def profile_compute(modes: Modes, index: int, top: int = 8) -> dict:
    """Mode e (phase C's compute) on one more batch under ``torch.profiler``: seconds per image of the batch and
    of each part (CPU time; on a GPU, GPU time), the rest outside the UNet (capture, masks, copies), and the
    operators with the most self time outside the UNet."""
    from torch.profiler import ProfilerActivity, profile

    runtime, cuda = modes.runtime, modes.device.startswith("cuda")
    pipe = runtime.pipe
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae_decoder": pipe.vae.decoder,
             "grounding": runtime.grounding}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with labelled_parts(parts), profile(activities=activities) as prof:
        with torch.profiler.record_function("datagen::batch"):
            images = modes.run("e", index)
        synchronize(modes.device)
    events = prof.events()

    def spent(event) -> float:  # microseconds
        return event.device_time_total if cuda else event.cpu_time_total

    def own(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    def in_unet(event) -> bool:
        while event is not None:
            if event.name == "datagen::unet":
                return True
            event = event.cpu_parent
        return False

    totals = {name: 0.0 for name in ("batch", *PARTS)}
    outside: dict[str, float] = {}
    for event in events:
        name = event.name.removeprefix("datagen::")
        if event.name.startswith("datagen::") and name in totals:
            totals[name] += spent(event)
        elif not event.name.startswith("datagen::") and not in_unet(event):
            outside[event.name] = outside.get(event.name, 0.0) + own(event)
    per_image = {k: v / 1e6 / images for k, v in totals.items()}
    rest = per_image["batch"] - sum(per_image[k] for k in PARTS)
    return {"clock": "gpu" if cuda else "cpu", "images": images, "s_per_image": round(per_image["batch"], 4),
            "parts_s_per_image": {PARTS[k]: round(per_image[k], 4) for k in PARTS}
            | {"other (capture, masks, copies)": round(rest, 4)},
            "outside_unet_s_per_image": round(per_image["batch"] - per_image["unet"], 4),
            "top_outside_unet": [[name, round(us / 1e6 / images, 5)]
                                 for name, us in sorted(outside.items(), key=lambda kv: -kv[1])[:top]]}


def print_report(r: dict) -> None:
    print(f"{r['device']}, {r['dtype']}, torch threads {r['torch_threads']}, compile {r['compile']}; "
          f"{r['arch']} architecture, {r['image_size']} px, guidance {r['guidance']}, batch {r['batch_size']}; "
          f"attention processors {', '.join(r['attention_processors'])}")
    print(f"{'scheduler':16} {'mode':4} {'s/image':>9} {'images':>6} {'warm-up s':>9} {'GFLOP/img':>10} "
          f"{'TFLOP/s':>8} {'of peak':>8}  what")
    for s in r["schedulers"]:
        setting = f"{s['scheduler']} {s['steps']}"
        for m, row in s["modes"].items():
            if "unavailable" in row:
                print(f"{setting:16} {m:4} {'-':>9} {'-':>6} {'-':>9} {'-':>10} {'-':>8} {'-':>8}  "
                      f"{row['mode']}: {row['unavailable']}")
                continue
            fraction = f"{row['fraction_of_peak']:.1%}" if row["fraction_of_peak"] is not None else "unknown"
            print(f"{setting:16} {m:4} {row['s_per_image']:9.3f} {row['images']:6d} {row['warmup_s']:9.2f} "
                  f"{row['gflop_per_image']:10.1f} {row['achieved_tflops']:8.3f} {fraction:>8}  {row['mode']}")
    for s in r["schedulers"]:
        print(f"ratios (s/image over a), {s['scheduler']} {s['steps']} (capture t = {s['capture_timestep']}): "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["ratios"].items()))
    for s in r["schedulers"]:
        if s["profile"]:
            p = s["profile"]
            print(f"profile of phase C compute, {s['scheduler']} {s['steps']} ({p['clock']} time, {p['images']} "
                  f"images): {p['s_per_image']:.4f} s/image, outside the UNet {p['outside_unet_s_per_image']:.4f}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in p["parts_s_per_image"].items()))
            print("  top operators outside the UNet (s/image): "
                  + ", ".join(f"{name} {v:.4f}" for name, v in p["top_outside_unet"]))
    if r["peak_tflops"] is None:
        print("fraction of peak: unknown (no dense fp16/bf16 peak for this device in PEAK_TFLOPS)")
    print(f"models loaded in {r['load_s']} s; peak memory {r['peak_memory_gb']} GB")
    if r["loading"]:
        for k, v in r["loading"].items():
            print(f"loading the SD folder, {k}: {v}")


if __name__ == "__main__":
    main()
