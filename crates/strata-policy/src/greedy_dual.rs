//! Greedy-dual keep-alive, after FaasCache (Fuerst & Sharma, "FaasCache: Keeping Serverless
//! Computing Alive with Greedy-Dual Caching", ASPLOS'21): keep-alive as caching.
//!
//! Every idle instance is kept while the idle memory fits the budget. Over it, the instance
//! with the lowest priority is evicted first, where an instance's priority, set when it goes
//! idle, is
//!
//! ```text
//! clock + frequency × cold-start cost / memory
//! ```
//!
//! (greedy-dual-size-frequency). `clock` starts at 0 and becomes the priority of each evicted
//! instance (it only grows): instances that went idle long ago keep the low clock of their
//! time, so recency counts too. The cost is the profile's cold-start time (FaasCache: cold
//! minus warm run time), the size its memory. Frequency is counted as [`Frequency`] says.
//!
//! Without a budget nothing is ever evicted: the policy keeps every instance forever.
//!
//! Deviations from FaasCache:
//! - The budget covers idle instances only (busy ones are not evictable either way), and the
//!   priority is set when an instance goes idle rather than when its call starts (the only
//!   time it matters is while it is idle).
//! - By default the frequency counts *accesses*, the calls that needed an instance (warm or
//!   cold, [`crate::Policy::on_call`]), not the calls that joined a busy one: keeping an idle
//!   instance saves one cold start per access, however many calls then share the instance.
//!   It is the function's count since the policy started, never reset nor decayed: an
//!   eviction does not make a function forget how often it is called, and the clock already
//!   ages old priorities. FaasCache counts every call of a container and so restarts from
//!   zero when the function's last container is evicted: [`Frequency::CallsSinceLoad`].

use crate::ledger::{Ledger, key_of};
use crate::{Decisions, FnId, Millis, Policy, Profile};

/// What greedy-dual counts as a function's frequency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Frequency {
    /// Accesses (calls that needed an instance), since the policy started. The default.
    #[default]
    Accesses,
    /// Every call, joined ones included, since the function last had no instance
    /// (FaasCache's per-container counts).
    CallsSinceLoad,
}

/// Greedy-dual-size-frequency eviction of idle instances under the idle-memory budget (see
/// the module docs). Never stops anything when the budget is unlimited; never prewarms.
#[derive(Debug)]
pub struct GreedyDual {
    ledger: Ledger,
    frequency: Frequency,
    clock: f64,
    freq: Vec<u64>,
    evictions: u64,
}

impl GreedyDual {
    /// Keep idle instances within `budget_mb` (all of them forever if `None`).
    pub fn new(frequency: Frequency, budget_mb: Option<u64>) -> Self {
        GreedyDual {
            ledger: Ledger::new(budget_mb),
            frequency,
            clock: 0.0,
            freq: Vec::new(),
            evictions: 0,
        }
    }

    fn count(&mut self, f: FnId, n: u64) {
        let i = f as usize;
        if i >= self.freq.len() {
            self.freq.resize(i + 1, 0);
        }
        self.freq[i] += n;
    }

    /// The priority an instance of `f` going idle now gets.
    fn priority(&self, f: FnId) -> f64 {
        let p = self.ledger.book(f).profile;
        let freq = self.freq.get(f as usize).copied().unwrap_or(0) as f64;
        self.clock + freq * f64::from(p.cold_start_ms) / f64::from(p.memory_mb.max(1))
    }

    fn forget_if_gone(&mut self, f: FnId) {
        if self.frequency == Frequency::CallsSinceLoad
            && self.ledger.book(f).instances() == 0
            && let Some(c) = self.freq.get_mut(f as usize)
        {
            *c = 0;
        }
    }
}

impl Policy for GreedyDual {
    fn set_profile(&mut self, f: FnId, profile: Profile) {
        self.count(f, 0);
        self.ledger.set_profile(f, profile);
    }

    fn on_call(&mut self, f: FnId, _now: Millis, warm: bool) {
        self.count(f, 1);
        self.ledger.call(f, warm);
    }

    fn on_joined(&mut self, f: FnId, _now: Millis, calls: u64) {
        if self.frequency == Frequency::CallsSinceLoad {
            self.count(f, calls);
        }
    }

    fn on_idle(&mut self, f: FnId, now: Millis) {
        let k = key_of(self.priority(f));
        self.ledger.went_idle(f, now, k);
    }

    fn on_lost(&mut self, f: FnId, _now: Millis, idle: bool) {
        self.ledger.lost(f, idle);
        self.forget_if_gone(f);
    }

    fn decide(&mut self, _now: Millis) -> Decisions {
        let mut d = Decisions::default();
        let clock = &mut self.clock;
        self.ledger.evict_over_budget(&mut d.stop, |_, _, key| {
            *clock = clock.max(f64::from_bits(key));
        });
        for s in &d.stop {
            self.forget_if_gone(s.f);
        }
        self.evictions += d.stop.len() as u64;
        d
    }

    fn next_deadline(&self, now: Millis) -> Option<Millis> {
        self.ledger.next_deadline(now)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![("evictions", self.evictions)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Idle;

    fn gd(frequency: Frequency, budget_mb: u64, fns: &[(u32, u32)]) -> GreedyDual {
        let mut p = GreedyDual::new(frequency, Some(budget_mb));
        for (f, &(memory_mb, cold_start_ms)) in fns.iter().enumerate() {
            p.set_profile(
                f as FnId,
                Profile {
                    memory_mb,
                    cold_start_ms,
                    min_instances: 0,
                },
            );
        }
        p
    }

    /// `accesses` busy periods of `f` from `at`, 1 ms each and 1 ms apart: idle at
    /// `at + 2 × accesses − 1`.
    fn serve(p: &mut GreedyDual, f: FnId, at: Millis, accesses: u64) {
        for i in 0..accesses {
            p.on_call(f, at + 2 * i, i > 0);
            p.on_idle(f, at + 2 * i + 1);
        }
    }

    fn stop(f: FnId, since: Millis, memory_mb: u32) -> Idle {
        Idle { f, since, memory_mb }
    }

    #[test]
    fn the_big_rarely_used_function_goes_first_not_the_least_recent() {
        // 0: small and used 10 times, 1: big and used once. LRU would evict 0 (idle first).
        let mut p = gd(Frequency::Accesses, 1_000, &[(100, 500), (1_000, 500)]);
        serve(&mut p, 0, 0, 10); // priority 10 × 500 / 100 = 50
        assert!(p.decide(19).is_empty(), "100 MB fit");
        serve(&mut p, 1, 30, 1); // priority 1 × 500 / 1000 = 0.5
        assert_eq!(p.next_deadline(31), Some(31), "1100 MB over 1000: due now");
        assert_eq!(p.decide(31).stop, vec![stop(1, 31, 1_000)]);
        assert_eq!(p.clock, 0.5);
        assert_eq!(p.next_deadline(31), None);
    }

    #[test]
    fn the_clock_lets_a_recent_instance_outrank_an_old_frequent_one() {
        // 100 MB each, 200 MB of budget; cost / size = 5 except function 3's (2).
        let mut p = gd(
            Frequency::Accesses,
            200,
            &[(100, 500), (100, 500), (100, 500), (100, 200), (100, 500)],
        );
        serve(&mut p, 0, 0, 2); // 10, idle at 3
        serve(&mut p, 1, 10, 3); // 15
        assert!(p.decide(15).is_empty());
        serve(&mut p, 2, 20, 1); // 5: the lowest, though 0 is the least recent
        assert_eq!(p.decide(21).stop, vec![stop(2, 21, 100)]);
        serve(&mut p, 3, 30, 1); // clock 5 + 2 = 7
        assert_eq!(p.decide(31).stop, vec![stop(3, 31, 100)]);
        // Without the clock, function 4 (5) would go before function 0 (10); with it, 7 + 5 = 12.
        serve(&mut p, 4, 40, 1);
        assert_eq!(p.decide(41).stop, vec![stop(0, 3, 100)]);
        assert_eq!(p.clock, 10.0);
    }

    #[test]
    fn accesses_count_and_persist_joined_calls_do_not() {
        let mut p = gd(Frequency::Accesses, 200, &[(100, 500), (100, 500), (100, 600)]);
        // Function 0: one busy period of 1,000 calls is one access: priority 5.
        p.on_call(0, 0, false);
        p.on_joined(0, 0, 999);
        p.on_idle(0, 1);
        serve(&mut p, 1, 10, 2); // 10
        serve(&mut p, 2, 20, 1); // 6
        assert_eq!(p.decide(21).stop, vec![stop(0, 1, 100)], "1,000 calls, one access");
        // Evicted, function 0 keeps its count: a second access makes 5 + 2 × 5 = 15.
        serve(&mut p, 0, 30, 1);
        assert_eq!(p.decide(31).stop, vec![stop(2, 21, 100)]);
    }

    #[test]
    fn faascache_counts_calls_and_restarts_when_the_last_instance_is_gone() {
        // Function 2 has cost / size 6.
        let mut p = gd(Frequency::CallsSinceLoad, 200, &[(100, 500), (100, 500), (100, 600)]);
        p.on_call(0, 0, false);
        p.on_joined(0, 0, 9);
        p.on_idle(0, 1); // 10 calls: 50
        serve(&mut p, 1, 10, 1); // 5
        serve(&mut p, 2, 20, 2); // 12
        assert_eq!(p.decide(23).stop, vec![stop(1, 11, 100)]);
        // Function 1 again: frequency 1, not 2 → 5 + 5 = 10 < 12, so it goes again
        // (with its old count it would be 5 + 10 = 15 and function 2 would go).
        serve(&mut p, 1, 30, 1);
        assert_eq!(p.decide(31).stop, vec![stop(1, 31, 100)]);
    }

    #[test]
    fn unlimited_keeps_everything_and_min_instances_survive_a_zero_budget() {
        let mut p = GreedyDual::new(Frequency::Accesses, None);
        p.set_profile(
            0,
            Profile {
                memory_mb: 4_096,
                cold_start_ms: 1,
                min_instances: 0,
            },
        );
        serve(&mut p, 0, 0, 1);
        assert_eq!(p.next_deadline(1), None);
        assert!(p.decide(1_000_000_000).is_empty());

        let mut p = gd(Frequency::Accesses, 0, &[(100, 500), (100, 500)]);
        p.set_profile(
            0,
            Profile {
                memory_mb: 100,
                cold_start_ms: 500,
                min_instances: 1,
            },
        );
        serve(&mut p, 0, 0, 1);
        assert!(p.decide(1).is_empty(), "the only instance of a min-1 function stays");
        serve(&mut p, 1, 0, 100);
        assert_eq!(p.decide(199).stop, vec![stop(1, 199, 100)], "only the unprotected one");
        assert_eq!(p.next_deadline(199), None, "over budget, but nothing may go");
    }
}
