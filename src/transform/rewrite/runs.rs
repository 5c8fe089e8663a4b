//! Work split between the threads of a parallel region, with stealing.
//!
//! Why: each of our ops splits its work once into one contiguous run per thread (neighbouring
//! items share weights and input rows, so a run keeps them in cache). But on a VM or a
//! device running other processes a thread can be descheduled or slowed in the middle of its
//! run, and the region then waits for it: 1.5-6.6 ms per ResNet-50 inference at two threads
//! here, measured as the caller's wait at the end of each region. So a thread that has
//! finished its own run takes the remaining items of the others, from their far ends (Blumofe
//! & Leiserson's work stealing, "Scheduling multithreaded computations by work stealing",
//! JACM 1999), which leaves each owner the items next to the ones it has just done.

use std::ops::Range;
use std::sync::Mutex;

/// Items split into `threads` contiguous runs; see [`Runs::claims`].
pub struct Runs<T> {
    items: Vec<Mutex<Option<T>>>,
    /// Per run, the indices not yet claimed.
    left: Vec<Apart<Mutex<Range<usize>>>>,
    steal: bool,
}

/// A value on cache lines of its own (two, for the adjacent-line prefetch of Intel cores).
/// Each thread takes from its own run's lock item after item; with two runs' locks on one
/// line, every take would pull the line from the other core.
#[repr(align(128))]
struct Apart<T>(T);

impl<T> Runs<T> {
    /// `items` in `threads` runs of near-equal length (the first ones one longer; empty ones
    /// when there are fewer items than threads), stealing when `steal`.
    pub fn new(items: Vec<T>, threads: usize, steal: bool) -> Runs<T> {
        let (len, threads) = (items.len(), threads.max(1));
        let (per, extra) = (len / threads, len % threads);
        let mut start = 0;
        let left = (0..threads)
            .map(|i| {
                let end = start + per + usize::from(i < extra);
                let run = start..end;
                start = end;
                Apart(Mutex::new(run))
            })
            .collect();
        Runs {
            items: items.into_iter().map(|i| Mutex::new(Some(i))).collect(),
            left,
            steal,
        }
    }

    pub fn threads(&self) -> usize {
        self.left.len()
    }

    /// The items thread `member` runs: its own run front to back, then (stealing) the others'
    /// remaining items, each from its end. Every item is claimed by exactly one caller.
    pub fn claims(&self, member: usize) -> impl Iterator<Item = T> + '_ {
        let own = member % self.threads();
        let mut victims = (1..self.threads())
            .filter(move |_| self.steal)
            .map(move |k| (own + k) % self.threads());
        let mut victim = None;
        std::iter::from_fn(move || loop {
            let index = match victim {
                None => self.take(own, true),
                Some(v) => self.take(v, false),
            };
            match index {
                Some(i) => return self.items.get(i)?.lock().ok()?.take(),
                None => victim = Some(victims.next()?),
            }
        })
    }

    /// The front (or back) unclaimed index of run `run`.
    fn take(&self, run: usize, front: bool) -> Option<usize> {
        let mut left = self.left.get(run)?.0.lock().ok()?;
        match front {
            true => left.next(),
            false => left.next_back(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_contiguous_and_every_item_is_claimed_once() {
        let runs = Runs::new((0..10).collect(), 3, false);
        let claimed: Vec<Vec<i32>> = (0..3).map(|m| runs.claims(m).collect()).collect();
        assert_eq!(claimed, [vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);

        // A thread that finds its run done takes the others' from their ends.
        let runs = Runs::new((0..10).collect(), 3, true);
        let first: Vec<i32> = runs.claims(0).take(2).collect();
        let thief: Vec<i32> = runs.claims(2).collect();
        assert_eq!(first, [0, 1]);
        assert_eq!(thief, [7, 8, 9, 3, 2, 6, 5, 4]);
        assert_eq!(runs.claims(0).count() + runs.claims(1).count(), 0);
        assert_eq!(Runs::<u8>::new(vec![], 4, true).claims(3).count(), 0);
        // Fewer items than threads: the threads without a run steal.
        let runs = Runs::new(vec![1, 2], 4, true);
        assert_eq!(runs.claims(3).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn concurrent_claims_cover_the_items_once() {
        for threads in [2, 3, 8] {
            let runs = Runs::new((0..1000usize).collect(), threads, true);
            let mut all: Vec<usize> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|m| {
                        let runs = &runs;
                        s.spawn(move || runs.claims(m).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect()
            });
            all.sort_unstable();
            assert_eq!(all, (0..1000).collect::<Vec<_>>());
        }
    }
}
