#!/usr/bin/env python3
"""Side-by-side latency: the same ONNX file through onnxruntime and through `resnet-edge bench`
(and the `tract` CLI when it is on PATH), at each thread count.

Every measurement is a fresh process that loads the model, warms up, then times single-image
inferences and reports their median. The runtimes take turns, A B A B ..., so slow drift of the
machine (thermal, other load) hits both; the printed figure per runtime is the median of its
per-round medians, and the ratio is resnet-edge over onnxruntime (above 1 = resnet-edge slower).
The "best" ratio divides the fastest single inference of each runtime over all its rounds: on a
noisy VM, where interference only ever adds time, it is the steadier of the two figures.

    python benches/compare_onnxruntime.py [--bin target/release/resnet-edge]
        [--model a.onnx ...] [--threads 1,2] [--rounds 3] [--num-runs 30] [--warmup-runs 5]
        [--int8] [--int8-runs 3] [--no-before]

Each f32 round also runs resnet-edge with its speed rewrites off (`--no-rewrite all`, the
"before" column) unless --no-before, so one run shows what the rewrites buy.

With --int8 each model is also quantised twice and the int8 files compared the same way:
`resnet-edge quantize` (calibrated on models/photos) against onnxruntime's own QOperator export
of the same float model (quantize_static, per-channel int8 weights, uint8 activations; its
calibration data is random, which changes its accuracy, not its speed). Those rows also print
resnet-edge int8 over resnet-edge f32 (same threads, same run) and the int8/f32 weight bytes.

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


class Timing(float):
    """A measurement's median in ms (what it compares as), with its fastest run in `best`."""

    def __new__(cls, report: dict):
        timing = super().__new__(cls, report["p50_ms"])
        timing.best = report["min_ms"]
        return timing


def measure_ort(model, threads, args) -> Timing:
    cmd = [sys.executable, __file__, "--ort-worker", model, str(threads),
           str(args.warmup_runs), str(args.num_runs)]
    return Timing(run_json(cmd, args.timeout))



def measure_edge(model, threads, args, precision="f32", runs=None, warmup=None,
                 no_rewrite=None) -> Timing:
    runs = args.num_runs if runs is None else runs
    warmup = args.warmup_runs if warmup is None else warmup
    cmd = [args.bin, "bench", model, "--threads", str(threads), "--precision", precision,
           "--warmup-runs", str(warmup), "--num-runs", str(runs), "--format", "json"]
    if no_rewrite:
        cmd += ["--no-rewrite", no_rewrite]
    return Timing(run_json(cmd, args.timeout))


def best_ratio(edge: list, ort: list) -> float:
    """Fastest resnet-edge inference over fastest onnxruntime one, across every round."""
    return min(e.best for e in edge) / min(o.best for o in ort)


def quantize_edge(model: str, out: str, args) -> dict:
    """resnet-edge's own int8 artifact of `model`; returns its quantize report."""
    cmd = [args.bin, "quantize", model, "--calib", os.path.join(ROOT, "models/photos"),
           "--out", out, "--format", "json"]
    return run_json(cmd, args.timeout * 4)


def quantize_ort(model: str, out: str) -> None:
    """onnxruntime's QOperator int8 export of `model` (its own quantiser, for its own kernels)."""
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    shape = input_shape(model)
    name = __import__("onnx").load(model, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{name: rng.standard_normal(shape, dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out + ".pre.onnx"
    quant_pre_process(model, prepared)  # shape inference + folding its quantiser expects
    quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)


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
    p.add_argument("--no-before", action="store_true",
                   help="skip the f32 runs with every speed rewrite off")
    p.add_argument("--int8", action="store_true", help="also compare int8 artifacts (see above)")
    p.add_argument("--int8-runs", type=int, default=3,
                   help="timed runs per int8 measurement (tract's int8 is slow on x86, see README)")
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
    rows, raw, int8_rows = [], [], []
    for model in models:
        name = (os.path.splitext(os.path.basename(model))[0]
                if os.path.dirname(os.path.abspath(model)) == os.path.abspath(args.models_dir) else model)
        shape = input_shape(model)
        for t in threads:
            ort_ms, edge_ms, before_ms = [], [], []
            for r in range(args.rounds):
                ort_ms.append(measure_ort(model, t, args))
                edge_ms.append(measure_edge(model, t, args))
                before = ""
                if not args.no_before:
                    before_ms.append(measure_edge(model, t, args, no_rewrite="all"))
                    before = f" (rewrites off {before_ms[-1]:.2f} ms)"
                print(f"  {name} threads {t} round {r + 1}: onnxruntime {ort_ms[-1]:.2f} ms, "
                      f"resnet-edge {edge_ms[-1]:.2f} ms{before}", flush=True)
            tract_ms = None
            if args.tract and t == 1:
                tract_ms = statistics.median(measure_tract(model, shape, args) for _ in range(args.rounds))
            o, e = statistics.median(ort_ms), statistics.median(edge_ms)
            b = statistics.median(before_ms) if before_ms else None
            rows.append((name, t, "f32", o, e, e / o, best_ratio(edge_ms, ort_ms), b, tract_ms))
            raw.append({"model": model, "threads": t, "precision": "f32", "onnxruntime_ms": ort_ms,
                        "resnet_edge_ms": edge_ms, "resnet_edge_rewrites_off_ms": before_ms,
                        "onnxruntime_best_ms": [o.best for o in ort_ms],
                        "resnet_edge_best_ms": [e.best for e in edge_ms],
                        "tract_cli_ms": tract_ms})
        if not args.int8:
            continue
        base = os.path.join(args.models_dir, os.path.splitext(os.path.basename(model))[0])
        edge_q, ort_q = base + ".int8.onnx", base + ".ort-int8.onnx"
        report = quantize_edge(model, edge_q, args)
        quantize_ort(model, ort_q)
        for t in threads:
            ort_ms, edge_ms, f32_ms = [], [], []
            for r in range(args.rounds):
                ort_ms.append(measure_ort(ort_q, t, args))
                edge_ms.append(measure_edge(edge_q, t, args, "int8", args.int8_runs, 1))
                f32_ms.append(measure_edge(model, t, args))
                print(f"  {name} int8 threads {t} round {r + 1}: onnxruntime {ort_ms[-1]:.2f} ms, "
                      f"resnet-edge {edge_ms[-1]:.2f} ms (its f32 {f32_ms[-1]:.2f} ms)", flush=True)
            o, e, f = (statistics.median(v) for v in (ort_ms, edge_ms, f32_ms))
            int8_rows.append((name, t, o, e, e / o, best_ratio(edge_ms, ort_ms), e / f,
                              report["weight_ratio"]))
            raw.append({"model": edge_q, "threads": t, "precision": "int8", "onnxruntime_ms": ort_ms,
                        "resnet_edge_ms": edge_ms, "resnet_edge_f32_ms": f32_ms,
                        "onnxruntime_best_ms": [o.best for o in ort_ms],
                        "resnet_edge_best_ms": [e.best for e in edge_ms],
                        "weight_ratio": report["weight_ratio"]})

    print()
    print("| model | threads | precision | onnxruntime p50 ms | resnet-edge p50 ms | resnet-edge / onnxruntime "
          "| best runs: resnet-edge / onnxruntime | before: rewrites off p50 ms | before / onnxruntime "
          "| tract CLI ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, t, prec, o, e, ratio, best, b, tr in rows:
        tract = f"{tr:.2f}" if tr is not None else ("n/a" if args.tract else "not installed")
        before = f"{b:.2f} | {b / o:.2f}" if b is not None else "- | -"
        print(f"| {name} | {t} | {prec} | {o:.2f} | {e:.2f} | {ratio:.2f} | {best:.2f} | {before} | {tract} |")
    if int8_rows:
        print()
        print("| model | threads | onnxruntime int8 p50 ms | resnet-edge int8 p50 ms | resnet-edge / onnxruntime "
              "| best runs: resnet-edge / onnxruntime | resnet-edge int8 / own f32 | int8 / f32 weight bytes |")
        print("|---|---|---|---|---|---|---|---|")
        for name, t, o, e, ratio, best, own, w in int8_rows:
            print(f"| {name} | {t} | {o:.2f} | {e:.2f} | {ratio:.2f} | {best:.2f} | {own:.2f} | {w:.2f} |")
    print(f"\ntotal {time.time() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "resnet_edge": version, "onnxruntime": onnxruntime.__version__,
                       "results": raw}, f, indent=2)


if __name__ == "__main__":
    main()
