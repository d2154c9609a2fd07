"""Run the real pipelines' stages directly on a GPU and time them (no Prefect, no cache).

Checks that ``device=cuda`` really puts the work on the GPU (peak CUDA memory > 0) and prints
one row per stage. Needs the project installed with the ``examples`` extra (the pipelines
live in ``examples/<name>/`` and import ``stages``).

    python benchmarks/gpu_check.py --size smoke full --pipelines vision_cnn t5_distill
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def middle(spec: dict):
    if spec["type"] == "categorical":
        return spec["choices"][0]
    lo, hi = spec["low"], spec["high"]
    mid = math.sqrt(lo * hi) if spec.get("log") else (lo + hi) / 2
    return round(mid) if spec["type"] == "int" else float(mid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", nargs="+", default=["vision_cnn", "t5_distill"])
    parser.add_argument("--size", nargs="+", default=["smoke", "full"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks._examples import example_module

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}", end="")
    if torch.cuda.is_available():
        print(f", {torch.cuda.get_device_name(0)}")
    print("\n| pipeline | size | stage | seconds | peak CUDA MiB |\n|---|---|---|---:|---:|")
    for name in args.pipelines:
        try:
            module = example_module(name)
        except ImportError as exc:
            print(f"| {name} | - | import failed: {exc} | | |")
            continue
        for size in args.size:
            pipe = getattr(module, f"{name}_pipeline")(size=size, device=args.device, seed=0)
            params = {
                s: {p: middle(spec) for p, spec in sec.items()}
                for s, sec in pipe.space_dict().items()
            }
            values = {}
            for stage in pipe.stages:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                kwargs = {i: values[i] for i in stage.inputs} | params.get(stage.name, {})
                values[stage.output] = stage.func(**kwargs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                peak = (
                    torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
                )
                print(
                    f"| {name} | {size} | {stage.name} | {time.perf_counter() - start:.2f} | {peak:.1f} |",
                    flush=True,
                )
            print(
                f"| {name} | {size} | objective | {pipe.objective(values[pipe.sink.output]):.4f} | |",
                flush=True,
            )


if __name__ == "__main__":
    main()
