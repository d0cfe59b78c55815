//! A synthetic trace drawn from the distributions Shahrad et al. (ATC'20, §3) publish for the
//! Azure Functions 2019 workload, seeded and reproducible. Each generated function is a unit of
//! loading (an Azure application of one function, the commonest case: 54% of apps).
//!
//! Per function, independently (its own SplitMix64 stream from the seed and its index):
//!
//! - **Average rate**, three classes: 45% log-uniform between one call per 3 days and one per
//!   hour ("45% of apps are invoked at most once per hour"), 36.4% log-uniform between one per
//!   hour and one per minute ("81% at most once per minute"), 18.6% log-uniform between one
//!   and 770 per minute. 770 is not tuned: it is the upper bound that makes the top class's
//!   mean rate (115.6/min) carry 99.6% of all calls against the two lower classes' means
//!   (0.0038 and 0.24/min), the paper's "the 18.6% most popular apps make 99.6% of
//!   invocations". The span is about 7 orders of magnitude (the paper's: 8).
//! - **Pattern**: 15.6% of functions are timers (the paper's share of timer-triggered
//!   functions), all in the two lower classes: one call every period, the standard period
//!   nearest (in log) to 1/rate, at a random phase; 40% of all functions are bursty (the
//!   paper: 40% of apps have an inter-arrival CV above 1); the rest Poisson. Bursty functions
//!   under one call a minute come in clusters (a Poisson process of bursts of geometric size,
//!   mean 2-20 calls, spread over 1-30 minutes); above it, an on/off process (on 10-70% of the
//!   time, on-periods of 2-60 minutes, Poisson while on).
//! - **Load shape**: Poisson and bursty rates follow a diurnal sine of ±1/3 (the trough half
//!   the peak, peak at 16:00, each function shifted by up to ±2 hours) and weekends at 80% of
//!   weekdays, normalised to the function's average rate ("clear diurnal and weekly pattern
//!   over a ~50% constant baseline").
//! - **Memory**: the paper's Burr XII fit of allocated memory (c = 11.652, k = 0.221,
//!   λ = 107.083 MB), clamped to 16 MB-4 GB.
//! - **Duration**: the paper's log-normal fit of average execution times (log-mean −0.38,
//!   σ = 2.36, in seconds), clamped to 1 ms-10 min.
//! - **Cold-start cost**: not in the trace nor the paper; assumed log-normal with a median
//!   of 300 ms and σ = 1 (AWS: "100 ms to over 1 s"), times √(memory / 170 MB) (bigger
//!   images load longer), clamped to 10 ms-20 s. The same model gives Azure apps their cost.

use super::trace::{Rng, Trace, TraceFn};

/// Timer periods a function may have, minutes.
const PERIODS: [u32; 15] = [1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440];
/// Upper rate of the most popular class, calls per minute (see the module docs).
const TOP_RATE: f64 = 770.0;
/// Amplitude of the diurnal sine.
const DIURNAL: f64 = 1.0 / 3.0;
/// Weekend load relative to weekdays.
const WEEKEND: f64 = 0.8;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    pub functions: u32,
    pub days: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pattern {
    Timer { period: u32, phase: u32 },
    Poisson,
    Bursty,
}

/// The load multiplier at minute `t` (mean 1 over a week), and its maximum.
struct Shape {
    norm: f64,
}

impl Shape {
    fn new() -> Self {
        Shape {
            norm: (5.0 + 2.0 * WEEKEND) / 7.0,
        }
    }

    fn at(&self, t: f64) -> f64 {
        let day = (t / 1440.0).floor().max(0.0) as u64;
        let week = if day % 7 >= 5 { WEEKEND } else { 1.0 };
        let minute = t.rem_euclid(1440.0);
        week * (1.0 + DIURNAL * (std::f64::consts::TAU * (minute - 600.0) / 1440.0).sin()) / self.norm
    }

    fn max(&self) -> f64 {
        (1.0 + DIURNAL) / self.norm
    }
}

/// The cold-start model (see the module docs), shared with the Azure loader.
pub fn cold_start_ms(memory_mb: u32, rng: &mut Rng) -> u32 {
    let base = 300.0 * (1.0 * rng.normal()).exp();
    (base * (f64::from(memory_mb) / 170.0).sqrt()).clamp(10.0, 20_000.0) as u32
}

/// Burr XII by inversion: λ((1−u)^(−1/k) − 1)^(1/c).
fn burr_memory_mb(rng: &mut Rng) -> u32 {
    let (c, k, lambda) = (11.652, 0.221, 107.083);
    let u = rng.f64();
    let x = lambda * ((1.0 - u).powf(-1.0 / k) - 1.0).powf(1.0 / c);
    x.clamp(16.0, 4096.0) as u32
}

fn duration_ms(rng: &mut Rng) -> u32 {
    let secs = (-0.38 + 2.36 * rng.normal()).exp();
    (secs * 1000.0).clamp(1.0, 600_000.0) as u32
}

/// The timer period nearest to `1 / rate` in log scale.
fn period_for(rate: f64) -> u32 {
    let want = (1.0 / rate).ln();
    *PERIODS
        .iter()
        .min_by(|a, b| {
            let da = (f64::from(**a).ln() - want).abs();
            let db = (f64::from(**b).ln() - want).abs();
            da.total_cmp(&db)
        })
        .expect("not empty")
}

impl Synthetic {
    pub fn generate(&self) -> Trace {
        let minutes = self.days * 1440;
        let mut trace = Trace::new(minutes);
        let shape = Shape::new();
        let mut cells: Vec<u32> = Vec::new();
        for f in 0..self.functions {
            let mut rng = Rng::new(&[self.seed, u64::from(f)]);
            let class = rng.f64();
            let rate = if class < 0.45 {
                rng.log_uniform(1.0 / 4320.0, 1.0 / 60.0)
            } else if class < 0.814 {
                rng.log_uniform(1.0 / 60.0, 1.0)
            } else {
                rng.log_uniform(1.0, TOP_RATE)
            };
            let p = rng.f64();
            let pattern = if rate <= 1.0 && p < 0.156 / 0.814 {
                let period = period_for(rate);
                Pattern::Timer {
                    period,
                    phase: rng.below(u64::from(period)) as u32,
                }
            } else if rng.f64() < 0.40 / (1.0 - 0.156) {
                Pattern::Bursty
            } else {
                Pattern::Poisson
            };
            let memory_mb = burr_memory_mb(&mut rng);
            let tf = TraceFn {
                name: format!("f{f}"),
                memory_mb,
                duration_ms: duration_ms(&mut rng),
                cold_start_ms: cold_start_ms(memory_mb, &mut rng),
                kind: match pattern {
                    Pattern::Timer { .. } => "timer",
                    Pattern::Poisson => "poisson",
                    Pattern::Bursty => "bursty",
                }
                .to_owned(),
            };
            let shift = rng.below(241) as f64 - 120.0;
            let load = |t: f64| shape.at(t + shift);
            cells.clear();
            let mut active: Vec<(u32, u32)> = Vec::new();
            match pattern {
                Pattern::Timer { period, phase } => {
                    active.extend((phase..minutes).step_by(period as usize).map(|m| (m, 1)));
                }
                Pattern::Poisson if rate <= 1.0 => {
                    // Event by event, thinned to the load shape.
                    let top = rate * shape.max();
                    let mut t = rng.exp(top);
                    while t < f64::from(minutes) {
                        if rng.f64() * shape.max() < load(t) {
                            cells.push(t as u32);
                        }
                        t += rng.exp(top);
                    }
                }
                Pattern::Poisson => {
                    for m in 0..minutes {
                        let c = rng.poisson(rate * load(f64::from(m)));
                        if c > 0 {
                            active.push((m, c));
                        }
                    }
                }
                Pattern::Bursty if rate <= 1.0 => {
                    let size = rng.log_uniform(2.0, 20.0);
                    let spread = rng.log_uniform(1.0, 30.0);
                    let top = rate / size * shape.max();
                    let mut t = rng.exp(top);
                    while t < f64::from(minutes) {
                        if rng.f64() * shape.max() < load(t) {
                            // 1 + geometric failures with success 1/size: mean `size` calls.
                            let mut n = 1;
                            while rng.f64() >= 1.0 / size {
                                n += 1;
                            }
                            for _ in 0..n {
                                let at = t + rng.f64() * spread;
                                if at < f64::from(minutes) {
                                    cells.push(at as u32);
                                }
                            }
                        }
                        t += rng.exp(top);
                    }
                }
                Pattern::Bursty => {
                    let duty = rng.log_uniform(0.1, 0.7);
                    let on_len = rng.log_uniform(2.0, 60.0);
                    let off_len = on_len * (1.0 - duty) / duty;
                    let mut on = rng.f64() < duty;
                    for m in 0..minutes {
                        if on {
                            let c = rng.poisson(rate * load(f64::from(m)) / duty);
                            if c > 0 {
                                active.push((m, c));
                            }
                        }
                        let leave = if on { 1.0 / on_len } else { 1.0 / off_len };
                        if rng.f64() < leave {
                            on = !on;
                        }
                    }
                }
            }
            if !cells.is_empty() {
                cells.sort_unstable();
                for &m in &cells {
                    match active.last_mut() {
                        Some((last, c)) if *last == m => *c += 1,
                        _ => active.push((m, 1)),
                    }
                }
            }
            trace.push(tf, active);
        }
        trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::trace::Properties;

    #[test]
    fn same_seed_same_trace_and_azure_like_shares() {
        let s = Synthetic {
            functions: 2_000,
            days: 2,
            seed: 7,
        };
        let (a, b) = (s.generate(), s.generate());
        assert_eq!(a.fns, b.fns);
        assert_eq!(a.cells(), b.cells());
        assert!((0..a.fns.len()).all(|f| a.calls_of(f) == b.calls_of(f)));
        let p = Properties::of(&a);
        // Loose bounds: 2,000 functions over 2 days, not the report's trace.
        assert!((0.38..0.52).contains(&p.at_most_hourly), "{p:?}");
        assert!((0.76..0.86).contains(&p.at_most_per_minute), "{p:?}");
        assert!(p.top_share > 0.99, "{p:?}");
        assert!((100..250).contains(&p.memory_p50), "{p:?}");
        let other = Synthetic { seed: 8, ..s }.generate();
        assert_ne!(a.fns, other.fns, "another seed, another trace");
    }

    #[test]
    fn periods_round_to_the_nearest_standard_one() {
        assert_eq!(period_for(1.0), 1);
        assert_eq!(period_for(1.0 / 50.0), 60);
        assert_eq!(period_for(1.0 / 4000.0), 1440);
    }
}
