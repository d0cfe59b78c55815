//! Whether a function's calls should take instances made ahead on the recycler's thread, or
//! on their own worker after the previous call's response: decided by measuring the
//! function's own calls both ways.
//!
//! Neither is faster everywhere, nor at every moment on one machine. The recycler takes
//! instantiation and teardown off the worker altogether, but the instance is built, and its
//! pool slot reset, by another thread while the request's other work (HTTP, the kernel's TCP,
//! the client when it shares the machine) wants the cores too; on the worker, the same work
//! runs on the core whose caches hold the slot, once the response is out. (The figures below
//! compared the recycler with calls that made their own instance, before the worker made
//! the next one after its response.) Measured on two machines of the same kind
//! (docs/benchmarks.md): on one (AMD EPYC) sequential calls through the gateway were 26 %
//! faster made ahead; on the other (Intel Xeon) 40–50 % slower in one hour and 17 % faster
//! in the next. There the call itself was shorter made ahead (45 against 55 µs) while the
//! client waited longer: the cost lands outside the call. So what is measured
//! is the cycle a client sees: the time from one call's start to the next call's start, for
//! calls that came one at a time (a sequential client, the case in which a core is spare and
//! the choice is made at all); gaps over [`MAX_CYCLE_NS`] are idle time, not a cycle. Calls
//! alternate between the two ways in blocks until each has enough samples, then the faster
//! one is used, with a short block of the other now and then in case the machine changed.
//! Pure: the caller supplies the times; no clock, no threads.

/// The longest start-to-start gap taken as one cycle of a client calling back to back.
pub(crate) const MAX_CYCLE_NS: u64 = 10_000_000;

/// How one call gets its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// The call takes the instance its function's previous call made after its response (or
    /// makes its own when none is ready); once its own response is passed on, a task on its
    /// worker drops its store and makes the next.
    OnWorker,
    /// The call takes the instance made ahead of it, asks for the next, and hands its store
    /// to the recycler to drop.
    Ahead,
}

impl Way {
    fn index(self) -> usize {
        match self {
            Way::OnWorker => 0,
            Way::Ahead => 1,
        }
    }

    fn other(self) -> Way {
        match self {
            Way::OnWorker => Way::Ahead,
            Way::Ahead => Way::OnWorker,
        }
    }
}

/// Calls per block while both ways are still being measured, and per trial of the way not
/// chosen.
const BLOCK: u32 = 64;
/// The first calls of a block that are not counted: they find the state the other way left
/// (an instance made ahead or none; warm pool slots in another thread's shard of the pool,
/// so cold ones are taken and faulted in), which measured here made the first calls in
/// place after a run made ahead twice as slow as in a daemon that never makes any ahead.
const SETTLE: u32 = 16;
/// Samples each way needs before the faster one is chosen.
const MIN_SAMPLES: u32 = 2 * (BLOCK - SETTLE);
/// Calls between two trial blocks of the way not chosen.
const EXPLORE_EVERY: u32 = 4096;
/// The weight of a new sample in a way's running estimate.
const ALPHA: f64 = 1.0 / 16.0;

/// A running estimate of one way's typical call time: an exponentially weighted mean of the
/// logarithm of the durations, each sample counted as at most twice or half the estimate, so
/// that a call the OS preempted for a few milliseconds moves it a little, not by a hundred
/// calls' worth; a lasting change still moves it all the way.
#[derive(Debug, Clone, Copy, Default)]
struct Estimate {
    log_ns: f64,
    samples: u32,
}

impl Estimate {
    fn add(&mut self, ns: u64) {
        let x = (ns.max(1) as f64).ln();
        self.log_ns = if self.samples == 0 {
            x
        } else {
            self.log_ns + ALPHA * (x - self.log_ns).clamp(-std::f64::consts::LN_2, std::f64::consts::LN_2)
        };
        self.samples = self.samples.saturating_add(1);
    }

    fn typical_ns(&self) -> f64 {
        self.log_ns.exp()
    }
}

/// The decision for one function.
#[derive(Debug, Clone)]
pub(crate) struct Chooser {
    estimates: [Estimate; 2],
    /// The way of the current block, its length, and how many of its calls are still to
    /// start. The first [`SETTLE`] calls of a block are not counted.
    way: Way,
    len: u32,
    left: u32,
    /// The last call that started alone: its ticket, number and start time.
    pending: Option<(Ticket, u64, u64)>,
    /// The choice last logged.
    announced: Option<Way>,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser {
            estimates: [Estimate::default(); 2],
            way: Way::Ahead,
            len: BLOCK,
            left: BLOCK,
            pending: None,
            announced: None,
        }
    }
}

/// One call's ticket: the way it was given, and whether its time counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) way: Way,
    counts: bool,
}

impl Chooser {
    /// Call number `seq` of the function starts at `now_ns` (any fixed origin); `alone`: no
    /// other call of the function is in flight. The previous call's cycle is counted if it is
    /// call `seq - 1` (no call came between unseen: under load calls do not ask the chooser)
    /// and both came alone.
    pub(crate) fn start(&mut self, seq: u64, now_ns: u64, alone: bool) -> Ticket {
        if let Some((previous, previous_seq, at)) = self.pending.take()
            && alone
            && previous_seq.wrapping_add(1) == seq
        {
            let cycle = now_ns.saturating_sub(at);
            if cycle <= MAX_CYCLE_NS {
                self.observe(previous, cycle);
            }
        }
        let ticket = self.next();
        if alone {
            self.pending = Some((ticket, seq, now_ns));
        }
        ticket
    }

    /// The way for the next call.
    fn next(&mut self) -> Ticket {
        if self.left == 0 {
            self.start_block();
        }
        let position = self.len - self.left;
        self.left -= 1;
        Ticket {
            way: self.way,
            counts: position >= SETTLE,
        }
    }

    /// A call given `ticket` took `ns` nanoseconds.
    fn observe(&mut self, ticket: Ticket, ns: u64) {
        if ticket.counts {
            self.estimates[ticket.way.index()].add(ns);
        }
    }

    /// The way chosen once both are measured (`None` while still measuring).
    pub(crate) fn chosen(&self) -> Option<Way> {
        let [on_worker, ahead] = &self.estimates;
        if on_worker.samples < MIN_SAMPLES || ahead.samples < MIN_SAMPLES {
            return None;
        }
        Some(if ahead.typical_ns() < on_worker.typical_ns() {
            Way::Ahead
        } else {
            Way::OnWorker
        })
    }

    fn start_block(&mut self) {
        let chosen = self.chosen();
        if chosen != self.announced {
            self.announced = chosen;
            tracing::debug!(
                on_worker_us = self.estimates[0].typical_ns() / 1000.0,
                ahead_us = self.estimates[1].typical_ns() / 1000.0,
                ?chosen,
                "instances for this function's calls: the faster way changed"
            );
        }
        self.way = match chosen {
            // Still measuring: alternate.
            None => self.way.other(),
            // After a long block of the chosen way, a short trial of the other.
            Some(best) if best == self.way => best.other(),
            Some(best) => best,
        };
        self.len = if chosen == Some(self.way) { EXPLORE_EVERY } else { BLOCK };
        self.left = self.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `n` calls where a call made `Ahead` takes `ahead_ns` and one made on the worker
    /// `on_worker_ns`; how many went each way.
    fn drive(c: &mut Chooser, n: usize, on_worker_ns: u64, ahead_ns: u64) -> [usize; 2] {
        let mut count = [0; 2];
        for _ in 0..n {
            let t = c.next();
            count[t.way.index()] += 1;
            let ns = match t.way {
                Way::OnWorker => on_worker_ns,
                Way::Ahead => ahead_ns,
            };
            c.observe(t, ns);
        }
        count
    }

    #[test]
    fn measures_both_ways_in_alternating_blocks_first() {
        let mut c = Chooser::default();
        let ways: Vec<Way> = (0..4 * BLOCK).map(|_| c.next().way).collect();
        assert!(ways[..BLOCK as usize].iter().all(|w| *w == Way::Ahead));
        assert!(
            ways[BLOCK as usize..2 * BLOCK as usize]
                .iter()
                .all(|w| *w == Way::OnWorker)
        );
        assert!(
            ways[2 * BLOCK as usize..3 * BLOCK as usize]
                .iter()
                .all(|w| *w == Way::Ahead)
        );
        assert_eq!(c.chosen(), None, "nothing observed yet");
    }

    #[test]
    fn settles_on_the_faster_way_whichever_it_is() {
        let mut c = Chooser::default();
        let count = drive(&mut c, 20_000, 19_000, 35_000);
        assert_eq!(c.chosen(), Some(Way::OnWorker));
        assert!(
            count[0] > 19 * count[1],
            "on the worker {} ahead {}",
            count[0],
            count[1]
        );

        let mut c = Chooser::default();
        let count = drive(&mut c, 20_000, 85_000, 53_000);
        assert_eq!(c.chosen(), Some(Way::Ahead));
        assert!(
            count[1] > 19 * count[0],
            "on the worker {} ahead {}",
            count[0],
            count[1]
        );
    }

    #[test]
    fn keeps_trying_the_other_way_and_follows_a_change() {
        let mut c = Chooser::default();
        drive(&mut c, 10_000, 19_000, 35_000);
        assert_eq!(c.chosen(), Some(Way::OnWorker));
        // The machine changes: calls made ahead become the faster ones.
        let count = drive(&mut c, 20_000, 60_000, 30_000);
        assert_eq!(c.chosen(), Some(Way::Ahead));
        assert!(count[1] > count[0], "on the worker {} ahead {}", count[0], count[1]);
    }

    #[test]
    fn a_few_preempted_calls_do_not_flip_the_choice() {
        let mut c = Chooser::default();
        drive(&mut c, 5_000, 19_000, 35_000);
        // Three calls on the worker that the OS held for 5 ms each.
        for _ in 0..3 {
            let t = loop {
                let t = c.next();
                if t.way == Way::OnWorker && t.counts {
                    break t;
                }
                c.observe(t, 35_000);
            };
            c.observe(t, 5_000_000);
        }
        assert_eq!(c.chosen(), Some(Way::OnWorker));
    }

    #[test]
    fn cycles_are_counted_between_consecutive_calls_that_came_alone() {
        let mut c = Chooser::default();
        for _ in 0..SETTLE {
            c.next();
        }
        let samples = |c: &Chooser| c.estimates[Way::Ahead.index()].samples;
        c.start(1, 0, true);
        c.start(2, 50_000, true);
        assert_eq!(samples(&c), 1);
        // Overlapping calls: the second's cycle is not counted, nor the third's.
        c.start(3, 60_000, false);
        c.start(4, 120_000, true);
        assert_eq!(samples(&c), 1);
        // Back to back again: the fourth's cycle counts.
        c.start(5, 190_000, true);
        assert_eq!(samples(&c), 2);
        // An idle gap is not a cycle.
        c.start(6, 190_000 + MAX_CYCLE_NS + 1, true);
        assert_eq!(samples(&c), 2);
        // Calls that did not ask (under load) came between: not a cycle either.
        c.start(9, 200_000 + MAX_CYCLE_NS, true);
        assert_eq!(samples(&c), 2);
        c.start(10, 250_000 + MAX_CYCLE_NS, true);
        assert_eq!(samples(&c), 3);
        let typical = c.estimates[Way::Ahead.index()].typical_ns();
        assert!((40_000.0..=70_000.0).contains(&typical), "{typical}");
    }

    #[test]
    fn the_first_calls_of_a_block_do_not_count() {
        let mut c = Chooser::default();
        for _ in 0..SETTLE {
            let t = c.next();
            assert!(!t.counts);
            c.observe(t, 1);
        }
        assert_eq!(c.estimates[Way::Ahead.index()].samples, 0);
        let next = c.next();
        assert!(next.counts);
        c.observe(next, 1_000);
        assert_eq!(c.estimates[Way::Ahead.index()].samples, 1);
    }
}
