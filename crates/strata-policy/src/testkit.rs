//! Test drivers: a mirror of the instances a driver would hold, checking every decision
//! against it, and a tiny trace simulator (one instance per function) on top of it.

use crate::{Config, Decisions, FnId, Millis, Policy, PolicyKind, Profile, build};

/// The instances a driver holds, per function, and the invariants decisions must keep.
#[derive(Debug, Default)]
pub struct Mirror {
    pub profiles: Vec<Profile>,
    pub busy: Vec<u32>,
    /// Idle since, longest idle first.
    pub idle: Vec<Vec<Millis>>,
}

impl Mirror {
    pub fn new(profiles: &[Profile]) -> Self {
        Mirror {
            profiles: profiles.to_vec(),
            busy: vec![0; profiles.len()],
            idle: vec![Vec::new(); profiles.len()],
        }
    }

    pub fn idle_mb(&self) -> u64 {
        self.idle
            .iter()
            .zip(&self.profiles)
            .map(|(i, p)| i.len() as u64 * u64::from(p.memory_mb))
            .sum()
    }

    fn instances(&self, f: usize) -> u64 {
        u64::from(self.busy[f]) + self.idle[f].len() as u64
    }

    /// Idle memory nothing may evict (instances kept for `min_instances`).
    pub fn protected_mb(&self) -> u64 {
        (0..self.profiles.len())
            .map(|f| {
                let keep = u64::from(self.profiles[f].min_instances).min(self.instances(f));
                let busy = u64::from(self.busy[f]);
                keep.saturating_sub(busy).min(self.idle[f].len() as u64) * u64::from(self.profiles[f].memory_mb)
            })
            .sum()
    }

    /// A call of `f`: takes the newest idle instance if any (returns true), else starts one.
    pub fn call(&mut self, f: FnId) -> bool {
        let f = f as usize;
        self.busy[f] += 1;
        self.idle[f].pop().is_some()
    }

    pub fn went_idle(&mut self, f: FnId, now: Millis) {
        let f = f as usize;
        assert!(self.busy[f] > 0, "function {f} has no busy instance");
        self.busy[f] -= 1;
        self.idle[f].push(now);
    }

    /// Carry out `d` at `now`, asserting each decision is legal.
    pub fn apply(&mut self, d: &Decisions, now: Millis) {
        for s in &d.stop {
            let f = s.f as usize;
            assert!(
                self.instances(f) > u64::from(self.profiles[f].min_instances),
                "stopping {s:?} goes below min_instances"
            );
            assert!(
                !self.idle[f].is_empty(),
                "stopping {s:?} but function {f} has no idle instance"
            );
            let oldest = self.idle[f].remove(0);
            assert_eq!(oldest, s.since, "stop {s:?} is not the longest idle");
            assert_eq!(s.memory_mb, self.profiles[f].memory_mb);
        }
        for &f in &d.prewarm {
            assert_eq!(
                self.instances(f as usize),
                0,
                "prewarm of function {f}, which has an instance"
            );
            self.idle[f as usize].push(now);
        }
    }
}

/// A call in a test trace.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub f: FnId,
    pub at: Millis,
    pub duration: Millis,
}

impl Call {
    pub fn new(f: FnId, at: Millis, duration: Millis) -> Self {
        Call { f, at, duration }
    }
}

/// What a [`Sim`] run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub cold: u64,
    /// Index in the trace of every cold call.
    pub cold_calls: Vec<usize>,
    pub stops: Vec<(FnId, Millis)>,
    pub prewarms: Vec<(FnId, Millis)>,
}

/// One instance per function, serving calls concurrently (a call arriving while it is busy
/// joins it), like `cargo xtask simulate`.
pub struct Sim {
    pub policy: Box<dyn Policy + Send>,
    pub mirror: Mirror,
    budget_mb: Option<u64>,
    now: Millis,
}

impl Sim {
    /// Functions given as (memory MB, cold start ms, min instances).
    pub fn new(kind: PolicyKind, config: &Config, fns: &[(u32, u32, u32)]) -> Self {
        let profiles: Vec<Profile> = fns
            .iter()
            .map(|&(memory_mb, cold_start_ms, min_instances)| Profile {
                memory_mb,
                cold_start_ms,
                min_instances,
            })
            .collect();
        let mut policy = build(kind, config).expect("valid config");
        for (f, p) in profiles.iter().enumerate() {
            policy.set_profile(f as FnId, *p);
        }
        Sim {
            policy,
            mirror: Mirror::new(&profiles),
            budget_mb: config.budget_mb,
            now: 0,
        }
    }

    fn decide(&mut self, now: Millis, out: &mut Outcome) {
        let d = self.policy.decide(now);
        self.mirror.apply(&d, now);
        out.stops.extend(d.stop.iter().map(|s| (s.f, now)));
        out.prewarms.extend(d.prewarm.iter().map(|&f| (f, now)));
        if let Some(b) = self.budget_mb {
            assert!(
                self.mirror.idle_mb() <= b.max(self.mirror.protected_mb()),
                "idle {} MB over budget {b} MB after deciding at {now}",
                self.mirror.idle_mb()
            );
        }
        if let Some(next) = self.policy.next_deadline(now) {
            assert!(next > now, "deadline {next} not after the decision at {now}");
        }
    }

    /// Run `calls` (sorted by time), then until nothing is pending (at most a day later).
    pub fn run(&mut self, calls: &[Call]) -> Outcome {
        let mut out = Outcome::default();
        let n = self.mirror.profiles.len();
        let mut busy_until: Vec<Option<Millis>> = vec![None; n];
        let horizon = calls.last().map_or(0, |c| c.at) + 24 * 60 * 60 * 1000;
        let mut next = 0;
        loop {
            let t_call = calls.get(next).map(|c| c.at);
            let t_end = busy_until
                .iter()
                .enumerate()
                .filter_map(|(f, u)| u.map(|u| (u, f)))
                .min();
            let t_dl = self.policy.next_deadline(self.now);
            let t = [t_call, t_end.map(|(u, _)| u), t_dl].into_iter().flatten().min();
            let Some(t) = t else { break };
            if t > horizon {
                break;
            }
            assert!(t >= self.now, "time went back from {} to {t}", self.now);
            self.now = t;
            if let Some((u, f)) = t_end
                && u == t
            {
                busy_until[f] = None;
                self.mirror.went_idle(f as FnId, t);
                self.policy.on_idle(f as FnId, t);
            } else if t_dl.is_some_and(|d| d <= t) {
                self.decide(t, &mut out);
            } else {
                let c = calls[next];
                let f = c.f as usize;
                match busy_until[f] {
                    Some(u) => {
                        busy_until[f] = Some(u.max(c.at + c.duration));
                        self.policy.on_joined(c.f, t, 1);
                    }
                    None => {
                        let warm = self.mirror.call(c.f);
                        if !warm {
                            out.cold += 1;
                            out.cold_calls.push(next);
                        }
                        self.policy.on_call(c.f, t, warm);
                        busy_until[f] = Some(c.at + c.duration);
                    }
                }
                next += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MINUTE;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Call(FnId),
        Join(FnId),
        Finish(FnId),
        Lose(FnId, bool),
        Wait(Millis),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4u32).prop_map(Op::Call),
            1 => (0..4u32).prop_map(Op::Join),
            3 => (0..4u32).prop_map(Op::Finish),
            1 => (0..4u32, any::<bool>()).prop_map(|(f, i)| Op::Lose(f, i)),
            3 => (0..30 * MINUTE).prop_map(Op::Wait),
        ]
    }

    fn profile() -> impl Strategy<Value = Profile> {
        (1..500u32, 1..2_000u32, 0..3u32).prop_map(|(memory_mb, cold_start_ms, min_instances)| Profile {
            memory_mb,
            cold_start_ms,
            min_instances,
        })
    }

    /// Decide while something is due at `now`, checking every decision against the mirror.
    fn settle(p: &mut dyn Policy, m: &mut Mirror, now: Millis, budget: Option<u64>) {
        if p.next_deadline(now).is_some_and(|t| t <= now) {
            let d = p.decide(now);
            m.apply(&d, now);
            if let Some(b) = budget {
                prop_assert_budget(m, b);
            }
            let next = p.next_deadline(now);
            assert!(next.is_none_or(|t| t > now), "deadline {next:?} not after {now}");
        }
    }

    fn prop_assert_budget(m: &Mirror, b: u64) {
        assert!(
            m.idle_mb() <= b.max(m.protected_mb()),
            "idle {} MB over budget {b} MB (protected {} MB)",
            m.idle_mb(),
            m.protected_mb()
        );
    }

    proptest! {
        #[test]
        fn decisions_are_legal_and_keep_the_budget(
            kind in prop_oneof![
                Just(PolicyKind::Fixed),
                Just(PolicyKind::Hybrid),
                Just(PolicyKind::GreedyDual),
                Just(PolicyKind::Hazard),
            ],
            profiles in proptest::collection::vec(profile(), 4),
            budget in proptest::option::of(0..1_500u64),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut config = Config { budget_mb: budget, ..Config::default() };
            config.keep_alive = 5 * MINUTE;
            config.hybrid.bins = 10;
            config.hybrid.min_samples = 2;
            config.hybrid.fallback_keep_alive = 15 * MINUTE;
            config.hazard.bins = 10;
            config.hazard.min_samples = 2;
            config.hazard.warm_up_keep_alive = 15 * MINUTE;
            let mut p = build(kind, &config).expect("valid");
            for (f, pr) in profiles.iter().enumerate() {
                p.set_profile(f as FnId, *pr);
            }
            let mut m = Mirror::new(&profiles);
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Call(f) => {
                        let warm = m.call(f);
                        p.on_call(f, now, warm);
                    }
                    Op::Join(f) => {
                        if m.busy[f as usize] > 0 {
                            p.on_joined(f, now, 3);
                        }
                    }
                    Op::Finish(f) => {
                        if m.busy[f as usize] > 0 {
                            m.went_idle(f, now);
                            p.on_idle(f, now);
                        }
                    }
                    Op::Lose(f, idle) => {
                        let i = f as usize;
                        if idle && !m.idle[i].is_empty() {
                            m.idle[i].remove(0);
                            p.on_lost(f, now, true);
                        } else if !idle && m.busy[i] > 0 {
                            m.busy[i] -= 1;
                            p.on_lost(f, now, false);
                        }
                    }
                    Op::Wait(dt) => {
                        let until = now + dt;
                        while let Some(t) = p.next_deadline(now).filter(|&t| t <= until) {
                            now = now.max(t);
                            settle(p.as_mut(), &mut m, now, budget);
                        }
                        now = until;
                    }
                }
                settle(p.as_mut(), &mut m, now, budget);
            }
        }
    }
}
