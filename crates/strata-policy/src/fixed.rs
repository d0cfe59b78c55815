//! Fixed keep-alive: every instance idle for `keep_alive` is stopped; over the budget, the
//! longest idle goes first.

use crate::ledger::Ledger;
use crate::{Decisions, FnId, Millis, Policy, Profile};

/// Stop an instance once it has been idle for `keep_alive` (the state of practice: 10 minutes
/// on AWS Lambda, 20 on Azure Functions in 2019). Never prewarms. With a budget, evicts the
/// longest-idle instance first (LRU) while the idle memory is over it.
#[derive(Debug)]
pub struct FixedKeepAlive {
    ledger: Ledger,
    keep_alive: Millis,
    stops: u64,
}

impl FixedKeepAlive {
    /// Keep idle instances `keep_alive` ms, within `budget_mb` of idle memory if set.
    pub fn new(keep_alive: Millis, budget_mb: Option<u64>) -> Self {
        FixedKeepAlive {
            ledger: Ledger::new(budget_mb),
            keep_alive,
            stops: 0,
        }
    }

    fn retime(&mut self, f: FnId) {
        let at = self
            .ledger
            .book(f)
            .oldest_stoppable()
            .map(|s| s.since.saturating_add(self.keep_alive));
        self.ledger.set_timer(f, at);
    }
}

impl Policy for FixedKeepAlive {
    fn set_profile(&mut self, f: FnId, profile: Profile) {
        self.ledger.set_profile(f, profile);
        self.retime(f);
    }

    fn on_call(&mut self, f: FnId, _now: Millis, warm: bool) {
        self.ledger.call(f, warm);
        self.retime(f);
    }

    fn on_joined(&mut self, _f: FnId, _now: Millis, _calls: u64) {}

    fn on_idle(&mut self, f: FnId, now: Millis) {
        self.ledger.went_idle(f, now, now);
        self.retime(f);
    }

    fn on_lost(&mut self, f: FnId, _now: Millis, idle: bool) {
        self.ledger.lost(f, idle);
        self.retime(f);
    }

    fn decide(&mut self, now: Millis) -> Decisions {
        let mut d = Decisions::default();
        while let Some(f) = self.ledger.pop_due(now) {
            while let Some(s) = self.ledger.book(f).oldest_stoppable()
                && s.since.saturating_add(self.keep_alive) <= now
            {
                d.stop.push(self.ledger.stop_oldest(f));
            }
            self.retime(f);
        }
        let keep_alive = self.keep_alive;
        self.ledger.evict_over_budget(&mut d.stop, |l, f, _| {
            let at = l.book(f).oldest_stoppable().map(|s| s.since.saturating_add(keep_alive));
            l.set_timer(f, at);
        });
        self.stops += d.stop.len() as u64;
        d
    }

    fn next_deadline(&self, now: Millis) -> Option<Millis> {
        self.ledger.next_deadline(now)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![("stops", self.stops)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Call, Sim};
    use crate::{Config, Idle, MINUTE, PolicyKind};

    fn every(gap: Millis, n: u64) -> Vec<Call> {
        (0..n).map(|i| Call::new(0, i * gap, 1_000)).collect()
    }

    #[test]
    fn a_function_called_every_5_minutes_stays_warm() {
        let mut sim = Sim::new(PolicyKind::Fixed, &Config::default(), &[(256, 500, 0)]);
        let out = sim.run(&every(5 * MINUTE, 12));
        assert_eq!(out.cold, 1, "only the first call");
        assert_eq!(
            out.stops,
            vec![(0, 55 * MINUTE + 1_000 + 10 * MINUTE)],
            "stopped 10 min after the last call"
        );
    }

    #[test]
    fn a_function_called_every_20_minutes_is_cold_every_time() {
        let mut sim = Sim::new(PolicyKind::Fixed, &Config::default(), &[(256, 500, 0)]);
        let out = sim.run(&every(20 * MINUTE, 12));
        assert_eq!(out.cold, 12);
        assert_eq!(out.stops.len(), 12);
        assert!(out.prewarms.is_empty());
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let mut p = FixedKeepAlive::new(10 * MINUTE, None);
        p.set_profile(
            3,
            Profile {
                memory_mb: 128,
                cold_start_ms: 50,
                min_instances: 0,
            },
        );
        p.on_call(3, 0, false);
        p.on_idle(3, 2_000);
        assert_eq!(p.next_deadline(2_000), Some(602_000));
        assert!(p.decide(601_999).is_empty());
        let d = p.decide(602_000);
        assert_eq!(
            d.stop,
            vec![Idle {
                f: 3,
                since: 2_000,
                memory_mb: 128
            }]
        );
        assert_eq!(p.next_deadline(602_000), None);
    }

    #[test]
    fn over_budget_the_longest_idle_goes_first() {
        let mut p = FixedKeepAlive::new(10 * MINUTE, Some(300));
        for f in 0..3 {
            p.set_profile(
                f,
                Profile {
                    memory_mb: 100 + 10 * f,
                    cold_start_ms: 50,
                    min_instances: 0,
                },
            );
            p.on_call(f, 0, false);
        }
        p.on_idle(2, 1_000);
        p.on_idle(0, 2_000);
        assert!(p.decide(2_000).is_empty(), "220 MB fit in 300");
        p.on_idle(1, 3_000);
        assert_eq!(p.next_deadline(3_000), Some(3_000), "320 MB: due now");
        let d = p.decide(3_000);
        assert_eq!(
            d.stop,
            vec![Idle {
                f: 2,
                since: 1_000,
                memory_mb: 120
            }]
        );
        assert_eq!(
            p.next_deadline(3_000),
            Some(601_000),
            "function 2's cancelled timer: early"
        );
        assert!(p.decide(601_000).is_empty());
        assert_eq!(p.next_deadline(601_000), Some(602_000), "the next expiry, function 0's");
    }

    #[test]
    fn min_instances_are_never_stopped_by_time_or_budget() {
        let mut p = FixedKeepAlive::new(MINUTE, Some(0));
        p.set_profile(
            0,
            Profile {
                memory_mb: 512,
                cold_start_ms: 50,
                min_instances: 1,
            },
        );
        p.on_call(0, 0, false);
        p.on_call(0, 0, false);
        p.on_idle(0, 10);
        p.on_idle(0, 20);
        let d = p.decide(20);
        assert_eq!(
            d.stop,
            vec![Idle {
                f: 0,
                since: 10,
                memory_mb: 512
            }],
            "budget 0: one of two may go"
        );
        assert_eq!(p.next_deadline(20), Some(60_010), "the stopped instance's timer, early");
        assert!(p.decide(60_010).is_empty());
        assert_eq!(p.next_deadline(60_010), None, "the last one is kept for good");
        assert!(p.decide(100 * MINUTE).is_empty());
    }
}
