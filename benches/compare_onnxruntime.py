#!/usr/bin/env python3
"""Side-by-side latency: the same ONNX file through onnxruntime and through `resnet-edge bench`
(and the `tract` CLI when it is on PATH), at each thread count.

Every measurement is a fresh process that loads the model, warms up, then times single-image
inferences and reports their median. The runtimes take turns, A B A B ..., so slow drift of the
machine (thermal, other load) hits both; the printed figure per runtime is the median of its
per-round medians, and the ratio is resnet-edge over onnxruntime (above 1 = resnet-edge slower).

    python benches/compare_onnxruntime.py [--bin target/release/resnet-edge]
        [--model a.onnx ...] [--threads 1,2] [--rounds 3] [--num-runs 30] [--warmup-runs 5]

Without --model it uses full-size torchvision ResNet-18 and ResNet-50 (random weights) from
benches/export_resnets.py, exporting them first if missing (needs torch and torchvision).
Needs onnxruntime and numpy. Build the binary with `cargo build --release` first.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def ort_worker(model: str, threads: int, warmup: int, runs: int) -> None:
    """Child process: time onnxruntime on `model` and print a JSON line."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - start) * 1e3
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feed = {inp.name: x}
    for _ in range(warmup + 1):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"p50_ms": statistics.median(times), "min_ms": min(times), "load_ms": load_ms}))


def run_json(cmd: list, timeout: float) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def measure_ort(model, threads, args) -> float:
    cmd = [sys.executable, __file__, "--ort-worker", model, str(threads),
           str(args.warmup_runs), str(args.num_runs)]
    return run_json(cmd, args.timeout)["p50_ms"]


def measure_edge(model, threads, args) -> float:
    cmd = [args.bin, "bench", model, "--threads", str(threads), "--precision", "f32",
           "--warmup-runs", str(args.warmup_runs), "--num-runs", str(args.num_runs),
           "--format", "json"]
    return run_json(cmd, args.timeout)["p50_ms"]


def measure_tract(model, shape, args) -> float:
    """The tract CLI's own bench (mean per loop; its threading is its own default)."""
    cmd = [args.tract, "-O", model, "-i", ",".join(map(str, shape)) + ",f32", "--machine-friendly",
           "bench", "--warmup-loops", str(args.warmup_runs), "--max-loops", str(args.num_runs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in out.stdout.splitlines():
        if line.startswith("real:"):
            return float(line.split()[1]) * 1e3
    raise RuntimeError(f"{' '.join(cmd)}: no 'real:' line in its output:\n{out.stdout}{out.stderr}")


def input_shape(model: str) -> list:
    import onnx

    m = onnx.load(model, load_external_data=False)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.dim_value > 0 else 1 for d in dims]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "resnet-edge")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-worker":
        model, threads, warmup, runs = sys.argv[2], *map(int, sys.argv[3:6])
        ort_worker(model, threads, warmup, runs)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=default_bin(), help="resnet-edge binary (release build)")
    p.add_argument("--model", action="append", help="ONNX model (repeatable)")
    p.add_argument("--models-dir", default="/var/tmp/resnet-edge-bench",
                   help="where the default ResNet-18/50 exports live")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=3, help="A B pairs per model and thread count")
    p.add_argument("--num-runs", type=int, default=30)
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed per measurement")
    p.add_argument("--tract", default=shutil.which("tract"), help="tract CLI (default: from PATH)")
    p.add_argument("--json", help="also write every measurement here")
    args = p.parse_args()
    if args.rounds < 1 or args.num_runs < 1 or args.warmup_runs < 0:
        p.error("--rounds and --num-runs must be at least 1, --warmup-runs at least 0")
    threads = [int(t) for t in args.threads.split(",")]
    if not os.access(args.bin, os.X_OK):
        p.error(f"{args.bin} is not an executable: run `cargo build --release` or pass --bin")
    if args.model:
        models = args.model
    else:
        sys.path.insert(0, HERE)
        import export_resnets

        os.makedirs(args.models_dir, exist_ok=True)
        models = [export_resnets.export(a, args.models_dir) for a in export_resnets.ARCHS]

    import onnxruntime

    version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    started = time.time()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{version}; onnxruntime {onnxruntime.__version__} (Python {platform.python_version()}); "
          f"tract CLI: {args.tract or 'not installed'}")
    print(f"{args.rounds} rounds of A B per cell, each a fresh process: {args.warmup_runs} warmup + "
          f"{args.num_runs} timed single-image runs, median\n")
    rows, raw = [], []
    for model in models:
        name = (os.path.splitext(os.path.basename(model))[0]
                if os.path.dirname(os.path.abspath(model)) == os.path.abspath(args.models_dir) else model)
        shape = input_shape(model)
        for t in threads:
            ort_ms, edge_ms = [], []
            for r in range(args.rounds):
                ort_ms.append(measure_ort(model, t, args))
                edge_ms.append(measure_edge(model, t, args))
                print(f"  {name} threads {t} round {r + 1}: onnxruntime {ort_ms[-1]:.2f} ms, "
                      f"resnet-edge {edge_ms[-1]:.2f} ms", flush=True)
            tract_ms = None
            if args.tract and t == 1:
                tract_ms = statistics.median(measure_tract(model, shape, args) for _ in range(args.rounds))
            o, e = statistics.median(ort_ms), statistics.median(edge_ms)
            rows.append((name, t, o, e, e / o, tract_ms))
            raw.append({"model": model, "threads": t, "precision": "f32", "onnxruntime_ms": ort_ms,
                        "resnet_edge_ms": edge_ms, "tract_cli_ms": tract_ms})

    print()
    print("| model | threads | precision | onnxruntime p50 ms | resnet-edge p50 ms | resnet-edge / onnxruntime | tract CLI ms |")
    print("|---|---|---|---|---|---|---|")
    for name, t, o, e, ratio, tr in rows:
        tract = f"{tr:.2f}" if tr is not None else ("n/a" if args.tract else "not installed")
        print(f"| {name} | {t} | f32 | {o:.2f} | {e:.2f} | {ratio:.2f} | {tract} |")
    print(f"\ntotal {time.time() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "resnet_edge": version, "onnxruntime": onnxruntime.__version__,
                       "results": raw}, f, indent=2)


if __name__ == "__main__":
    main()
