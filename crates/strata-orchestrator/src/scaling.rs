//! Pure decisions of a function pool: which instance takes a call, how many to start, which
//! to stop. A snapshot and `now` in, a decision out; no I/O, no clocks, so tests and
//! simulators drive the same code the daemon runs.

use std::time::{Duration, Instant};

/// One instance as the decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// Calls in flight on it.
    pub inflight: u32,
    /// When it last finished a call (or became ready).
    pub last_used: Instant,
}

/// A pool as the decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// Ready instances.
    pub slots: Vec<SlotView>,
    /// Instances being started.
    pub starting: u32,
    /// Calls waiting for an instance.
    pub waiting: u32,
    /// Calls one instance serves at once.
    pub concurrency: u32,
    /// Instances kept always.
    pub min_instances: u32,
    /// Upper bound.
    pub max_instances: u32,
    /// Idle time before an instance is stopped; zero means never reused.
    pub keep_alive: Duration,
}

/// The instance a new call should go to: among those with room, the busiest, then the most
/// recently used. Packing calls onto few instances lets the others go idle and be stopped
/// (scale-down), and the most recently used has the warmest caches.
pub fn pick(slots: &[SlotView], concurrency: u32) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.inflight < concurrency)
        .max_by_key(|(_, s)| (s.inflight, s.last_used))
        .map(|(i, _)| i)
}

/// How many instances to start now: enough for every call in flight or waiting, and at least
/// `min_instances`, never more than `max_instances` in all.
pub fn to_start(v: &PoolView) -> u32 {
    let have = v.slots.len() as u32 + v.starting;
    let demand: u32 = v.slots.iter().map(|s| s.inflight).sum::<u32>() + v.waiting;
    let needed = demand.div_ceil(v.concurrency.max(1)).max(v.min_instances);
    needed.min(v.max_instances).saturating_sub(have)
}

/// Which idle instances to stop: those idle longer than keep-alive, the longest idle first,
/// keeping `min_instances`.
pub fn to_stop(v: &PoolView, now: Instant) -> Vec<usize> {
    let mut idle: Vec<(usize, Instant)> = v
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.inflight == 0 && now.saturating_duration_since(s.last_used) >= v.keep_alive)
        .map(|(i, s)| (i, s.last_used))
        .collect();
    idle.sort_by_key(|(_, t)| *t);
    let removable = (v.slots.len() as u32).saturating_sub(v.min_instances) as usize;
    idle.into_iter().take(removable).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(inflight: &[u32], starting: u32, waiting: u32, c: u32, min: u32, max: u32) -> PoolView {
        let t = Instant::now();
        PoolView {
            slots: inflight
                .iter()
                .map(|&i| SlotView {
                    inflight: i,
                    last_used: t,
                })
                .collect(),
            starting,
            waiting,
            concurrency: c,
            min_instances: min,
            max_instances: max,
            keep_alive: Duration::from_secs(600),
        }
    }

    #[test]
    fn pick_packs_onto_the_busiest_with_room() {
        let t = Instant::now();
        let s = |i, ago| SlotView {
            inflight: i,
            last_used: t - Duration::from_secs(ago),
        };
        assert_eq!(pick(&[s(0, 1), s(2, 1), s(3, 1)], 3), Some(1));
        assert_eq!(pick(&[s(0, 5), s(0, 1)], 1), Some(1), "most recently used");
        assert_eq!(pick(&[s(1, 1), s(1, 1)], 1), None);
    }

    #[test]
    fn a_burst_on_a_cold_function_starts_only_what_is_needed() {
        assert_eq!(to_start(&view(&[], 0, 1, 1, 0, 10)), 1);
        assert_eq!(to_start(&view(&[], 0, 100, 1, 0, 10)), 10, "capped by max");
        assert_eq!(
            to_start(&view(&[], 0, 100, 50, 0, 10)),
            2,
            "concurrency 50 → 2 instances"
        );
        assert_eq!(to_start(&view(&[], 2, 100, 50, 0, 10)), 0, "already starting enough");
        assert_eq!(to_start(&view(&[1, 1], 0, 0, 1, 0, 10)), 0, "busy but nobody waiting");
        assert_eq!(to_start(&view(&[], 0, 0, 1, 3, 10)), 3, "min instances");
    }

    #[test]
    fn idle_instances_stop_after_keep_alive_but_min_stays() {
        let now = Instant::now();
        let mut v = view(&[0, 0, 0, 1], 0, 0, 1, 1, 10);
        v.slots[0].last_used = now - Duration::from_secs(700);
        v.slots[1].last_used = now - Duration::from_secs(900);
        v.slots[2].last_used = now - Duration::from_secs(10);
        v.slots[3].last_used = now - Duration::from_secs(900);
        assert_eq!(to_stop(&v, now), vec![1, 0], "longest idle first; busy and fresh stay");
        v.min_instances = 3;
        assert_eq!(to_stop(&v, now), vec![1], "min_instances is kept");
        v.keep_alive = Duration::ZERO;
        v.min_instances = 0;
        assert_eq!(to_stop(&v, now).len(), 3, "keep_alive 0 stops every idle one");
    }

    proptest! {
        #[test]
        fn never_more_than_max(n in 0usize..20, starting in 0u32..20, waiting in 0u32..500, c in 1u32..10, min in 0u32..10, extra in 0u32..10) {
            let max = min + extra + 1;
            let v = view(&vec![1; n.min(max as usize)], starting.min(max), waiting, c, min, max);
            let have = v.slots.len() as u32 + v.starting;
            prop_assert!(have + to_start(&v) <= max.max(have));
            let stop = to_stop(&v, Instant::now() + Duration::from_secs(10_000));
            prop_assert!((v.slots.len() - stop.len()) as u32 >= min.min(v.slots.len() as u32));
        }
    }
}
