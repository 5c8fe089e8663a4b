//! A team of worker threads that spin between our ops instead of sleeping.
//!
//! Why: an inference runs about a hundred parallel regions (every conv, transform and join of
//! ours). rayon's workers sleep as soon as a region ends; on a VM a sleeping vCPU halts, and
//! waking it for the next region waits for the host to schedule it again: 25-55 us measured
//! here when the host is quiet, far more when it is not. onnxruntime's pool spins between ops
//! for the same reason. Here the workers spin for [`SPIN`] after each job (yielding the CPU
//! now and then, so tract's own pool threads and other processes still run), then park.
//!
//! One caller at a time uses a team; a second caller meanwhile (tests running plans in
//! parallel, two classifiers) runs its work on its own thread instead of waiting.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker keeps spinning after its last job before it parks.
const SPIN: Duration = Duration::from_millis(2);
/// Spin iterations between two looks at the clock (and a `yield_now`).
const SPINS_PER_CHECK: u32 = 256;

/// The job of one region: called once per member with its index (0 is the caller).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job; a worker runs each generation once.
    generation: AtomicU64,
    /// The current job, valid while `pending > 0` (the caller waits for that).
    job: Mutex<Option<Job<'static>>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// Parked workers wait here for the next generation.
    parked: Mutex<usize>,
    wake: Condvar,
    /// Set (with a generation bump) when the team could not be completed: workers exit.
    stop: AtomicBool,
}

/// `size - 1` spinning workers plus the caller. Teams live as long as the process, as rayon's
/// global pool does.
pub struct Team {
    size: usize,
    shared: Arc<Shared>,
    /// Held by the caller for the duration of a job.
    busy: Mutex<()>,
}

/// Starts worker `index` running `body` on a thread of its own.
type Spawn<'a> = &'a dyn Fn(usize, Box<dyn FnOnce() + Send>) -> std::io::Result<()>;

fn spawn_thread(index: usize, body: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("resnet-edge-team-{index}"))
        .spawn(body)
        .map(drop)
}

impl Team {
    /// `None` when a worker cannot be spawned; those already started are told to exit rather
    /// than left parked for the life of the process.
    fn new(size: usize, spawn: Spawn) -> Option<Team> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        for index in 1..size {
            let worker = shared.clone();
            if spawn(index, Box::new(move || work(&worker, index))).is_err() {
                shared.stop.store(true, Ordering::Release);
                shared.generation.fetch_add(1, Ordering::AcqRel);
                // Under the lock parked workers wait on, so none misses the wake-up.
                let _parked = shared.parked.lock();
                shared.wake.notify_all();
                return None;
            }
        }
        Some(Team {
            size,
            shared,
            busy: Mutex::new(()),
        })
    }

    /// The team of `size` members (created on first use and kept for the process), or `None`
    /// when threads cannot be spawned.
    pub fn of(size: usize) -> Option<Arc<Team>> {
        static TEAMS: OnceLock<Mutex<Vec<Arc<Team>>>> = OnceLock::new();
        let mut teams = TEAMS.get_or_init(Default::default).lock().ok()?;
        if let Some(team) = teams.iter().find(|t| t.size == size) {
            return Some(team.clone());
        }
        let team = Arc::new(Team::new(size, &spawn_thread)?);
        teams.push(team.clone());
        Some(team)
    }

    /// Run `job(i)` for every member `i` in `0..size`, the caller taking 0; returns when all
    /// have finished. When another caller holds the team, runs every member's share here.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let Ok(_busy) = self.busy.try_lock() else {
            (0..self.size).for_each(job);
            return;
        };
        let shared = &self.shared;
        // SAFETY: the job is only called while `pending > 0`, and this function does not
        // return (the borrow does not end) before `pending` is back to 0.
        let job_static: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        match shared.job.lock() {
            Ok(mut slot) => *slot = Some(job_static),
            Err(_) => {
                (0..self.size).for_each(job);
                return;
            }
        }
        shared.pending.store(self.size - 1, Ordering::Release);
        shared.generation.fetch_add(1, Ordering::AcqRel);
        if shared.parked.lock().map(|n| *n > 0).unwrap_or(true) {
            shared.wake.notify_all();
        }
        let _ = catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while shared.pending.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(SPINS_PER_CHECK) {
                std::thread::yield_now();
            }
        }
        if let Ok(mut slot) = shared.job.lock() {
            *slot = None;
        }
    }
}

/// A worker's loop: wait (spinning, then parked) for a new generation, run its share.
fn work(shared: &Shared, index: usize) {
    // The generation the team was made with, not whatever it is once this thread starts: a
    // job may already have been posted.
    let mut seen = 0;
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(SPINS_PER_CHECK) {
                continue;
            }
            if since.elapsed() < SPIN {
                std::thread::yield_now();
                continue;
            }
            // Park until the generation moves (checked under the lock the caller notifies
            // after bumping it, so no wake-up is lost).
            let Ok(mut parked) = shared.parked.lock() else {
                return;
            };
            *parked += 1;
            while shared.generation.load(Ordering::Acquire) == seen {
                parked = match shared.wake.wait(parked) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
            *parked -= 1;
            since = Instant::now();
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let job = shared.job.lock().ok().and_then(|slot| *slot);
        if let Some(job) = job {
            let _ = catch_unwind(AssertUnwindSafe(|| job(index)));
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_of_a_team_that_could_not_be_completed_exit() {
        let handles = Mutex::new(Vec::new());
        let spawn = |index: usize, body: Box<dyn FnOnce() + Send>| {
            if index == 3 {
                return Err(std::io::Error::other("no more threads"));
            }
            handles.lock().unwrap().push(std::thread::spawn(body));
            Ok(())
        };
        // Worker 2 has just started (spinning), worker 1 has had time to park.
        let slow = |index: usize, body: Box<dyn FnOnce() + Send>| {
            if index == 2 {
                std::thread::sleep(SPIN * 5);
            }
            spawn(index, body)
        };
        assert!(Team::new(4, &slow).is_none());
        let deadline = Instant::now() + Duration::from_secs(10);
        for handle in handles.into_inner().unwrap() {
            while !handle.is_finished() {
                assert!(Instant::now() < deadline, "a worker is still running");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn every_member_runs_once_per_job_and_callers_do_not_block_each_other() {
        let team = Team::of(3).unwrap();
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // Parked workers wake for the next job.
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        team.run(&|i| {
            sum.fetch_add(i + 1, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
        // Concurrent callers: each job still runs every share exactly once.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let n = AtomicUsize::new(0);
                        Team::of(3).unwrap().run(&|_| {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(n.load(Ordering::Relaxed), 3);
                    }
                });
            }
        });
    }
}
