//! The camera loop end to end: replays against `classify`, frame dropping under a slow model,
//! the overlay against a golden image, corrupt frames, a camera that unplugs and comes back,
//! the results log after `kill -9`, and a clean stop on SIGTERM.
//!
//! Models are the small fixture ResNet-18 (10 classes), so every test runs in about a second.

mod common;
use common::*;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use resnet_edge::classifier::{Classifier, ClassifierOptions, Prediction};
use resnet_edge::frame::v4l::{
    rgb_to_yuyv, yuyv_to_rgb, Device, DeviceFormat, Fourcc, Opener, V4lSource,
};
use resnet_edge::frame::{self, FrameSource, SourceOptions};
use resnet_edge::overlay::{self, OverlayInfo, BAR_FILL, TEXT};
use resnet_edge::pipeline::{
    self, Backoff, Classified, Config, Event, Observer, StopReason, Summary, Timings,
};
use resnet_edge::preprocess::load_image;

const MODEL: &str = "models/fixtures/resnet18/legacy.onnx";

fn classifier() -> Classifier {
    let options = ClassifierOptions {
        threads: 1,
        ..ClassifierOptions::default()
    };
    Classifier::open(&root().join(MODEL), &options).expect("fixture model")
}

/// What an observer saw of one frame.
#[derive(Debug)]
struct Seen {
    index: u64,
    name: Option<String>,
    size: (u32, u32),
    prediction: Prediction,
    timings: Timings,
}

#[derive(Default)]
struct Collect {
    frames: Vec<Seen>,
    events: Vec<Event>,
}

impl Observer for Collect {
    fn classified(&mut self, c: &mut Classified) -> resnet_edge::Result<()> {
        self.frames.push(Seen {
            index: c.index,
            name: c.name.clone(),
            size: c.image.dimensions(),
            prediction: c.prediction.clone(),
            timings: c.timings,
        });
        Ok(())
    }
    fn event(&mut self, e: &Event) -> resnet_edge::Result<()> {
        self.events.push(e.clone());
        Ok(())
    }
}

fn run_loop(c: &Classifier, source: &mut dyn FrameSource, config: &Config) -> (Summary, Collect) {
    let mut seen = Collect::default();
    let summary =
        pipeline::run(c, source, config, &mut seen, &AtomicBool::new(false)).expect("loop runs");
    assert_eq!(
        summary.captured,
        summary.classified + summary.dropped,
        "{summary:?}"
    );
    (summary, seen)
}

fn top1(p: &Prediction) -> usize {
    p.top[0].0
}

/// Each frame's top-1 (and whole output row) equals `classify` on the same image.
fn assert_same_as_classify(c: &Classifier, seen: &[Seen], images: &[RgbImage]) {
    let want = c.classify(images, 5).unwrap();
    assert_eq!(seen.len(), want.len());
    for (s, w) in seen.iter().zip(&want) {
        assert_eq!(top1(&s.prediction), top1(w), "{:?}", s.name);
        assert!(rel_diff(&s.prediction.raw, &w.raw) < 1e-5, "{:?}", s.name);
    }
}

#[test]
fn dir_replay_classifies_every_photo_like_classify() {
    let c = classifier();
    // models/photos holds a README.md too: skipped by extension, not a corrupt frame.
    let mut source = frame::open("dir:models/photos", &SourceOptions::default()).unwrap();
    assert!(!source.live(), "an unpaced replay waits for the model");
    let (summary, seen) = run_loop(&c, source.as_mut(), &Config::default());
    assert_eq!(
        (
            summary.captured,
            summary.classified,
            summary.dropped,
            summary.corrupt
        ),
        (6, 6, 0, 0)
    );
    assert_eq!(summary.stopped, StopReason::End);
    let names: Vec<String> = photos()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let seen_names: Vec<String> = seen
        .frames
        .iter()
        .map(|s| s.name.clone().unwrap())
        .collect();
    assert_eq!(seen_names, names);
    let images: Vec<RgbImage> = photos().iter().map(|p| load_image(p).unwrap()).collect();
    assert_same_as_classify(&c, &seen.frames, &images);
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .unwrap();
    out
}

/// The photos as JPEG files in `dir`, and their bytes.
fn photo_jpegs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    photos()
        .iter()
        .map(|p| {
            let bytes = jpeg_bytes(&load_image(p).unwrap());
            let path = dir.join(format!("{}.jpg", stem(p)));
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes)
        })
        .collect()
}

#[test]
fn mjpeg_replay_matches_classify_and_survives_a_truncated_frame() {
    let c = classifier();
    let tmp = tempfile::tempdir().unwrap();
    let jpegs = photo_jpegs(tmp.path());
    // Frame 2 is cut in half (a camera or recorder dropping bytes), in the middle of the stream.
    let mut stream = Vec::new();
    for (i, (_, bytes)) in jpegs.iter().enumerate() {
        stream.extend_from_slice(if i == 2 {
            &bytes[..bytes.len() / 2]
        } else {
            bytes
        });
    }
    let path = tmp.path().join("stream.mjpeg");
    std::fs::write(&path, &stream).unwrap();

    let mut source = frame::open(
        &format!("mjpeg:{}", path.display()),
        &SourceOptions::default(),
    )
    .unwrap();
    let (summary, seen) = run_loop(&c, source.as_mut(), &Config::default());
    assert_eq!(
        (summary.classified, summary.corrupt, summary.dropped),
        (5, 1, 0),
        "{summary:?}"
    );
    assert!(
        matches!(&seen.events[..], [Event::Corrupt(r)] if r.contains("truncated")),
        "{:?}",
        seen.events
    );
    let whole: Vec<RgbImage> = jpegs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, (p, _))| load_image(p).unwrap())
        .collect();
    assert_same_as_classify(&c, &seen.frames, &whole);
}

#[test]
fn a_fast_source_drops_frames_instead_of_queueing_them() {
    let c = classifier();
    // 200 fps into a model slowed to ~40 ms per frame (~25 fps).
    let options = SourceOptions {
        fps: Some(200.0),
        ..SourceOptions::default()
    };
    let mut source = frame::open("synthetic:160x120", &options).unwrap();
    let config = Config {
        max_frames: Some(12),
        simulate_inference: Duration::from_millis(40),
        ..Config::default()
    };
    let (summary, seen) = run_loop(&c, source.as_mut(), &config);
    assert_eq!(summary.classified, 12);
    assert_eq!(summary.stopped, StopReason::FrameLimit);
    assert!(summary.dropped >= summary.classified, "{summary:?}");
    // Classified frames skip ahead in the capture sequence: the newest frame is taken.
    assert!(seen.frames.windows(2).all(|w| w[1].index > w[0].index));
    assert!(
        seen.frames.last().unwrap().index >= 2 * 12,
        "{:?}",
        seen.frames.iter().map(|s| s.index).collect::<Vec<_>>()
    );
    // Latency stays near one inference: with a queue it would grow by one inference per frame
    // and reach ~12 inferences by the last frame.
    let slowest = seen
        .frames
        .iter()
        .map(|s| s.timings.inference)
        .fold(0.0, f64::max);
    let latencies: Vec<f64> = seen.frames.iter().map(|s| s.timings.latency).collect();
    assert!(
        latencies.iter().all(|&l| l < 3.0 * slowest),
        "latencies {latencies:?}, slowest inference {slowest}"
    );
    let first: f64 = latencies[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = latencies[8..].iter().sum::<f64>() / 4.0;
    assert!(last < first + slowest, "latency grew: {latencies:?}");
    assert!(
        summary.latency.p99 < 3.0 * slowest && summary.inference.p50 >= 40.0,
        "{summary:?}"
    );
}

/// The frame every overlay test draws on: a gradient, no value above 254 so no input pixel
/// can pass for overlay white.
fn overlay_input(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 250) as u8, (y % 250) as u8, 100])
    })
}

#[test]
fn overlay_matches_the_golden_image_and_the_documented_geometry() {
    let input = overlay_input(320, 240);
    let mut img = input.clone();
    overlay::draw(
        &mut img,
        &OverlayInfo {
            label: "tiger cat",
            score: 0.75,
            fps: 12.5,
            inference_ms: 80.4,
        },
    );

    // Hand-computed from the layout in overlay.rs's doc, not from the code: 6x10 font
    // (320 < 480), margin m = 5, band = 3m + 2ch = 35 rows, bar at (5, 20), L = (320 - 10) / 2
    // = 155 long, 10 high, filled for round(0.75 * 153) = 115 px from x = 6.
    let px = |x, y| img.get_pixel(x, y).0;
    let dim = |x, y| input.get_pixel(x, y).0.map(|c| c >> 1);
    for y in 35..240 {
        for x in 0..320 {
            assert_eq!(
                px(x, y),
                input.get_pixel(x, y).0,
                "({x}, {y}) below the band changed"
            );
        }
    }
    for (x, y) in [(5, 25), (159, 25), (80, 20), (80, 29)] {
        assert_eq!(px(x, y), TEXT, "bar outline at ({x}, {y})");
    }
    for y in 21..29 {
        for x in 6..121 {
            assert_eq!(px(x, y), BAR_FILL, "bar fill at ({x}, {y})");
        }
        for x in 121..159 {
            assert_eq!(px(x, y), dim(x, y), "unfilled bar at ({x}, {y})");
        }
    }
    // Text: every non-space 6x10 cell has white pixels, spaces and the rest of the line none.
    let cell_has_text =
        |x0: u32, y0: u32| (x0..x0 + 6).any(|x| (y0..y0 + 10).any(|y| px(x, y) == TEXT));
    for (line, x0, y0) in [("tiger cat 0.75", 5, 5), ("12.5 fps 80 ms", 165, 20)] {
        for (i, ch) in line.chars().enumerate() {
            assert_eq!(
                cell_has_text(x0 + 6 * i as u32, y0),
                ch != ' ',
                "{line:?} char {i} {ch:?}"
            );
        }
    }
    assert!(
        !(5 + 6 * 14..320).any(|x| (5..15).any(|y| px(x, y) == TEXT)),
        "text past line 1"
    );
    assert_eq!(px(300, 2), dim(300, 2));

    // And pixel for pixel against the committed golden (RESNET_EDGE_BLESS=1 rewrites it).
    let golden = root().join("tests/data/overlay_golden.png");
    if std::env::var_os("RESNET_EDGE_BLESS").is_some() {
        img.save(&golden).unwrap();
    }
    let want = image::open(&golden)
        .expect("tests/data/overlay_golden.png")
        .to_rgb8();
    assert_eq!(want.dimensions(), img.dimensions());
    let diff = want
        .pixels()
        .zip(img.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diff, 0, "{diff} pixels differ from the golden overlay");
}

#[test]
fn overlay_scales_up_on_wide_frames_and_clamps_scores() {
    // 640 wide: 10x20 font, m = 10, band 70 rows, bar at (10, 40), L = 310, inner 308.
    let mut img = overlay_input(640, 480);
    overlay::draw(
        &mut img,
        &OverlayInfo {
            label: "x",
            score: 0.5,
            fps: 0.0,
            inference_ms: 1.0,
        },
    );
    assert_eq!(img.get_pixel(11, 50).0, BAR_FILL);
    assert_eq!(img.get_pixel(11 + 153, 50).0, BAR_FILL);
    assert_ne!(img.get_pixel(11 + 154, 50).0, BAR_FILL);
    assert_eq!(img.get_pixel(10 + 309, 50).0, TEXT);
    assert_eq!(
        img.get_pixel(5, 75).0,
        overlay_input(640, 480).get_pixel(5, 75).0
    );
    let mut tiny = overlay_input(8, 4);
    overlay::draw(
        &mut tiny,
        &OverlayInfo {
            label: "a very long label",
            score: f32::NAN,
            fps: 1.0,
            inference_ms: 1.0,
        },
    );
    let mut over = overlay_input(320, 240);
    overlay::draw(
        &mut over,
        &OverlayInfo {
            label: "",
            score: 7.0,
            fps: 1.0,
            inference_ms: 1.0,
        },
    );
    assert_eq!(
        over.get_pixel(158, 25).0,
        BAR_FILL,
        "a score above 1 fills the bar, no more"
    );
}

// ---- A fake V4L2 camera: unplugged mid-stream, back after a few failed reopen attempts ----

/// How a fake camera behaves once its buffers are used up.
enum AfterLast {
    /// Capture fails with this errno, as a camera being unplugged does.
    Fail(i32),
    /// Stays connected but sends nothing; after this many polls it sets the run's stop flag.
    IdleThenStop(Arc<AtomicBool>, u32),
}

struct FakeCamera {
    format: DeviceFormat,
    buffers: Vec<Vec<u8>>,
    after: AfterLast,
}

impl Device for FakeCamera {
    fn format(&self) -> DeviceFormat {
        self.format
    }
    fn capture(&mut self, _: Duration, f: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        // 25 fps, slower than the fixture model, so no frame is dropped.
        std::thread::sleep(Duration::from_millis(40));
        if !self.buffers.is_empty() {
            f(&self.buffers.remove(0));
            return Ok(true);
        }
        match &mut self.after {
            AfterLast::Fail(errno) => Err(io::Error::from_raw_os_error(*errno)),
            AfterLast::IdleThenStop(stop, polls) => {
                if *polls == 0 {
                    stop.store(true, Ordering::SeqCst);
                }
                *polls = polls.saturating_sub(1);
                Ok(false)
            }
        }
    }
}

fn test_frame() -> RgbImage {
    image::imageops::resize(
        &load_image(&photos()[1]).unwrap(),
        96,
        64,
        image::imageops::FilterType::Triangle,
    )
}

/// Open attempts: 1 works (3 YUYV frames, then ENODEV), 2 and 3 fail as an unplugged camera
/// does (ENOENT, EIO), 4 works (MJPEG: good, truncated, good, good, then `after`), later ones
/// fail with `errno`.
fn fake_opener(
    attempts: Arc<Mutex<Vec<Instant>>>,
    stop: Option<Arc<AtomicBool>>,
    errno: i32,
) -> Opener {
    let img = test_frame();
    let yuyv = rgb_to_yuyv(&img);
    let jpeg = jpeg_bytes(&img);
    Box::new(move || {
        let n = {
            let mut a = attempts.lock().unwrap();
            a.push(Instant::now());
            a.len()
        };
        let fmt = |fourcc| DeviceFormat {
            fourcc,
            width: 96,
            height: 64,
            stride: 192,
            fps: Some(25.0),
        };
        match n {
            1 => Ok(Box::new(FakeCamera {
                format: fmt(Fourcc::Yuyv),
                buffers: vec![yuyv.clone(); 3],
                after: AfterLast::Fail(libc::ENODEV),
            }) as Box<dyn Device>),
            2 => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            3 => Err(io::Error::from_raw_os_error(libc::EIO)),
            4 => Ok(Box::new(FakeCamera {
                format: fmt(Fourcc::Mjpeg),
                buffers: vec![
                    jpeg.clone(),
                    jpeg[..jpeg.len() / 2].to_vec(),
                    jpeg.clone(),
                    jpeg.clone(),
                ],
                after: match &stop {
                    Some(stop) => AfterLast::IdleThenStop(Arc::clone(stop), 5),
                    None => AfterLast::Fail(libc::EIO),
                },
            })),
            _ => Err(io::Error::from_raw_os_error(errno)),
        }
    })
}

#[test]
fn a_camera_that_disappears_is_retried_with_backoff_and_resumes() {
    let c = classifier();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let opener = fake_opener(Arc::clone(&attempts), Some(Arc::clone(&stop)), libc::ENOENT);
    let mut source = V4lSource::with_opener("v4l:fake", opener).unwrap();
    assert_eq!(
        source.negotiated().as_deref(),
        Some("YUYV 96x64 at 25.0 fps")
    );
    let backoff = Backoff {
        initial: Duration::from_millis(30),
        max: Duration::from_millis(100),
    };
    let config = Config {
        backoff,
        ..Config::default()
    };
    let mut seen = Collect::default();
    let summary = pipeline::run(&c, &mut source, &config, &mut seen, &stop).unwrap();
    assert_eq!(
        (summary.captured, summary.corrupt, summary.reconnects),
        (6, 1, 1),
        "{summary:?}"
    );
    assert_eq!(summary.captured, summary.classified + summary.dropped);
    assert_eq!(summary.stopped, StopReason::Stopped);
    let kinds: Vec<String> = seen.events.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(
        matches!(&seen.events[0], Event::Lost(r) if r.contains("No such device")),
        "{kinds:?}"
    );
    assert!(
        matches!(&seen.events[1], Event::Reconnected { attempts: 3, .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(&seen.events[2], Event::Corrupt(r) if r.contains("truncated")),
        "{kinds:?}"
    );

    // Reopen attempts 2, 3, 4 after waits of 30, 60 and 100 (doubled, capped) ms.
    let t = attempts.lock().unwrap().clone();
    assert_eq!(t.len(), 4);
    let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(
        gaps[1] >= 55 && gaps[2] >= 95 && gaps[2] < 1000,
        "gaps {gaps:?}"
    );

    // Frames from before and after the reconnect, YUYV and MJPEG, decoded to what was sent.
    // The camera is slower than the model, so normally none is dropped.
    let img = test_frame();
    let from_yuyv = yuyv_to_rgb(&rgb_to_yuyv(&img), 96, 64, 192).unwrap();
    let from_jpeg = image::load_from_memory(&jpeg_bytes(&img))
        .unwrap()
        .to_rgb8();
    assert!(
        seen.frames.iter().any(|s| s.index < 3) && seen.frames.iter().any(|s| s.index >= 3),
        "{:?}",
        seen.frames
    );
    assert!(seen.frames.iter().all(|s| s.size == (96, 64)));
    for s in &seen.frames {
        let want = if s.index < 3 { &from_yuyv } else { &from_jpeg };
        assert_same_as_classify(&c, std::slice::from_ref(s), std::slice::from_ref(want));
    }
}

#[test]
fn a_camera_that_comes_back_broken_is_a_clean_error() {
    let c = classifier();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    // After the MJPEG device's EIO, reopening fails with EINVAL: not a camera coming back.
    let mut source =
        V4lSource::with_opener("v4l:fake", fake_opener(attempts, None, libc::EINVAL)).unwrap();
    let config = Config {
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        ..Config::default()
    };
    let err = pipeline::run(
        &c,
        &mut source,
        &config,
        &mut Collect::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("reopening"), "{err}");
}

#[test]
fn v4l2_camera_when_available() {
    // RESNET_EDGE_TEST_V4L2=/dev/video0 cargo test --test camera v4l2
    let Some(dev) = std::env::var_os("RESNET_EDGE_TEST_V4L2") else {
        eprintln!("skipped: set RESNET_EDGE_TEST_V4L2=/dev/videoN to test a real camera");
        return;
    };
    let c = classifier();
    let options = SourceOptions {
        size: Some((640, 480)),
        ..SourceOptions::default()
    };
    let mut source = V4lSource::open(Path::new(&dev), &options).expect("open the camera");
    eprintln!("negotiated {:?}", source.format());
    let config = Config {
        max_frames: Some(10),
        ..Config::default()
    };
    let (summary, seen) = run_loop(&c, &mut source, &config);
    eprintln!("{summary}");
    assert_eq!(summary.classified, 10);
    assert!(seen.frames.iter().all(|s| s.size.0 > 0 && s.size.1 > 0));
}

// ---- The command line ----

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resnet-edge"));
    cmd.current_dir(root());
    cmd
}

/// Wait until `path` has at least `n` lines (the loop is running), up to 30 s.
fn wait_for_lines(path: &Path, n: usize) {
    let t = Instant::now();
    while std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < n
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {n} log lines after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "last line cut short");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn the_log_survives_kill_9_and_the_next_run_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.jsonl");
    let log_arg = log.to_str().unwrap();
    let mut child = bin()
        .args([
            "camera",
            MODEL,
            "--source",
            "synthetic:64x48",
            "--fps",
            "200",
            "--threads",
            "1",
            "--quiet",
        ])
        .args(["--log", log_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&log, 10);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lines = parse_lines(&log);
    assert!(lines.len() >= 10);
    for l in &lines {
        assert_eq!(l["source"], "synthetic:64x48");
        assert!(
            l["top"][0]["label"].is_string() && l["ms"]["inference"].as_f64().unwrap() > 0.0,
            "{l}"
        );
    }

    let out = bin()
        .args([
            "camera",
            MODEL,
            "--source",
            "synthetic:64x48",
            "--frames",
            "2",
            "--threads",
            "1",
            "--quiet",
        ])
        .args(["--log", log_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(parse_lines(&log).len(), lines.len() + 2);
}

#[test]
fn sigterm_finishes_the_frame_and_prints_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.jsonl");
    let child = bin()
        .args([
            "camera",
            MODEL,
            "--source",
            "synthetic:64x48",
            "--threads",
            "1",
            "--simulate-inference-ms",
            "20",
        ])
        .args(["--log", log.to_str().unwrap(), "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lines(&log, 3);
    // SAFETY: signalling our own child by its pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .skip_while(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )
    .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(summary["stopped"], "stopped");
    // Every classified frame was logged before exit: nothing in flight was lost.
    assert_eq!(
        summary["classified"].as_u64().unwrap() as usize,
        parse_lines(&log).len()
    );
    assert!(summary["inference"]["p50"].as_f64().unwrap() >= 20.0);
}

#[test]
fn camera_over_a_folder_prints_writes_frames_and_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let log = tmp.path().join("log.jsonl");
    let out = bin()
        .args([
            "camera",
            MODEL,
            "--source",
            "dir:models/photos",
            "--threads",
            "1",
            "--png-every",
            "2",
        ])
        .args([
            "--display",
            &format!("png:{}", frames.display()),
            "--log",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in photos() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("frame") && l.contains(&name)),
            "{name} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("captured 6  classified 6  dropped 0  corrupt 0"),
        "{stdout}"
    );
    let mut written: Vec<_> = std::fs::read_dir(&frames)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(
        written,
        ["frame-000000.png", "frame-000002.png", "frame-000004.png"]
    );
    let lines = parse_lines(&log);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[1]["name"], "chelsea.png");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let bad = run(&[
        "camera",
        MODEL,
        "--source",
        &format!("dir:{}", empty.display()),
    ]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no .jpg"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = run(&["camera", MODEL, "--source", "webcam"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected v4l:"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
