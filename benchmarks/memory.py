"""Peak memory of phase C on the in-process executor does not grow with the number of samples.

Phase C (tiny preset, an untrained grounding module) runs for each n in a fresh process, through the
executor a user gets (the writer thread included); each process reports its peak resident memory
(VmHWM). The check: the largest n's peak within 1.2x the smallest's. Images are 128 px by default so
that a shard's samples weigh something (about 0.1 MB each): a run that kept every shard's samples would
grow by that much per sample.

    python benchmarks/memory.py [--n 200 2000] [--image-size 128] [--shard-size 100] [--batch-size 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (Linux VmHWM: a child's own, not its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    raise OSError("no VmHWM in /proc/self/status: this measurement needs Linux")


def child(n: int, out: Path, image_size: int, shard_size: int, batch_size: int, steps: int) -> dict:
    """Phase C of n samples in this process; its peak memory and time."""
    from pipeline.config import RunConfig, load_preset
    from pipeline.dataset.layout import GROUNDING_DIR, Phase
    from pipeline.run.executors import ExecutorSettings, make_executor
    from pipeline.run.phases import run_shard_phase
    from pipeline.runtime import Runtime
    from pipeline.training.job import new_trainer
    from stages.grounding.model import save_grounding

    preset = load_preset("tiny", {"image_size": image_size, "shard_size": shard_size, "batch_size": batch_size,
                                  "steps": steps})
    config = RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=n)
    (out / Phase.LABEL.folder).mkdir(parents=True)
    runtime = Runtime(config)
    save_grounding(new_trainer(config, runtime).module, out / GROUNDING_DIR)
    before = peak_rss_gb()
    started = time.perf_counter()
    report = run_shard_phase(config, Phase.LABEL, make_executor(ExecutorSettings()))
    seconds = time.perf_counter() - started
    assert not report.failed_shards, report.failed_shards
    return {"n": n, "shards": len(report.stats), "written": sum(s["written"] for s in report.stats),
            "seconds": round(seconds, 1), "peak_before_phase_gb": round(before, 3), "peak_gb": round(peak_rss_gb(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (memory does not depend on them)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # output folder of one run
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = (args.image_size, args.shard_size, args.batch_size, args.steps)
    if args.child:
        print(json.dumps(child(args.n[0], args.child, *sizes)))
        return
    from pipeline.config import default_cache_dir
    from pipeline.local_sources import TINY_MODEL_SEED, tiny_preset_dir

    tiny_preset_dir(default_cache_dir(), TINY_MODEL_SEED, args.image_size)  # built here: no child's peak includes it
    runs = []
    with tempfile.TemporaryDirectory(prefix="datagen-memory-") as root:
        for n in args.n:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                                             os.environ.get("PYTHONPATH")]))}
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(Path(root) / f"n{n}"), "--n", str(n),
                 "--image-size", str(args.image_size), "--shard-size", str(args.shard_size),
                 "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"phase C with n={n} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs[0], runs[-1]
    ratio = large["peak_gb"] / small["peak_gb"]
    per_1000 = (large["peak_gb"] - small["peak_gb"]) * 1000 / max(1, large["n"] - small["n"]) * 1000
    print(f"phase C, in-process executor, tiny preset at {args.image_size} px, shards of {args.shard_size}, "
          f"batches of {args.batch_size}; peak resident memory (VmHWM) of a fresh process per n")
    print(f"{'n':>6} {'shards':>6} {'written':>7} {'seconds':>8} {'peak GB':>8}")
    for r in runs:
        print(f"{r['n']:6d} {r['shards']:6d} {r['written']:7d} {r['seconds']:8.1f} {r['peak_gb']:8.3f}")
    print(f"peak(n={large['n']}) / peak(n={small['n']}) = {ratio:.3f} (target <= 1.2); "
          f"growth {per_1000:.1f} MB per 1000 samples")
    print(json.dumps({"runs": runs, "ratio": round(ratio, 4), "mb_per_1000_samples": round(per_1000, 2)}))


if __name__ == "__main__":
    main()
