//! The camera loop: capture -> preprocess -> inference -> output, each on its own thread.
//!
//! Capture, preprocess and inference are joined by one-slot channels ([`Slot`]) that keep only
//! the newest frame: when the camera is faster than the model, a waiting frame is replaced
//! (and counted as dropped) instead of queued, so a result is never older than about one
//! inference. Replays that are not paced (`dir:` and `mjpeg:` without `--fps`) wait for the
//! model instead, so every frame of them is classified. Inference reuses one tract run state
//! and recycles its input buffers. Output gets every result over a short bounded queue (the
//! results log must see them all) and owns the [`Observer`] that prints, logs and displays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use serde::Serialize;
use tract_core::prelude::{tvec, Tensor};

use crate::classifier::{Classifier, Prediction};
use crate::display::Sink;
use crate::frame::{Capture, FrameSource};
use crate::labels::Labels;
use crate::manifest::OutputKind;
use crate::overlay::{self, OverlayInfo};
use crate::results_log::{rfc3339, ResultsLog};
use crate::topk::{softmax, top_k};
use crate::{Error, Result};

/// Reconnect delays after a camera is lost: `initial`, doubling up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub top_k: usize,
    /// Stop after this many classified frames.
    pub max_frames: Option<u64>,
    /// Sleep added to every inference: stands in for a slower model or device in tests and
    /// demos of frame dropping (`--simulate-inference-ms`).
    pub simulate_inference: Duration,
    pub backoff: Backoff,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            top_k: 5,
            max_frames: None,
            simulate_inference: Duration::ZERO,
            backoff: Backoff::default(),
        }
    }
}

/// Per-frame stage times, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    /// The source's work producing the frame (reading, decoding, converting), not the wait
    /// for it.
    pub capture: f64,
    pub preprocess: f64,
    pub inference: f64,
    /// From the frame being available to its classification: waiting included.
    pub latency: f64,
}

/// One classified frame, as the [`Observer`] sees it.
#[derive(Debug)]
pub struct Classified {
    /// Capture sequence number (counting dropped frames, so gaps show drops).
    pub index: u64,
    /// How many frames were classified before this one.
    pub ordinal: u64,
    pub name: Option<String>,
    /// The frame as captured; observers may draw on it.
    pub image: RgbImage,
    pub prediction: Prediction,
    pub timings: Timings,
    /// When it was captured.
    pub time: SystemTime,
    /// Classified frames per second over the last few results.
    pub fps: f64,
}

/// Things that happen to a source, for the observer to report.
#[derive(Clone, Debug)]
pub enum Event {
    Corrupt(String),
    Lost(String),
    Reconnected { after: Duration, attempts: u32 },
}

/// Receives results on the output thread. An error stops the run (a full disk must not go
/// unnoticed).
pub trait Observer: Send {
    fn classified(&mut self, frame: &mut Classified) -> Result<()>;
    fn event(&mut self, event: &Event) -> Result<()> {
        let _ = event;
        Ok(())
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The source ran out of frames.
    End,
    /// `stop` was set (SIGINT/SIGTERM).
    Stopped,
    /// `max_frames` were classified.
    FrameLimit,
}

/// Percentiles of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageStats {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub source: String,
    /// Frames decoded from the source.
    pub captured: u64,
    pub classified: u64,
    /// Captured but not classified: replaced by a newer frame, or pending at stop.
    pub dropped: u64,
    /// Frames the source could not decode, skipped.
    pub corrupt: u64,
    pub reconnects: u64,
    pub seconds: f64,
    /// Classified frames per second over the whole run.
    pub fps: f64,
    pub stopped: StopReason,
    pub capture: StageStats,
    pub preprocess: StageStats,
    pub inference: StageStats,
    pub output: StageStats,
    pub latency: StageStats,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "summary ({}, {:?})", self.source, self.stopped)?;
        writeln!(
            f,
            "  frames   captured {}  classified {}  dropped {}  corrupt {}  reconnects {}",
            self.captured, self.classified, self.dropped, self.corrupt, self.reconnects
        )?;
        writeln!(
            f,
            "  rate     {:.2} classified fps over {:.1} s",
            self.fps, self.seconds
        )?;
        writeln!(
            f,
            "  ms         {:>8} {:>8} {:>8} {:>8}",
            "p50", "p90", "p99", "mean"
        )?;
        for (name, s) in [
            ("capture", &self.capture),
            ("preproc", &self.preprocess),
            ("infer", &self.inference),
            ("output", &self.output),
            ("latency", &self.latency),
        ] {
            writeln!(
                f,
                "  {name:<9}{:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                s.p50, s.p90, s.p99, s.mean
            )?;
        }
        Ok(())
    }
}

/// Latency histogram with 1% wide logarithmic buckets from 1 us to ~17 min: fixed memory for
/// runs of any length, percentiles within 1%.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: f64,
    max: f64,
}

const HIST_MIN_MS: f64 = 1e-3;
const HIST_RATIO: f64 = 1.01;
const HIST_BUCKETS: usize = 2100;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
            sum: 0.0,
            max: 0.0,
        }
    }
}

impl Histogram {
    pub fn add(&mut self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        let b = if ms <= HIST_MIN_MS {
            0
        } else {
            ((ms / HIST_MIN_MS).ln() / HIST_RATIO.ln()) as usize + 1
        };
        self.counts[b.min(HIST_BUCKETS - 1)] += 1;
        self.n += 1;
        self.sum += ms;
        self.max = self.max.max(ms);
    }

    /// The `q` quantile (0..=1): the geometric middle of the bucket holding it, capped by the
    /// largest value seen.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let v = if b == 0 {
                    HIST_MIN_MS
                } else {
                    HIST_MIN_MS * HIST_RATIO.powf(b as f64 - 0.5)
                };
                return v.min(self.max);
            }
        }
        self.max
    }

    pub fn stats(&self) -> StageStats {
        StageStats {
            count: self.n,
            mean: if self.n == 0 {
                0.0
            } else {
                self.sum / self.n as f64
            },
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

/// A one-value channel. `replace` swaps out a waiting value (returned, so the caller counts
/// the drop); `put` waits for the slot to empty. Either side closes it: the consumer still
/// gets a value left in a closed slot, a producer gets its value back.
pub struct Slot<T> {
    state: Mutex<(Option<T>, bool)>,
    changed: Condvar,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            state: Mutex::new((None, false)),
            changed: Condvar::new(),
        }
    }
}

/// What became of a value offered to a [`Slot`].
pub enum Offer<T> {
    Stored,
    /// Stored, and this older value was thrown out.
    Replaced(T),
    /// The slot is closed; here is the value back.
    Closed(T),
}

impl<T> Slot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<T>, bool)> {
        // A panicking holder cannot leave (Option, bool) inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn replace(&self, value: T) -> Offer<T> {
        let mut s = self.lock();
        if s.1 {
            return Offer::Closed(value);
        }
        let old = s.0.replace(value);
        self.changed.notify_all();
        old.map_or(Offer::Stored, Offer::Replaced)
    }

    pub fn put(&self, value: T) -> Offer<T> {
        let mut s = self.lock();
        while s.0.is_some() && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.1 {
            return Offer::Closed(value);
        }
        s.0 = Some(value);
        self.changed.notify_all();
        Offer::Stored
    }

    /// The next value, waiting for one; `None` once closed and empty.
    pub fn take(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(v) = s.0.take() {
                self.changed.notify_all();
                return Some(v);
            }
            if s.1 {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }

    /// Close and hand back whatever was waiting.
    pub fn close_and_drain(&self) -> Option<T> {
        let mut s = self.lock();
        s.1 = true;
        self.changed.notify_all();
        s.0.take()
    }
}

struct Captured {
    index: u64,
    name: Option<String>,
    image: RgbImage,
    at: Instant,
    time: SystemTime,
    timings: Timings,
}

enum Out {
    Result(Classified),
    Event(Event),
}

#[derive(Default)]
struct Counters {
    captured: AtomicU64,
    classified: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
    reconnects: AtomicU64,
}

/// Shared between the stage threads: why and whether to stop, and the first fatal error.
struct Control<'a> {
    external: &'a AtomicBool,
    halt: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    error: Mutex<Option<Error>>,
}

impl Control<'_> {
    fn stopping(&self) -> bool {
        self.halt.load(Ordering::SeqCst) || self.external.load(Ordering::SeqCst)
    }

    fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert(reason);
        self.halt.store(true, Ordering::SeqCst);
    }

    fn fail(&self, e: Error) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        self.halt.store(true, Ordering::SeqCst);
    }
}

/// Runs its closure when dropped: each stage closes its slots even if it panics, so the other
/// stages wake up and end instead of waiting forever; a panic also halts the run.
struct OnExit<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnExit<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sleep `d`, waking early if the run is stopping.
fn sleep_unless_stopped(d: Duration, control: &Control) {
    let end = Instant::now() + d;
    while !control.stopping() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Run the loop until the source ends, `stop` is set (a signal handler sets it), or
/// `max_frames` are classified; the frame in inference when it stops is finished and output.
pub fn run(
    classifier: &Classifier,
    source: &mut dyn FrameSource,
    config: &Config,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Summary> {
    if classifier.plan.batch() != 1 {
        return Err(Error::usage(
            "the camera loop classifies one frame at a time: use --batch 1",
        ));
    }
    if config.top_k == 0 {
        return Err(Error::usage("--top-k must be at least 1"));
    }
    let source_name = source.describe();
    let live = source.live();
    let counters = Counters::default();
    let control = Control {
        external: stop,
        halt: AtomicBool::new(false),
        reason: Mutex::new(None),
        error: Mutex::new(None),
    };
    let to_preprocess: Slot<Captured> = Slot::default();
    let to_infer: Slot<(Captured, Vec<f32>)> = Slot::default();
    let (out_tx, out_rx) = mpsc::sync_channel::<Out>(4);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<f32>>();
    let started = Instant::now();

    let (capture_h, preprocess_h, inference_h, (output_h, latency_h)) = std::thread::scope(|s| {
        let capture = s.spawn({
            let events = out_tx.clone();
            let (slot, counters, control) = (&to_preprocess, &counters, &control);
            move || {
                capture_stage(
                    source,
                    live,
                    slot,
                    &events,
                    counters,
                    control,
                    config.backoff,
                )
            }
        });
        let preprocess = s.spawn({
            let (input, output, counters, control) =
                (&to_preprocess, &to_infer, &counters, &control);
            let events = out_tx.clone();
            move || {
                preprocess_stage(
                    classifier, live, input, output, recycle_rx, &events, counters, control,
                )
            }
        });
        let inference = s.spawn({
            let (input, counters, control) = (&to_infer, &counters, &control);
            move || {
                inference_stage(
                    classifier, config, input, out_tx, recycle_tx, counters, control,
                )
            }
        });
        let output = s.spawn({
            let control = &control;
            move || output_stage(out_rx, observer, control)
        });
        let panicked = || control.fail(Error::usage("a camera-loop thread panicked"));
        let join = |h: std::thread::ScopedJoinHandle<'_, Histogram>| {
            h.join().unwrap_or_else(|_| {
                panicked();
                Histogram::default()
            })
        };
        let out = output.join().unwrap_or_else(|_| {
            panicked();
            Default::default()
        });
        (join(capture), join(preprocess), join(inference), out)
    });

    if let Some(e) = control
        .error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    let classified = counters.classified.load(Ordering::SeqCst);
    let stopped = control
        .reason
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(if stop.load(Ordering::SeqCst) {
            StopReason::Stopped
        } else {
            StopReason::End
        });
    Ok(Summary {
        source: source_name,
        captured: counters.captured.load(Ordering::SeqCst),
        classified,
        dropped: counters.dropped.load(Ordering::SeqCst),
        corrupt: counters.corrupt.load(Ordering::SeqCst),
        reconnects: counters.reconnects.load(Ordering::SeqCst),
        seconds,
        fps: if seconds > 0.0 {
            classified as f64 / seconds
        } else {
            0.0
        },
        stopped,
        capture: capture_h.stats(),
        preprocess: preprocess_h.stats(),
        inference: inference_h.stats(),
        output: output_h.stats(),
        latency: latency_h.stats(),
    })
}

fn capture_stage(
    source: &mut dyn FrameSource,
    live: bool,
    slot: &Slot<Captured>,
    events: &SyncSender<Out>,
    counters: &Counters,
    control: &Control,
    backoff: Backoff,
) -> Histogram {
    let mut hist = Histogram::default();
    let _guard = OnExit(|| slot.close());
    let mut index = 0u64;
    let event = |e: Event| {
        let _ = events.send(Out::Event(e));
    };
    'frames: while !control.stopping() {
        let capture = match source.next() {
            Ok(c) => c,
            Err(e) => {
                control.fail(e);
                break;
            }
        };
        match capture {
            Capture::Frame(frame) => {
                let took = frame.work;
                hist.add(ms(took));
                counters.captured.fetch_add(1, Ordering::SeqCst);
                let item = Captured {
                    index,
                    name: frame.name,
                    image: frame.image,
                    at: Instant::now(),
                    time: SystemTime::now(),
                    timings: Timings {
                        capture: ms(took),
                        ..Timings::default()
                    },
                };
                index += 1;
                match if live {
                    slot.replace(item)
                } else {
                    slot.put(item)
                } {
                    Offer::Stored => {}
                    Offer::Replaced(_) => {
                        counters.dropped.fetch_add(1, Ordering::SeqCst);
                    }
                    Offer::Closed(_) => {
                        counters.dropped.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
            Capture::Corrupt(reason) => {
                counters.corrupt.fetch_add(1, Ordering::SeqCst);
                event(Event::Corrupt(reason));
            }
            Capture::Idle => {}
            Capture::End => {
                control.stop(StopReason::End);
                break;
            }
            Capture::Lost(reason) => {
                event(Event::Lost(reason));
                let lost_at = Instant::now();
                let mut delay = backoff.initial;
                let mut attempts = 0u32;
                loop {
                    sleep_unless_stopped(delay, control);
                    if control.stopping() {
                        break 'frames;
                    }
                    attempts += 1;
                    match source.reconnect() {
                        Ok(true) => {
                            counters.reconnects.fetch_add(1, Ordering::SeqCst);
                            event(Event::Reconnected {
                                after: lost_at.elapsed(),
                                attempts,
                            });
                            break;
                        }
                        Ok(false) => delay = (delay * 2).min(backoff.max),
                        Err(e) => {
                            control.fail(e);
                            break 'frames;
                        }
                    }
                }
            }
        }
    }
    // Let the frame already waiting be processed if the source ended; a stop discards it
    // downstream.
    slot.close();
    hist
}

#[allow(clippy::too_many_arguments)]
fn preprocess_stage(
    classifier: &Classifier,
    live: bool,
    input: &Slot<Captured>,
    output: &Slot<(Captured, Vec<f32>)>,
    recycled: Receiver<Vec<f32>>,
    events: &SyncSender<Out>,
    counters: &Counters,
    control: &Control,
) -> Histogram {
    let mut hist = Histogram::default();
    let per_image: usize = classifier.plan.input_shape().iter().skip(1).product();
    let mut spares: Vec<Vec<f32>> = Vec::new();
    let _guard = OnExit(|| {
        input.close();
        output.close();
    });
    while let Some(mut item) = input.take() {
        // A stop discards what is waiting; a source that ended is drained.
        if discarding(control) {
            counters.dropped.fetch_add(1, Ordering::SeqCst);
            break;
        }
        let t = Instant::now();
        spares.extend(recycled.try_iter());
        let mut buf = spares.pop().unwrap_or_else(|| vec![0f32; per_image]);
        if let Err(e) = classifier.preprocess.apply_into(&item.image, &mut buf) {
            // Only a frame with no pixels gets here: treat it like an undecodable one.
            counters.corrupt.fetch_add(1, Ordering::SeqCst);
            counters.captured.fetch_sub(1, Ordering::SeqCst);
            let _ = events.send(Out::Event(Event::Corrupt(e.to_string())));
            spares.push(buf);
            continue;
        }
        item.timings.preprocess = ms(t.elapsed());
        hist.add(item.timings.preprocess);
        match if live {
            output.replace((item, buf))
        } else {
            output.put((item, buf))
        } {
            Offer::Stored => {}
            Offer::Replaced((_, old)) => {
                counters.dropped.fetch_add(1, Ordering::SeqCst);
                spares.push(old);
            }
            Offer::Closed(_) => {
                counters.dropped.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    if input.close_and_drain().is_some() {
        counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
    output.close();
    hist
}

/// Whether pending frames are to be thrown away: on a signal or frame limit, not when the
/// source merely ended.
fn discarding(control: &Control) -> bool {
    control.external.load(Ordering::SeqCst)
        || matches!(
            *control.reason.lock().unwrap_or_else(|p| p.into_inner()),
            Some(StopReason::FrameLimit)
        )
        || control.error.lock().map(|e| e.is_some()).unwrap_or(true)
}

fn inference_stage(
    classifier: &Classifier,
    config: &Config,
    input: &Slot<(Captured, Vec<f32>)>,
    out: SyncSender<Out>,
    recycle: mpsc::Sender<Vec<f32>>,
    counters: &Counters,
    control: &Control,
) -> Histogram {
    let mut hist = Histogram::default();
    let _guard = OnExit(|| input.close());
    let result = (|| -> Result<()> {
        let mut state = classifier
            .plan
            .runnable()
            .spawn()
            .map_err(|e| Error::tract("creating a run state", e))?;
        let shape = classifier.plan.input_shape().to_vec();
        let mut done = 0u64;
        while let Some((mut item, buf)) = input.take() {
            if discarding(control) {
                counters.dropped.fetch_add(1, Ordering::SeqCst);
                break;
            }
            let t = Instant::now();
            let tensor = Tensor::from_shape(&shape, &buf)
                .map_err(|e| Error::tract("building the input", e))?;
            let _ = recycle.send(buf);
            let outputs = state
                .run(tvec!(tensor.into()))
                .map_err(|e| Error::tract("inference", e))?;
            let raw = crate::plan::first_output(&outputs)?;
            if !config.simulate_inference.is_zero() {
                std::thread::sleep(config.simulate_inference);
            }
            item.timings.inference = ms(t.elapsed());
            item.timings.latency = ms(item.at.elapsed());
            hist.add(item.timings.inference);
            let prediction = predict(classifier.output, raw, config.top_k);
            let ordinal = counters.classified.fetch_add(1, Ordering::SeqCst);
            let classified = Classified {
                index: item.index,
                ordinal,
                name: item.name,
                image: item.image,
                prediction,
                timings: item.timings,
                time: item.time,
                fps: 0.0,
            };
            if out.send(Out::Result(classified)).is_err() {
                break; // the output stage failed and said why
            }
            done += 1;
            if config.max_frames.is_some_and(|n| done >= n) {
                control.stop(StopReason::FrameLimit);
                break;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        control.fail(e);
    }
    if input.close_and_drain().is_some() {
        counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
    hist
}

fn predict(kind: OutputKind, raw: Vec<f32>, k: usize) -> Prediction {
    let probabilities = match kind {
        OutputKind::Logits => softmax(&raw),
        OutputKind::Probabilities => raw.clone(),
    };
    Prediction {
        top: top_k(&probabilities, k),
        raw,
    }
}

fn output_stage(
    rx: Receiver<Out>,
    observer: &mut dyn Observer,
    control: &Control,
) -> (Histogram, Histogram) {
    let (mut hist, mut latency) = (Histogram::default(), Histogram::default());
    let mut recent: VecDeque<Instant> = VecDeque::with_capacity(16);
    for msg in rx {
        let result = match msg {
            Out::Result(mut c) => {
                let now = Instant::now();
                if recent.len() == 16 {
                    recent.pop_front();
                }
                recent.push_back(now);
                c.fps = match (recent.front(), recent.len()) {
                    (Some(first), n) if n > 1 && now > *first => {
                        (n - 1) as f64 / (now - *first).as_secs_f64()
                    }
                    _ => 0.0,
                };
                latency.add(c.timings.latency);
                let r = observer.classified(&mut c);
                hist.add(ms(now.elapsed()));
                r
            }
            Out::Event(e) => observer.event(&e),
        };
        if let Err(e) = result {
            control.fail(e);
            break; // dropping rx makes the other stages' sends fail, and they stop
        }
    }
    (hist, latency)
}

/// One line of the results log, fields in this order.
#[derive(Debug, Serialize)]
pub struct LogRecord<'a> {
    /// When the frame was captured, RFC 3339 UTC.
    pub time: String,
    /// Capture sequence number.
    pub frame: u64,
    pub name: Option<&'a str>,
    pub source: &'a str,
    pub top: Vec<LogClass>,
    /// Per-stage milliseconds.
    pub ms: Timings,
}

impl<'a> LogRecord<'a> {
    /// The results-log line for a frame.
    pub fn new(labels: &Labels, source: &'a str, c: &'a Classified) -> LogRecord<'a> {
        LogRecord {
            time: rfc3339(c.time),
            frame: c.index,
            name: c.name.as_deref(),
            source,
            top: c
                .prediction
                .top
                .iter()
                .map(|&(class, score)| LogClass {
                    class,
                    label: labels.name(class),
                    score,
                })
                .collect(),
            ms: c.timings,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LogClass {
    pub class: usize,
    pub label: String,
    pub score: f32,
}

/// The command line's observer: prints each result, appends it to the results log, and draws
/// the overlay for the display sink.
pub struct StandardOutput {
    pub labels: Labels,
    pub source: String,
    pub log: Option<ResultsLog>,
    pub sink: Box<dyn Sink>,
    /// Print one line per classified frame to stdout.
    pub print: bool,
}

impl StandardOutput {
    /// Flush the log to disk (call once the loop has ended).
    pub fn finish(&mut self) -> Result<()> {
        match self.log.as_mut() {
            Some(log) => log.sync(),
            None => Ok(()),
        }
    }
}

impl Observer for StandardOutput {
    fn classified(&mut self, c: &mut Classified) -> Result<()> {
        let (class, score) = c.prediction.top.first().copied().unwrap_or((0, 0.0));
        let label = self.labels.name(class);
        if self.print {
            let others: Vec<String> = c
                .prediction
                .top
                .iter()
                .skip(1)
                .take(2)
                .map(|&(k, s)| format!("{} {s:.3}", self.labels.name(k)))
                .collect();
            let others = if others.is_empty() {
                String::new()
            } else {
                format!("  ({})", others.join(", "))
            };
            println!(
                "frame {:>5}  {:<16} {label} {score:.3}{others}  [infer {:.1} ms, latency {:.1} ms]",
                c.index,
                c.name.as_deref().unwrap_or(""),
                c.timings.inference,
                c.timings.latency
            );
        }
        if let Some(log) = self.log.as_mut() {
            log.append(&LogRecord::new(&self.labels, &self.source, c))?;
        }
        if self.sink.wants(c.ordinal) {
            let info = OverlayInfo {
                label: &label,
                score,
                fps: c.fps,
                inference_ms: c.timings.inference,
            };
            overlay::draw(&mut c.image, &info);
            self.sink.show(&c.image, c.ordinal)?;
        }
        Ok(())
    }

    fn event(&mut self, event: &Event) -> Result<()> {
        let (kind, detail) = match event {
            Event::Corrupt(r) => ("corrupt", r.clone()),
            Event::Lost(r) => ("lost", format!("{r}; reconnecting with backoff")),
            Event::Reconnected { after, attempts } => (
                "reconnected",
                format!(
                    "back after {:.1} s ({attempts} attempts)",
                    after.as_secs_f64()
                ),
            ),
        };
        eprintln!("resnet-edge: {kind}: {detail}");
        if let Some(log) = self.log.as_mut() {
            #[derive(Serialize)]
            struct EventRecord<'a> {
                time: String,
                event: &'a str,
                detail: &'a str,
                source: &'a str,
            }
            log.append(&EventRecord {
                time: rfc3339(SystemTime::now()),
                event: kind,
                detail: &detail,
                source: &self.source,
            })?;
        }
        Ok(())
    }
}

/// Set `stop` on SIGINT and SIGTERM, so the loop finishes its frame and prints its summary; a
/// second signal while stopping exits at once (a wedged camera must not hold the process).
#[cfg(unix)]
pub fn stop_on_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(stop)))
            .map_err(|e| Error::usage(format!("installing a signal handler: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.add(v as f64);
        }
        let s = h.stats();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() / 500.0 < 0.011, "{s:?}");
        assert!((s.p90 - 900.0).abs() / 900.0 < 0.011, "{s:?}");
        assert!((s.p99 - 990.0).abs() / 990.0 < 0.011, "{s:?}");
        assert_eq!(s.max, 1000.0);
        assert!((s.mean - 500.5).abs() < 1e-9);
        assert_eq!(Histogram::default().stats().p50, 0.0);
    }

    #[test]
    fn slot_keeps_the_newest() {
        let slot = Slot::default();
        assert!(matches!(slot.replace(1), Offer::Stored));
        assert!(matches!(slot.replace(2), Offer::Replaced(1)));
        assert_eq!(slot.take(), Some(2));
        slot.replace(3);
        slot.close();
        // A closed slot still yields what it held, then nothing; producers get values back.
        assert_eq!(slot.take(), Some(3));
        assert_eq!(slot.take(), None);
        assert!(matches!(slot.put(4), Offer::Closed(4)));
    }

    #[test]
    fn put_waits_for_the_consumer() {
        let slot = Arc::new(Slot::default());
        slot.put(1);
        let producer = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || matches!(slot.put(2), Offer::Stored))
        };
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(slot.take(), Some(1));
        assert!(producer.join().unwrap());
        assert_eq!(slot.take(), Some(2));
    }
}
