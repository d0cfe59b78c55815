//! The bookkeeping every policy shares: each function's busy and idle instances, the memory
//! of idle instances against the budget, the instances a budget may evict (in the policy's
//! order), and one pending timer per function.
//!
//! Costs are logarithmic per event: the evictable set is a `BTreeSet` kept only when there is
//! a budget; the timers a binary heap holding at most one entry per function, at or before
//! its timer (a timer moved later keeps its entry, which re-queues it when it comes up: a
//! function idle and called again every minute does not push an entry every minute).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use crate::{Decisions, FnId, Idle, Millis, Profile};

/// An eviction key from a non-negative number (a priority, a hazard per MB): the IEEE bits of
/// such numbers order like the numbers. Anything else (negative, NaN, infinite) keys as 0,
/// first to go.
pub(crate) fn key_of(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 { x.to_bits() } else { 0 }
}

/// One idle instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// When it became idle.
    pub since: Millis,
    /// Eviction order under a budget: lowest first. Never decreases along a function's
    /// queue, so a function's cheapest instance is its longest idle.
    pub key: u64,
    /// Tells apart instances with equal keys.
    seq: u64,
}

/// One function's instances.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub profile: Profile,
    /// Instances serving calls (or starting).
    pub busy: u32,
    /// Idle instances, the longest idle first.
    pub idle: VecDeque<Slot>,
    /// How many of the first `idle` are in the evictable set (with a budget).
    listed: usize,
    /// The pending timer.
    timer: Option<Millis>,
    /// The time of its entry in the timer heap, if it has one (at or before `timer`).
    queued: Option<Millis>,
}

impl Book {
    /// Busy and idle instances.
    pub fn instances(&self) -> u64 {
        u64::from(self.busy) + self.idle.len() as u64
    }

    /// How many idle instances may be stopped without going below `min_instances`: always
    /// the longest idle ones.
    pub fn stoppable(&self) -> usize {
        let spare = self.instances().saturating_sub(u64::from(self.profile.min_instances));
        (self.idle.len() as u64).min(spare) as usize
    }

    /// The longest-idle instance, if it may be stopped.
    pub fn oldest_stoppable(&self) -> Option<Slot> {
        if self.stoppable() > 0 {
            self.idle.front().copied()
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub(crate) struct Ledger {
    books: Vec<Book>,
    budget_mb: Option<u64>,
    idle_mb: u64,
    /// (key, function, seq) of every stoppable idle instance, when there is a budget.
    evictable: BTreeSet<(u64, FnId, u64)>,
    /// (time, function), earliest first.
    timers: BinaryHeap<Reverse<(Millis, FnId)>>,
    seq: u64,
}

impl Ledger {
    pub fn new(budget_mb: Option<u64>) -> Self {
        Ledger {
            books: Vec::new(),
            budget_mb,
            idle_mb: 0,
            evictable: BTreeSet::new(),
            timers: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// `f`'s instances (an empty book for a function never seen).
    pub fn book(&self, f: FnId) -> &Book {
        const EMPTY: &Book = &Book {
            profile: Profile {
                memory_mb: 0,
                cold_start_ms: 0,
                min_instances: 0,
            },
            busy: 0,
            idle: VecDeque::new(),
            listed: 0,
            timer: None,
            queued: None,
        };
        self.books.get(f as usize).unwrap_or(EMPTY)
    }

    fn book_mut(&mut self, f: FnId) -> &mut Book {
        let i = f as usize;
        if i >= self.books.len() {
            self.books.resize_with(i + 1, Book::default);
        }
        &mut self.books[i]
    }

    /// Memory of the idle instances, MB.
    #[cfg(test)]
    pub fn idle_mb(&self) -> u64 {
        self.idle_mb
    }

    pub fn set_profile(&mut self, f: FnId, profile: Profile) {
        let b = self.book_mut(f);
        let n = b.idle.len() as u64;
        let old = u64::from(b.profile.memory_mb);
        b.profile = profile;
        self.idle_mb = self.idle_mb - old * n + u64::from(profile.memory_mb) * n;
        self.sync(f);
    }

    /// A call needed an instance: the most recently idle one takes it when `warm` (and there
    /// is one), else a new one starts. Returns whether an idle instance was taken.
    pub fn call(&mut self, f: FnId, warm: bool) -> bool {
        let took = warm && self.take(f, true).is_some();
        self.book_mut(f).busy += 1;
        self.sync(f);
        took
    }

    /// A busy instance became idle at `now`; `key` orders it for eviction.
    pub fn went_idle(&mut self, f: FnId, now: Millis, key: u64) {
        let b = self.book_mut(f);
        b.busy = b.busy.saturating_sub(1);
        self.push_idle(f, now, key);
    }

    /// A prewarmed instance, idle from `now`.
    pub fn prewarmed(&mut self, f: FnId, now: Millis, key: u64) {
        self.push_idle(f, now, key);
    }

    /// An instance ended without a decision.
    pub fn lost(&mut self, f: FnId, idle: bool) {
        if idle && !self.book(f).idle.is_empty() {
            self.take(f, false);
        } else {
            let b = self.book_mut(f);
            b.busy = b.busy.saturating_sub(1);
        }
        self.sync(f);
    }

    /// Stop `f`'s longest-idle instance (the caller checked it is stoppable).
    pub fn stop_oldest(&mut self, f: FnId) -> Idle {
        debug_assert!(self.book(f).stoppable() > 0, "stopping below min_instances");
        let slot = self.take(f, false).expect("a stoppable instance exists");
        self.sync(f);
        Idle {
            f,
            since: slot.since,
            memory_mb: self.book(f).profile.memory_mb,
        }
    }

    /// Whether `memory_mb` more of idle memory fits the budget.
    pub fn fits(&self, memory_mb: u32) -> bool {
        self.budget_mb.is_none_or(|b| self.idle_mb + u64::from(memory_mb) <= b)
    }

    /// Whether the idle memory is over the budget and something can be evicted.
    pub fn must_evict(&self) -> bool {
        self.budget_mb.is_some_and(|b| self.idle_mb > b) && !self.evictable.is_empty()
    }

    /// The function whose instance a budget evicts next, with that instance's key.
    pub fn cheapest(&self) -> Option<(FnId, u64)> {
        self.evictable.first().map(|&(key, f, _)| (f, key))
    }

    /// While over budget: stop the function of the cheapest instance (its longest-idle one,
    /// which is the cheapest while keys do not decrease along its queue), tell `evicted`.
    pub fn evict_over_budget(&mut self, stops: &mut Vec<Idle>, mut evicted: impl FnMut(&mut Ledger, FnId, u64)) {
        while self.must_evict() {
            let (f, key) = self.cheapest().expect("must_evict saw an evictable instance");
            stops.push(self.stop_oldest(f));
            evicted(self, f, key);
        }
    }

    /// While over budget after the decisions `d` made at `now`: evict as
    /// [`Ledger::evict_over_budget`] does; an instance `d` prewarmed at `now` and evicted at
    /// once is dropped from `d.prewarm` (neither a prewarm nor a stop), every other eviction
    /// joins `d.stop`. Returns the evicted instances, for their policy to retime.
    pub fn evict_into(&mut self, d: &mut Decisions, now: Millis) -> Vec<Idle> {
        let mut evicted = Vec::new();
        self.evict_over_budget(&mut evicted, |_, _, _| {});
        for s in &evicted {
            match d.prewarm.iter().position(|&f| f == s.f && s.since == now) {
                Some(i) => {
                    d.prewarm.remove(i);
                }
                None => d.stop.push(*s),
            }
        }
        evicted
    }

    /// Set `f`'s pending timer (replacing any).
    pub fn set_timer(&mut self, f: FnId, at: Option<Millis>) {
        let b = self.book_mut(f);
        b.timer = at;
        if let Some(t) = at
            && b.queued.is_none_or(|q| t < q)
        {
            b.queued = Some(t);
            self.timers.push(Reverse((t, f)));
        }
    }

    /// A function whose timer is due at `now` (its timer is cleared), if any.
    pub fn pop_due(&mut self, now: Millis) -> Option<FnId> {
        while let Some(&Reverse((t, f))) = self.timers.peek()
            && t <= now
        {
            self.timers.pop();
            let b = &mut self.books[f as usize];
            if b.queued != Some(t) {
                continue; // superseded by an earlier entry
            }
            b.queued = None;
            match b.timer {
                Some(at) if at <= now => {
                    b.timer = None;
                    return Some(f);
                }
                Some(at) => {
                    b.queued = Some(at);
                    self.timers.push(Reverse((at, f)));
                }
                None => {}
            }
        }
        None
    }

    /// The earliest timer entry, or `now` if the budget must evict. It may be early (a timer
    /// since cancelled or moved later: decide then finds nothing due), never late.
    pub fn next_deadline(&self, now: Millis) -> Option<Millis> {
        if self.must_evict() {
            return Some(now);
        }
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn push_idle(&mut self, f: FnId, now: Millis, key: u64) {
        self.seq += 1;
        let seq = self.seq;
        let b = self.book_mut(f);
        b.idle.push_back(Slot { since: now, key, seq });
        self.idle_mb += u64::from(b.profile.memory_mb);
        self.sync(f);
    }

    /// Take `f`'s most recently idle instance (`newest`: a warm call takes it) or its longest
    /// idle one (a stop).
    fn take(&mut self, f: FnId, newest: bool) -> Option<Slot> {
        let Ledger {
            books,
            evictable,
            idle_mb,
            ..
        } = self;
        let b = &mut books[f as usize];
        // The first `listed` idle instances (the oldest) are in the evictable set.
        let (slot, was_listed) = if newest {
            let at = b.idle.len().checked_sub(1)?;
            (b.idle.pop_back().expect("not empty"), at < b.listed)
        } else {
            (b.idle.pop_front()?, b.listed > 0)
        };
        if was_listed {
            b.listed -= 1;
            evictable.remove(&(slot.key, f, slot.seq));
        }
        *idle_mb -= u64::from(b.profile.memory_mb);
        Some(slot)
    }

    /// Make the evictable set hold exactly `f`'s stoppable instances.
    fn sync(&mut self, f: FnId) {
        if self.budget_mb.is_none() {
            return;
        }
        let Ledger { books, evictable, .. } = self;
        let b = &mut books[f as usize];
        let target = b.stoppable();
        while b.listed < target {
            let s = b.idle[b.listed];
            evictable.insert((s.key, f, s.seq));
            b.listed += 1;
        }
        while b.listed > target {
            b.listed -= 1;
            let s = b.idle[b.listed];
            evictable.remove(&(s.key, f, s.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(memory_mb: u32, min_instances: u32) -> Profile {
        Profile {
            memory_mb,
            cold_start_ms: 100,
            min_instances,
        }
    }

    #[test]
    fn counts_memory_and_keeps_min_instances_out_of_reach() {
        let mut l = Ledger::new(Some(100));
        l.set_profile(0, profile(60, 1));
        l.set_profile(1, profile(50, 0));
        assert!(!l.call(0, true), "no idle instance: a cold start");
        l.call(1, false);
        l.went_idle(0, 10, 10);
        l.went_idle(1, 20, 20);
        assert_eq!(l.idle_mb(), 110);
        assert_eq!(l.book(0).stoppable(), 0, "the only instance of a min-1 function");
        assert_eq!(l.cheapest(), Some((1, 20)), "only function 1 may be evicted");
        let mut stops = Vec::new();
        l.evict_over_budget(&mut stops, |_, _, _| {});
        assert_eq!(
            stops,
            vec![Idle {
                f: 1,
                since: 20,
                memory_mb: 50
            }]
        );
        assert_eq!(l.idle_mb(), 60);
        // A second instance of function 0 may go, its first may not.
        l.call(0, true);
        l.call(0, false);
        assert_eq!(l.book(0).busy, 2);
        l.went_idle(0, 30, 30);
        l.went_idle(0, 40, 40);
        assert_eq!(l.book(0).stoppable(), 1);
        assert_eq!(l.cheapest(), Some((0, 30)), "the longest idle goes first");
        l.evict_over_budget(&mut stops, |_, _, _| {});
        assert_eq!(stops.len(), 2);
        assert_eq!(stops[1].since, 30);
        assert_eq!(l.idle_mb(), 60);
        assert!(!l.must_evict());
    }

    #[test]
    fn warm_calls_take_the_newest_and_stale_timers_are_skipped() {
        let mut l = Ledger::new(None);
        l.set_profile(0, profile(10, 0));
        l.call(0, false);
        l.call(0, false);
        l.went_idle(0, 5, 5);
        l.went_idle(0, 7, 7);
        assert!(l.call(0, true));
        assert_eq!(l.book(0).idle.front().map(|s| s.since), Some(5));
        l.set_timer(0, Some(100));
        l.set_timer(0, Some(50));
        assert_eq!(l.next_deadline(0), Some(50));
        assert_eq!(l.pop_due(49), None);
        assert_eq!(l.pop_due(60), Some(0));
        assert_eq!(l.next_deadline(60), Some(100), "the replaced timer, early");
        assert_eq!(l.pop_due(200), None, "and dropped when its time comes");
        assert_eq!(l.next_deadline(200), None);
        // A timer moved later keeps its entry, which re-queues it.
        l.set_timer(0, Some(300));
        l.set_timer(0, None);
        l.set_timer(0, Some(500));
        assert_eq!(l.next_deadline(200), Some(300));
        assert_eq!(l.pop_due(300), None);
        assert_eq!(l.next_deadline(300), Some(500));
        assert_eq!(l.pop_due(500), Some(0));
    }
}
