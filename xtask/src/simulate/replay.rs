//! The discrete-event replay of one policy at one budget over a trace: the model of
//! `cargo xtask simulate` (see its module docs), driving the `strata-policy` code.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use anyhow::bail;
use strata_policy::{Config, MINUTE, Millis, PolicyKind, Profile};

use super::trace::{Rng, Trace, percentile};
use super::{Budget, Variant};

/// What one policy at one budget did over the trace.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: PolicyKind,
    pub variant: Variant,
    pub budget: Budget,
    pub budget_mb: u64,
    pub calls: u64,
    pub cold: u64,
    /// Percentiles over functions of their cold percentage: 50th, 75th, 90th.
    pub app_cold_pct: [f64; 3],
    pub wasted_gb_s: f64,
    /// Wasted memory over the trace's length, GB.
    pub mean_idle_gb: f64,
    /// The most idle memory held for at least a millisecond, GB.
    pub peak_idle_gb: f64,
    pub cold_start_s: f64,
    pub prewarms: u64,
    pub stops: u64,
    pub stats: Vec<(&'static str, u64)>,
    /// Cold starts per function, in trace order.
    pub cold_by_fn: Vec<u64>,
    /// The same per class of average rate: at most once an hour, at most once a minute, more.
    pub by_class: [ClassResult; 3],
    pub elapsed: Duration,
}

/// Calls, cold starts and wasted memory of one class of functions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassResult {
    pub functions: usize,
    pub calls: u64,
    pub cold: u64,
    pub wasted_gb_s: f64,
}

/// The class of a function with `calls` over `minutes`: 0 at most one call an hour on average,
/// 1 at most one a minute, 2 more.
pub fn rate_class(calls: u64, minutes: u32) -> usize {
    let minutes = u64::from(minutes);
    if calls * 60 <= minutes {
        0
    } else if calls <= minutes {
        1
    } else {
        2
    }
}

impl RunResult {
    pub fn cold_fraction(&self) -> f64 {
        self.cold as f64 / self.calls.max(1) as f64
    }
}

/// A function's instance, as the simulator holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inst {
    None,
    Idle { since: Millis },
    Busy { until: Millis },
}

/// First and last arrival (ms into the minute) of `calls` uniform arrivals.
pub fn spread(seed: u64, f: u32, minute: u32, calls: u32) -> (u64, u64) {
    let mut r = Rng::new(&[seed, u64::from(f), u64::from(minute)]);
    let m = MINUTE as f64;
    let first = m * (1.0 - r.f64().powf(1.0 / f64::from(calls)));
    let last = if calls > 1 {
        first + (m - first) * r.f64().powf(1.0 / f64::from(calls - 1))
    } else {
        first
    };
    let ms = |x: f64| (x as u64).min(MINUTE - 1);
    (ms(first), ms(last))
}

/// One function's calls in one minute, as a run replays them.
#[derive(Debug, Clone, Copy)]
struct Cell {
    f: u32,
    calls: u32,
    /// First and last arrival, ms into the minute.
    first: u16,
    last: u16,
}

/// The trace minute by minute, each minute's cells by first arrival: built once, replayed by
/// every run (sequential memory access, no sorting per run).
pub struct Schedule {
    minutes: u32,
    offsets: Vec<usize>,
    cells: Vec<Cell>,
}

impl Schedule {
    pub fn new(trace: &Trace, seed: u64) -> Schedule {
        let minutes = trace.minutes as usize;
        let mut offsets = vec![0usize; minutes + 1];
        for f in 0..trace.fns.len() {
            for i in trace.range(f) {
                offsets[trace.at(i).0 as usize + 1] += 1;
            }
        }
        for m in 0..minutes {
            offsets[m + 1] += offsets[m];
        }
        let mut fill = offsets.clone();
        let empty = Cell {
            f: 0,
            calls: 0,
            first: 0,
            last: 0,
        };
        let mut cells = vec![empty; trace.cells()];
        for f in 0..trace.fns.len() {
            for i in trace.range(f) {
                let (m, calls) = trace.at(i);
                let (first, last) = spread(seed, f as u32, m, calls);
                let at = &mut fill[m as usize];
                cells[*at] = Cell {
                    f: f as u32,
                    calls,
                    first: first as u16,
                    last: last as u16,
                };
                *at += 1;
            }
        }
        for m in 0..minutes {
            cells[offsets[m]..offsets[m + 1]].sort_unstable_by_key(|c| (c.first, c.f));
        }
        Schedule {
            minutes: trace.minutes,
            offsets,
            cells,
        }
    }

    fn minute(&self, m: u32) -> &[Cell] {
        &self.cells[self.offsets[m as usize]..self.offsets[m as usize + 1]]
    }
}

/// Replay `trace` (as `schedule`) through `kind` with `config`.
pub fn simulate(trace: &Trace, schedule: &Schedule, kind: PolicyKind, config: &Config) -> anyhow::Result<RunResult> {
    let t0 = Instant::now();
    let mut policy = strata_policy::build(kind, config)?;
    let n = trace.fns.len();
    for (f, tf) in trace.fns.iter().enumerate() {
        policy.set_profile(
            f as u32,
            Profile {
                memory_mb: tf.memory_mb,
                cold_start_ms: tf.cold_start_ms,
                min_instances: 0,
            },
        );
    }
    let mut inst = vec![Inst::None; n];
    let mut cold = vec![0u64; n];
    // Ends of busy periods, earliest first (one per busy function, plus superseded ones).
    let mut ends: BinaryHeap<Reverse<(Millis, u32)>> = BinaryHeap::new();
    // Memory × idle time per function, MB·ms.
    let mut wasted = vec![0u64; n];
    let (mut prewarms, mut stops) = (0u64, 0u64);
    // Idle memory now, and the most held for at least a millisecond.
    let (mut idle_mb, mut peak_idle_mb) = (0u64, 0u64);
    let mut now: Millis = 0;
    let idle_cost = |f: usize, from: Millis, to: Millis| u64::from(trace.fns[f].memory_mb) * (to - from);
    for minute in 0..schedule.minutes {
        let base = Millis::from(minute) * MINUTE;
        let horizon = base + MINUTE;
        let starts = schedule.minute(minute);
        let mut s = 0;
        loop {
            let t_start = starts.get(s).map(|c| base + Millis::from(c.first));
            let t_end = ends.peek().map(|Reverse((t, _))| *t).filter(|&t| t < horizon);
            let t_decide = policy.next_deadline(now).map(|t| t.max(now)).filter(|&t| t < horizon);
            let Some(t) = [t_end, t_decide, t_start].into_iter().flatten().min() else {
                break;
            };
            if t > now {
                peak_idle_mb = peak_idle_mb.max(idle_mb);
            }
            now = t;
            if t_end == Some(t) {
                let Reverse((_, f)) = ends.pop().expect("peeked");
                let fu = f as usize;
                if inst[fu] == (Inst::Busy { until: t }) {
                    inst[fu] = Inst::Idle { since: t };
                    idle_mb += u64::from(trace.fns[fu].memory_mb);
                    policy.on_idle(f, t);
                }
            } else if t_decide == Some(t) {
                let d = policy.decide(t);
                for stop in &d.stop {
                    let fu = stop.f as usize;
                    match inst[fu] {
                        Inst::Idle { since } if since == stop.since => {
                            wasted[fu] += idle_cost(fu, since, t);
                            idle_mb -= u64::from(trace.fns[fu].memory_mb);
                            inst[fu] = Inst::None;
                        }
                        other => bail!("{kind}: stop {stop:?} at {t} but the instance is {other:?}"),
                    }
                }
                for &f in &d.prewarm {
                    let fu = f as usize;
                    if inst[fu] != Inst::None {
                        bail!("{kind}: prewarm of {f} at {t} but it has an instance {:?}", inst[fu]);
                    }
                    inst[fu] = Inst::Idle { since: t };
                    idle_mb += u64::from(trace.fns[fu].memory_mb);
                }
                if config.budget_mb.is_some_and(|b| idle_mb > b) {
                    bail!(
                        "{kind}: {idle_mb} MB idle after deciding at {t}, over the budget {:?}",
                        config.budget_mb
                    );
                }
                stops += d.stop.len() as u64;
                prewarms += d.prewarm.len() as u64;
                if let Some(next) = policy.next_deadline(t)
                    && next <= t
                {
                    bail!("{kind}: decide at {t} left a deadline at {next}");
                }
            } else {
                let st = starts[s];
                s += 1;
                let last = base + Millis::from(st.last);
                let fu = st.f as usize;
                let tf = &trace.fns[fu];
                let duration = Millis::from(tf.duration_ms);
                let joining = u64::from(st.calls - 1);
                let until = match inst[fu] {
                    Inst::Busy { until } => {
                        policy.on_joined(st.f, t, joining + 1);
                        until.max(last + duration)
                    }
                    Inst::Idle { since } => {
                        wasted[fu] += idle_cost(fu, since, t);
                        idle_mb -= u64::from(tf.memory_mb);
                        policy.on_call(st.f, t, true);
                        if joining > 0 {
                            policy.on_joined(st.f, t, joining);
                        }
                        last + duration
                    }
                    Inst::None => {
                        cold[fu] += 1;
                        policy.on_call(st.f, t, false);
                        if joining > 0 {
                            policy.on_joined(st.f, t, joining);
                        }
                        last.max(t + Millis::from(tf.cold_start_ms)) + duration
                    }
                };
                if inst[fu] != (Inst::Busy { until }) {
                    inst[fu] = Inst::Busy { until };
                    ends.push(Reverse((until, st.f)));
                }
            }
        }
    }
    let end = Millis::from(trace.minutes) * MINUTE;
    peak_idle_mb = peak_idle_mb.max(idle_mb);
    for (f, i) in inst.iter().enumerate() {
        if let Inst::Idle { since } = *i {
            wasted[f] += idle_cost(f, since, end.max(since));
        }
    }
    let mut pct: Vec<f64> = Vec::new();
    let (mut calls, mut cold_calls, mut cold_ms, mut wasted_mb_ms) = (0u64, 0u64, 0u128, 0u128);
    let mut by_class = [ClassResult::default(); 3];
    let gb_s = |mb_ms: u128| mb_ms as f64 / 1024.0 / 1000.0;
    for (f, tf) in trace.fns.iter().enumerate() {
        wasted_mb_ms += u128::from(wasted[f]);
        let c = trace.calls_of(f);
        if c == 0 {
            continue;
        }
        calls += c;
        cold_calls += cold[f];
        cold_ms += u128::from(cold[f]) * u128::from(tf.cold_start_ms);
        pct.push(100.0 * cold[f] as f64 / c as f64);
        let k = &mut by_class[rate_class(c, trace.minutes)];
        k.functions += 1;
        k.calls += c;
        k.cold += cold[f];
        k.wasted_gb_s += gb_s(u128::from(wasted[f]));
    }
    pct.sort_unstable_by(f64::total_cmp);
    let p = |q| percentile(&pct, q).unwrap_or(0.0);
    let wasted_gb_s = gb_s(wasted_mb_ms);
    Ok(RunResult {
        policy: kind,
        variant: Variant::Configured,
        budget: Budget::Share(100),
        budget_mb: config.budget_mb.unwrap_or(0),
        calls,
        cold: cold_calls,
        app_cold_pct: [p(50.0), p(75.0), p(90.0)],
        wasted_gb_s,
        mean_idle_gb: wasted_gb_s / (end.max(1) as f64 / 1000.0),
        peak_idle_gb: peak_idle_mb as f64 / 1024.0,
        cold_start_s: cold_ms as f64 / 1000.0,
        prewarms,
        stops,
        stats: policy.stats(),
        cold_by_fn: cold,
        by_class,
        elapsed: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::trace::TraceFn;
    use super::*;

    fn one(memory_mb: u32, duration_ms: u32, cold_start_ms: u32) -> TraceFn {
        TraceFn {
            name: "f".into(),
            memory_mb,
            duration_ms,
            cold_start_ms,
            kind: "timer".into(),
        }
    }

    #[test]
    fn a_timer_every_5_minutes_under_each_policy() {
        // One 256 MB function called once at minute 0, 5, ..., 55 of an hour; 1 s calls.
        let mut t = Trace::new(60);
        t.push(one(256, 1_000, 500), (0..12).map(|k| (k * 5, 1)));
        let c = Config::default();
        let a = Schedule::new(&t, 1);
        let fixed = simulate(&t, &a, PolicyKind::Fixed, &c).unwrap();
        assert_eq!((fixed.calls, fixed.cold), (12, 1));
        assert_eq!(fixed.app_cold_pct[1], 100.0 / 12.0);
        assert_eq!(fixed.cold_start_s, 0.5);
        // Idle from the first call's end to the end of the hour, but for the 11 later calls'
        // busy time (1 s each) and the cold start (0.5 s): 60 min − 12 s − 0.5 s − first arrival.
        let (first, _) = spread(1, 0, 0, 1);
        let idle_ms = 3_600_000 - 12_000 - 500 - first;
        // …minus the offsets of the later calls inside their minutes, which shift busy time
        // but not its total: the calls all end inside the hour.
        assert_eq!(fixed.wasted_gb_s, 256.0 * idle_ms as f64 / 1024.0 / 1000.0);
        let gd = simulate(&t, &a, PolicyKind::GreedyDual, &c).unwrap();
        assert_eq!((gd.cold, gd.wasted_gb_s), (1, fixed.wasted_gb_s), "nothing to evict");
        let hybrid = simulate(&t, &a, PolicyKind::Hybrid, &c).unwrap();
        assert_eq!(hybrid.cold, 1);
        assert!(
            hybrid.wasted_gb_s < fixed.wasted_gb_s,
            "it unloads after its 10th idle time"
        );
        assert!(hybrid.prewarms >= 1);
    }

    #[test]
    fn a_budget_below_one_instance_makes_every_busy_period_cold() {
        let mut t = Trace::new(30);
        t.push(one(100, 10, 5), (0..30).map(|m| (m, 3)));
        let c = Config {
            budget_mb: Some(50),
            ..Config::default()
        };
        for k in PolicyKind::ALL {
            let r = simulate(&t, &Schedule::new(&t, 3), k, &c).unwrap();
            assert_eq!(
                (r.calls, r.cold),
                (90, 30),
                "{k}: the instance is evicted whenever it idles"
            );
            assert_eq!(r.wasted_gb_s, 0.0, "{k}");
        }
    }
}
