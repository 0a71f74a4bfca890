"""Where the model path's time goes: tile reading alone, inference alone, and the loops that
join them, with torch's default CPU threads and with one.

    .venv/bin/python bench/model_path_parts.py                 # 8,000 px generated slide
    .venv/bin/python bench/model_path_parts.py --size 12000

No Histo-IA stack: the tiles of the tissue-classifier plan of the generated slide, read with
TissueClassifier.read_tile on one SlideReader, and the demo model on the device pick_device()
picks. Every line is one timed pass over all the tiles (best of --repeat passes is kept in the
JSON). It answers the questions bench/gpu_path.py raises when its ratio is low: is the reading
or the model the limit, do more reading threads help, and do torch's CPU threads (one per core
by default) slow the reading down. Normalising on the CPU or on the device is compared too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import loadavg, machine, make_large_slide  # noqa: E402

MODEL_DIR = benchstack.REPO / "predictions" / "demo_model"
INFERENCE_BATCH = 32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The model path's parts: reading, inference, loops.")
    parser.add_argument("--size", type=int, default=8000, help="side of the generated slide (default 8000)")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per line (default 2)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from experiments.slide_files import SlideReader
    from predictions.imaging.inference import pick_device
    from predictions.pipelines.base import ModelSpec
    from predictions.pipelines.tissue_classifier import TissueClassifier

    meta = json.loads((MODEL_DIR / "model.json").read_text())
    spec = ModelSpec(str(MODEL_DIR / meta["file"]), meta["sha256"], meta["tile_size"], meta["mpp"],
                     tuple(meta["mean"]), tuple(meta["std"]), tuple(meta["class_names"]))
    path = make_large_slide.ensure(args.size)
    code = TissueClassifier()
    reader = SlideReader(str(path))
    plan = code.prepare(reader, {}, spec).plan
    n = len(plan.tiles)
    device = pick_device()
    net = torch.jit.load(spec.path, map_location=device).eval()
    mean_cpu = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std_cpu = torch.tensor(spec.std).view(1, 3, 1, 1)
    mean_dev, std_dev = mean_cpu.to(device), std_cpu.to(device)
    chunks = [list(range(i, min(n, i + INFERENCE_BATCH))) for i in range(0, n, INFERENCE_BATCH)]
    report = {"command": benchstack.command_line("model_path_parts.py"), "machine": machine(), "slide": str(path),
              "tiles": n, "device": str(device), "torch": torch.__version__,
              "default_torch_threads": torch.get_num_threads(), "lines": [], "load_start": loadavg()}

    def read(i):
        return code.read_tile(reader, plan, i)

    def infer_normalised_on_cpu(tiles):
        with torch.inference_mode():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
            x = ((x / 255.0 - mean_cpu) / std_cpu).contiguous().to(device)
            return torch.softmax(net(x).float(), 1).cpu().numpy()

    def infer_normalised_on_device(tiles):
        with torch.inference_mode():
            x = torch.from_numpy(tiles)
            x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x
            x = ((x.permute(0, 3, 1, 2).float() / 255.0 - mean_dev) / std_dev).contiguous()
            return torch.softmax(net(x).float(), 1).cpu().numpy()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(name, run):
        best = None
        for _ in range(args.repeat):
            sync()
            started, cpu = time.perf_counter(), time.process_time()
            run()
            sync()
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            best = wall if best is None else min(best, wall)
            print(f"{name:<52} {n / wall:8.0f} tiles/s  wall {wall:6.2f} s  cpu {cpu:6.1f} s", flush=True)
        report["lines"].append({"name": name, "threads": torch.get_num_threads(), "best_tiles_per_s": round(n / best, 1)})

    def sequential(infer):
        def run():
            for chunk in chunks:
                infer(np.stack([read(i) for i in chunk]))
        return run

    def prefetching(infer, workers):
        def run():
            with ThreadPoolExecutor(workers) as pool:
                pending = [pool.submit(read, i) for i in chunks[0]]
                for k in range(len(chunks)):
                    tiles = np.stack([f.result() for f in pending])
                    if k + 1 < len(chunks):
                        pending = [pool.submit(read, i) for i in chunks[k + 1]]
                    infer(tiles)
        return run

    def reading(workers):
        def run():
            if workers == 0:
                for i in range(n):
                    read(i)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(read, range(n)))
        return run

    tiles = [np.stack([read(i) for i in chunk]) for chunk in chunks]
    a = np.concatenate([infer_normalised_on_cpu(t) for t in tiles])   # also the warm-up
    b = np.concatenate([infer_normalised_on_device(t) for t in tiles])
    report["normalise_where_max_dp"] = float(abs(a - b).max())
    report["normalise_where_same_classes"] = bool((a.argmax(1) == b.argmax(1)).all())
    benchstack.print_header("model path, part by part", report)
    print(f"device:  {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}; slide {path.name}, {n} tiles of 64 px")
    print(f"normalising on the CPU or on the device: same classes {report['normalise_where_same_classes']}, "
          f"largest probability difference {report['normalise_where_max_dp']:.2g}\n")
    for threads in dict.fromkeys([report["default_torch_threads"], 1]):
        torch.set_num_threads(threads)
        print(f"-- torch CPU threads: {threads}")
        timed("inference only, normalised on the CPU", lambda: [infer_normalised_on_cpu(t) for t in tiles])
        timed("inference only, normalised on the device", lambda: [infer_normalised_on_device(t) for t in tiles])
        for workers in (0, 1, 2, 4, 8):
            timed(f"reading only, {workers or 'no'} threads", reading(workers))
        for infer, where in ((infer_normalised_on_cpu, "CPU"), (infer_normalised_on_device, "device")):
            timed(f"sequential loop, normalised on the {where}", sequential(infer))
            for workers in (2, 4, 8):
                timed(f"{workers} reading threads ahead, normalised on the {where}", prefetching(infer, workers))
    report["load_end"] = loadavg()
    benchstack.dump(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
