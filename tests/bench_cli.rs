//! `resnet-edge bench` and `profile` end to end: the reports parse and hold every key, the
//! numbers are consistent with each other, `--threads 1` really runs on one thread, per-stage
//! times add up to the whole inference, and bad flags fail with a clear message.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fixture(depth: usize, form: &str) -> String {
    fixtures()
        .join(format!("resnet{depth}/{form}"))
        .display()
        .to_string()
}

const BENCH_NUMBERS: [&str; 15] = [
    "load_ms",
    "first_ms",
    "min_ms",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "peak_rss_bytes",
    "images_per_s",
    "threads",
    "batch",
    "runs",
    "warmup_runs",
];
const BENCH_STRINGS: [&str; 5] = ["model", "precision", "cpu", "isa", "kernel"];

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The invariants any latency report must satisfy, whatever the machine.
fn check_bench_numbers(v: &Value, runs: usize, threads: usize) {
    for key in BENCH_NUMBERS {
        assert!(num(v, key) >= 0.0, "{key} negative in {v}");
    }
    for key in BENCH_STRINGS {
        let s = v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(!s.is_empty(), "{key} empty");
    }
    assert_eq!(v["precision"], "f32");
    assert_eq!(num(v, "runs") as usize, runs);
    assert_eq!(num(v, "threads") as usize, threads);
    let order = ["min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"].map(|k| num(v, k));
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {order:?}"
    );
    assert!(num(v, "min_ms") > 0.0);
    assert!(num(v, "min_ms") <= num(v, "mean_ms") && num(v, "mean_ms") <= num(v, "max_ms"));
    assert!(num(v, "std_ms") <= num(v, "max_ms") - num(v, "min_ms"));
    // Throughput is images over the timed wall time, which is at least the summed latencies.
    let ceiling = num(v, "batch") * 1e3 / num(v, "mean_ms");
    assert!(
        num(v, "images_per_s") <= ceiling * 1.01,
        "{} > {ceiling}",
        num(v, "images_per_s")
    );
    assert!(
        num(v, "images_per_s") >= ceiling * 0.5,
        "{} << {ceiling}",
        num(v, "images_per_s")
    );
    if cfg!(target_os = "linux") {
        // A 224x224 model with its weights cannot fit in less than 10 MiB.
        assert!(num(v, "peak_rss_bytes") > 10.0 * 1024.0 * 1024.0);
    }
}

#[test]
fn bench_json_holds_every_key() {
    let model = fixture(18, "legacy.onnx");
    let v = run_json(&[
        "bench",
        &model,
        "--threads",
        "1",
        "--warmup-runs",
        "1",
        "--num-runs",
        "7",
        "--format",
        "json",
    ]);
    check_bench_numbers(&v, 7, 1);
    assert_eq!(v["model"], model.as_str());
    assert_eq!(v["input_shape"], serde_json::json!([1, 3, 224, 224]));
    // tract's matmul kernels left in the plan; none where our rewrites run every conv and the
    // fully connected layer (x86 with AVX2 and FMA).
    let kernels = v["kernels"].as_array().unwrap();
    assert!(
        kernels.iter().any(|k| k == &v["kernel"]) || (kernels.is_empty() && v["kernel"] == "none"),
        "{v}"
    );
}

#[test]
fn bench_csv_is_one_row_with_every_key() {
    // A dynamic-batch export at batch 2, state_dict weights through the native builder.
    for (model, batch) in [
        (fixture(18, "dynamo.onnx"), "2"),
        (fixture(34, "model.safetensors"), "1"),
    ] {
        let out = run(&[
            "bench",
            &model,
            "--batch",
            batch,
            "--threads",
            "2",
            "--warmup-runs",
            "0",
            "--num-runs",
            "4",
            "--format",
            "csv",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let header: Vec<&str> = lines[0].split(',').collect();
        let cells = split_csv(lines[1]);
        assert_eq!(header.len(), cells.len(), "{text}");
        // Rebuild a JSON object from the CSV so the same invariants apply to both formats.
        let mut v = serde_json::Map::new();
        for (k, c) in header.iter().zip(&cells) {
            let value = c
                .parse::<f64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(c.as_str()));
            v.insert(k.to_string(), value);
        }
        let v = Value::Object(v);
        check_bench_numbers(&v, 4, 2);
        assert_eq!(v["batch"].as_f64(), Some(batch.parse().unwrap()));
        assert_eq!(v["input_shape"], format!("{batch}x3x224x224").as_str());
    }
}

/// Cells of one CSV row, honouring RFC 4180 quotes.
fn split_csv(line: &str) -> Vec<String> {
    let (mut cells, mut cell, mut quoted) = (vec![], String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            _ => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

/// Clock ticks of user + system CPU of a live process, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Run `bench --threads N` for about `secs` seconds and watch the process from outside:
/// the most OS threads it ever had, and its CPU time over wall time while inferring.
fn watch_bench(threads: &str, secs: &str) -> (usize, f64, Value) {
    let model = fixture(50, "legacy.onnx");
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet-edge"))
        .args([
            "bench",
            &model,
            "--threads",
            threads,
            "--warmup-runs",
            "3",
            "--num-runs",
            "100000",
        ])
        .args(["--max-secs", secs, "--format", "json"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn resnet-edge");
    let pid = child.id();
    let (mut max_tasks, mut first, mut last) = (0, None, None);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(120) {
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            max_tasks = max_tasks.max(dir.count());
        }
        // CPU over wall from one second in (model loaded, steady state) to the last sample.
        if let Some(ticks) = cpu_ticks(pid) {
            let sample = (Instant::now(), ticks);
            if start.elapsed() >= Duration::from_secs(1) && first.is_none() {
                first = Some(sample);
            }
            last = Some(sample);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (Some((t0, c0)), Some((t1, c1))) = (first, last) else {
        panic!("process not observed")
    };
    let wall = (t1 - t0).as_secs_f64();
    assert!(wall > 1.0, "observed only {wall:.2}s");
    let util = (c1 - c0) as f64 / 100.0 / wall;
    (
        max_tasks,
        util,
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[test]
#[cfg(target_os = "linux")]
fn one_thread_means_one_busy_thread() {
    let (tasks, util, v) = watch_bench("1", "3");
    assert_eq!(tasks, 1, "--threads 1 ran {tasks} OS threads");
    // 100 Hz tick accounting: allow a little slack above one core.
    assert!(util < 1.2, "--threads 1 used {util:.2} cores");
    assert_eq!(v["os_threads"], 1);
    assert!(num(&v, "cpu_util") < 1.2, "{v}");

    // The same watch sees a pool when there is one: main thread plus two workers.
    let (tasks, _, v) = watch_bench("2", "2");
    assert!(tasks >= 3, "--threads 2 ran only {tasks} OS threads");
    assert_eq!(v["threads"], 2);
}

fn stage_ms(v: &Value) -> Vec<(String, f64, u64)> {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                num(s, "ms"),
                s["macs"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// MACs per stage (stem, layer1..layer4, head) of the fixture ResNets, worked out from the
/// architecture in models/fixtures/README.md (torchvision ResNet, widths 4 * [1, 2, 4, 8],
/// 10 classes, 224x224 input), independently of tract's graph.
fn fixture_stage_macs(depth: usize) -> Vec<u64> {
    let (bottleneck, blocks) = match depth {
        18 => (false, [2, 2, 2, 2]),
        34 => (false, [3, 4, 6, 3]),
        50 => (true, [3, 4, 6, 3]),
        101 => (true, [3, 4, 23, 3]),
        152 => (true, [3, 8, 36, 3]),
        _ => panic!("no fixture for depth {depth}"),
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let stem = 112 * 112 * 4 * 3 * 49;
    let (mut macs, mut c_in, mut res) = (vec![stem], 4u64, 56u64);
    for (stage, &count) in blocks.iter().enumerate() {
        let planes = 4u64 << stage;
        let mut total = 0;
        for block in 0..count {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let out = res / stride;
            let (o2, r2) = (out * out, res * res);
            let c_out = planes * expansion;
            total += if bottleneck {
                // torchvision v1.5: the stride sits on the 3x3 conv.
                r2 * c_in * planes + o2 * planes * planes * 9 + o2 * planes * c_out
            } else {
                o2 * c_in * planes * 9 + o2 * planes * planes * 9
            };
            if stride != 1 || c_in != c_out {
                total += o2 * c_in * c_out;
            }
            c_in = c_out;
            res = out;
        }
        macs.push(total);
    }
    macs.push(c_in * 10);
    macs
}

fn profile_json(model: &str) -> Value {
    run_json(&[
        "profile",
        model,
        "--threads",
        "1",
        "--warmup-runs",
        "1",
        "--num-runs",
        "5",
        "--format",
        "json",
    ])
}

#[test]
fn profile_stages_sum_to_the_whole_inference() {
    // Names from a legacy export, from the native builder, and none at all (dynamo: positions).
    let named = profile_json(&fixture(50, "legacy.onnx"));
    let native = profile_json(&fixture(50, "model.safetensors"));
    let positional = profile_json(&fixture(50, "dynamo.onnx"));
    let want_macs = fixture_stage_macs(50);
    let want = ["stem", "layer1", "layer2", "layer3", "layer4", "head"];
    for v in [&named, &native, &positional] {
        let stages = stage_ms(v);
        let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, want, "{}", v["model"]);
        let sum: f64 = stages.iter().map(|s| s.1).sum();
        let total = num(v, "total_ms");
        assert!(
            (sum - total).abs() <= 0.1 * total,
            "stages {sum:.3} ms vs inference {total:.3} ms"
        );
        assert!((sum - num(v, "nodes_ms")).abs() <= 1e-6 * total.max(1.0));
        // Every multiply-accumulate of the model is counted, in the stage it belongs to.
        let macs: Vec<u64> = stages.iter().map(|s| s.2).collect();
        assert_eq!(macs, want_macs, "{}", v["model"]);
        // Layers are sorted by cost, and every conv (tract turns 1x1 ones into einsums) and the
        // fc layer has its own row with a cost and a speed.
        let layers = v["layers"].as_array().unwrap();
        assert!(layers
            .windows(2)
            .all(|w| num(&w[0], "ms") >= num(&w[1], "ms")));
        let convs: Vec<&Value> = layers
            .iter()
            .filter(|l| l["macs"].as_u64().unwrap() > 0)
            .collect();
        assert_eq!(
            convs.len(),
            53 + 1,
            "{}: ResNet-50 has 53 convs and one fc",
            v["model"]
        );
        assert!(convs
            .iter()
            .all(|c| num(c, "ms") > 0.0 && num(c, "gflops") > 0.0));
        let op_sum: f64 = v["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| num(o, "ms"))
            .sum();
        assert!((op_sum - sum).abs() <= 1e-6 * sum.max(1.0));
    }
    // Named layers keep their names through tract's rewrites and ours (which add a suffix:
    // `conv1.direct`, `layer1.0.conv2.winograd_mm`).
    let top = native["layers"][0]["name"].as_str().unwrap();
    assert!(
        ["layer", "conv1", "fc"].iter().any(|p| top.starts_with(p)),
        "{top}"
    );
}

/// `profile MODEL` on one thread, no warm-up, two runs, then `extra`.
fn quick_profile(model: &str, extra: &[&str]) -> std::process::Output {
    let args = ["profile", model, "--threads", "1", "--warmup-runs", "0"];
    run(&[&args[..], &["--num-runs", "2"], extra].concat())
}

/// `--statistic min` sums each node's fastest run: no more than the mean wall time of a whole
/// run (every run's nodes take at least their minimums), and said so in the report.
#[test]
fn profile_statistic_min_sums_the_fastest_runs() {
    let model = fixture(18, "legacy.onnx");
    let out = quick_profile(&model, &["--statistic", "min", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["statistic"], "min");
    let (nodes, total) = (num(&v, "nodes_ms"), num(&v, "total_ms"));
    assert!(
        nodes > 0.0 && nodes <= total,
        "nodes {nodes} ms, runs {total} ms"
    );
    let out = quick_profile(&model, &["--statistic", "median"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected mean or min"),
        "{err}"
    );
}

#[test]
fn profile_table_lists_the_top_layers_and_csv_parses() {
    let model = fixture(18, "bn.onnx");
    let out = quick_profile(&model, &["--top", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let after = text
        .split("top 4 layers\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no top-4 table:\n{text}"));
    let rows: Vec<&str> = after.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[0].trim_start().starts_with("1 "), "{text}");
    for stage in ["stem", "layer1", "layer4", "head"] {
        assert!(
            text.lines().any(|l| l.starts_with(stage)),
            "no {stage} row:\n{text}"
        );
    }

    let out = run(&[
        "profile",
        &model,
        "--warmup-runs",
        "0",
        "--num-runs",
        "2",
        "--format",
        "csv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("section,name,stage,op,nodes,ms,percent,macs,gflops")
    );
    let rows: Vec<Vec<String>> = lines.map(split_csv).collect();
    assert!(rows.iter().all(|r| r.len() == 9), "{text}");
    let stages: Vec<&str> = rows
        .iter()
        .filter(|r| r[0] == "stage")
        .map(|r| r[1].as_str())
        .collect();
    assert_eq!(
        stages,
        ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    );
    let macs: Vec<u64> = rows
        .iter()
        .filter(|r| r[0] == "stage")
        .map(|r| r[7].parse().unwrap())
        .collect();
    assert_eq!(macs, fixture_stage_macs(18));
    let percent: f64 = rows
        .iter()
        .filter(|r| r[0] == "layer")
        .map(|r| r[6].parse::<f64>().unwrap())
        .sum();
    assert!(
        (percent - 100.0).abs() < 0.01,
        "layer shares sum to {percent}"
    );
}

#[test]
fn bad_flags_fail_clearly() {
    let model = fixture(18, "legacy.onnx");
    let cases: [(&[&str], &str); 7] = [
        (&["--num-runs", "0"], "--num-runs must be at least 1"),
        (
            &["--threads", "-1"],
            "0 (all cores) or a positive number of threads",
        ),
        (
            &["--threads=-4"],
            "0 (all cores) or a positive number of threads",
        ),
        (&["--precision", "fp64"], "unknown precision \"fp64\""),
        (
            &["--precision", "int8"],
            "is a float (f32) model, not an int8 artifact: run `resnet-edge quantize",
        ),
        (
            &["--max-secs", "0"],
            "--max-secs must be a positive number of seconds",
        ),
        (&["--warmup-runs", "-2"], "expected a whole number of runs"),
    ];
    for command in ["bench", "profile"] {
        for (flags, message) in cases {
            let mut args = vec![command, model.as_str()];
            args.extend_from_slice(flags);
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(
                stderr.contains(message),
                "{args:?}: expected {message:?} in:\n{stderr}"
            );
            assert!(out.stdout.is_empty(), "{args:?} printed a report");
        }
    }
    let out = run(&[
        "bench",
        "models/fixtures/bad/truncated.onnx",
        "--num-runs",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated.onnx"));
}
