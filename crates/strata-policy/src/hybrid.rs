//! The hybrid histogram policy of Shahrad et al., "Serverless in the Wild: Characterizing and
//! Optimizing the Serverless Workload at a Large Cloud Provider" (USENIX ATC'20), §4.2.
//!
//! Per function, a histogram of idle times (from the end of a busy period to the next call),
//! 1-minute bins over 4 hours. When the function goes idle, the policy picks one of four
//! modes from it:
//!
//! | mode | when | prewarm window | keep-alive window |
//! | --- | --- | --- | --- |
//! | warm-up | fewer than `min_samples` idle times | 0 | `fallback_keep_alive` |
//! | out of bounds | ≥ `oob_percent`% of idle times beyond the range | 85% of the predicted idle time | 30% of it (±15% around the prediction) |
//! | uncertain | bin-count CV < `cv_threshold` | 0 | `fallback_keep_alive` |
//! | certain | otherwise | 5th-percentile bin × 0.9 | (99th-percentile bin + 1) × 1.1 − prewarm |
//!
//! With a prewarm window `p` > 0 the instance is stopped as soon as the function is idle, one
//! is started again at idle start + `p` (if the function has none by then) and kept until
//! idle start + `p` + keep-alive. With `p` = 0 the instance simply stays idle for the
//! keep-alive window.
//!
//! Where this deviates from the paper (and its two public re-implementations, dslab-faas and
//! faascache-sim):
//! - The unit is the function (a Strata function is what gets loaded); the paper's is the
//!   application.
//! - Out of bounds, the paper forecasts the next idle time with ARIMA; we use the mean of the
//!   last 5 idle times (in range or not) as the forecast, with the paper's ±15% window. Most
//!   out-of-bounds functions are daily or rarer timers, where both forecasts agree.
//! - The paper's standard keep-alive (when the histogram is not representative) is the
//!   histogram range, 4 hours (dslab: 4 h; faascache-sim: 2 h); `fallback_keep_alive`
//!   defaults to that range and may be set to the fixed policy's 10 minutes.
//! - "Enough history" is `min_samples` idle times (default 10). Neither re-implementation
//!   waits: dslab trusts the histogram from its first sample, faascache-sim from its second,
//!   which calls a function "certain" after two idle times (a near-empty histogram has a huge
//!   CV).
//! - The percentiles are bin edges as in dslab: the prewarm starts at the lower edge of the
//!   5th-percentile bin, the keep-alive ends at the upper edge of the 99th-percentile bin.
//! - Idle times are recorded only when no instance of the function is busy: calls that join a
//!   busy instance have no idle time.

use crate::histogram::IdleHistogram;
use crate::ledger::Ledger;
use crate::{ConfigError, Decisions, FnId, MINUTE, Millis, Policy, Profile};

/// The hybrid histogram policy's parameters; the defaults are the paper's unless said.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridConfig {
    /// Length of a histogram bin. Default 1 minute (the paper's).
    pub bin_ms: Millis,
    /// Number of bins. Default 240: a 4-hour range (the paper's).
    pub bins: u32,
    /// Percentile of idle times where the prewarm window ends. Default 5 (the paper's).
    pub head_percent: u32,
    /// Percentile of idle times where the keep-alive window ends. Default 99 (the paper's).
    pub tail_percent: u32,
    /// Safety margin: the prewarm window shrinks by it, the keep-alive end grows by it.
    /// Default 10% (the paper's).
    pub margin_percent: u32,
    /// The histogram is representative when the coefficient of variation of its bin counts
    /// is at least this. Default 2 (dslab-faas and faascache-sim).
    pub cv_threshold: f64,
    /// Idle times needed before the histogram is trusted. Default 10: not in the paper, our
    /// choice (a histogram of 2 samples has a CV near 11 and would look representative).
    pub min_samples: u32,
    /// Share of idle times beyond the range (percent) from which the out-of-bounds forecast is
    /// used. Default 50 (dslab-faas).
    pub oob_percent: u32,
    /// Half-width of the window around the forecast idle time when out of bounds. Default 15%
    /// (the paper's ARIMA margin).
    pub oob_margin_percent: u32,
    /// Keep-alive while the histogram is not (yet) representative. Default the histogram range,
    /// 4 hours: the paper's "standard keep-alive".
    pub fallback_keep_alive: Millis,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            bin_ms: MINUTE,
            bins: 240,
            head_percent: 5,
            tail_percent: 99,
            margin_percent: 10,
            cv_threshold: 2.0,
            min_samples: 10,
            oob_percent: 50,
            oob_margin_percent: 15,
            fallback_keep_alive: 240 * MINUTE,
        }
    }
}

impl HybridConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_histogram(self.bins, self.bin_ms)?;
        if !(1..=100).contains(&self.head_percent)
            || !(1..=100).contains(&self.tail_percent)
            || self.head_percent > self.tail_percent
        {
            return Err(ConfigError::Percentiles {
                head: self.head_percent,
                tail: self.tail_percent,
            });
        }
        for (name, percent) in [
            ("histogram", self.margin_percent),
            ("out-of-bounds", self.oob_margin_percent),
        ] {
            if percent >= 100 {
                return Err(ConfigError::Margin { name, percent });
            }
        }
        if !(self.cv_threshold.is_finite() && self.cv_threshold >= 0.0) {
            return Err(ConfigError::CvThreshold(self.cv_threshold.to_string()));
        }
        Ok(())
    }
}

/// How the last plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WarmUp,
    OutOfBounds,
    Uncertain,
    Certain,
}

/// The windows decided when the function last went idle.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// When the function went idle.
    start: Millis,
    prewarm: Millis,
    keep_alive: Millis,
    mode: Option<Mode>,
}

#[derive(Debug)]
struct FnState {
    hist: Option<Box<IdleHistogram>>,
    /// When the function last had no busy instance left, until its next call.
    idle_since: Option<Millis>,
    plan: Plan,
    /// A prewarm is planned and not yet done.
    pending: bool,
}

/// Per-function idle-time histograms deciding when to unload and when to prewarm (see the
/// module docs for the rules and the deviations from the paper). With a budget, evicts the
/// longest-idle instance first.
#[derive(Debug)]
pub struct HybridHistogram {
    ledger: Ledger,
    cfg: HybridConfig,
    fns: Vec<FnState>,
    prewarms: u64,
    stops: u64,
}

impl HybridHistogram {
    /// A policy with `cfg` (checked by [`crate::build`]), within `budget_mb` of idle memory.
    pub fn new(cfg: HybridConfig, budget_mb: Option<u64>) -> Self {
        HybridHistogram {
            ledger: Ledger::new(budget_mb),
            cfg,
            fns: Vec::new(),
            prewarms: 0,
            stops: 0,
        }
    }

    fn state(&mut self, f: FnId) -> &mut FnState {
        let i = f as usize;
        if i >= self.fns.len() {
            let standard = Plan {
                start: 0,
                prewarm: 0,
                keep_alive: self.cfg.fallback_keep_alive,
                mode: None,
            };
            self.fns.resize_with(i + 1, || FnState {
                hist: None,
                idle_since: None,
                plan: standard,
                pending: false,
            });
        }
        &mut self.fns[i]
    }

    /// The windows the histogram gives now.
    fn plan(&self, hist: Option<&IdleHistogram>, start: Millis) -> Plan {
        let c = &self.cfg;
        let plan = |mode, prewarm, keep_alive| Plan {
            start,
            prewarm,
            keep_alive,
            mode: Some(mode),
        };
        let Some(h) = hist.filter(|h| h.samples() >= u64::from(c.min_samples)) else {
            return plan(Mode::WarmUp, 0, c.fallback_keep_alive);
        };
        if h.oob_percent() >= u64::from(c.oob_percent) {
            let forecast = h.recent_mean().expect("samples were recorded");
            let m = u64::from(c.oob_margin_percent);
            let prewarm = forecast * (100 - m) / 100;
            let end = forecast * (100 + m) / 100;
            return plan(Mode::OutOfBounds, prewarm, end - prewarm);
        }
        if h.cv() < c.cv_threshold {
            return plan(Mode::Uncertain, 0, c.fallback_keep_alive);
        }
        let head = u64::from(h.percentile_bin(c.head_percent).expect("samples in range"));
        let tail = u64::from(h.percentile_bin(c.tail_percent).expect("samples in range"));
        let m = u64::from(c.margin_percent);
        let prewarm = head * c.bin_ms * (100 - m) / 100;
        let end = (tail + 1) * c.bin_ms * (100 + m) / 100;
        plan(Mode::Certain, prewarm, end - prewarm)
    }

    /// When an idle instance of `f`, idle since `since`, is due to stop.
    fn deadline(&self, f: FnId, since: Millis) -> Millis {
        let p = self.fns[f as usize].plan;
        if self.ledger.book(f).busy == 0 && p.prewarm > 0 {
            if since < p.start + p.prewarm {
                p.start // left over from the calls: unload at once
            } else {
                p.start + p.prewarm + p.keep_alive // the prewarmed instance
            }
        } else {
            since.saturating_add(p.prewarm + p.keep_alive)
        }
    }

    fn retime(&mut self, f: FnId) {
        self.state(f);
        let st = &self.fns[f as usize];
        let b = self.ledger.book(f);
        let stop = b.oldest_stoppable().map(|s| self.deadline(f, s.since));
        let warm = (st.pending && b.instances() == 0).then(|| st.plan.start + st.plan.prewarm);
        let at = match (stop, warm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ledger.set_timer(f, at);
    }

    fn due(&mut self, f: FnId, now: Millis, d: &mut Decisions) {
        while let Some(s) = self.ledger.book(f).oldest_stoppable()
            && self.deadline(f, s.since) <= now
        {
            d.stop.push(self.ledger.stop_oldest(f));
        }
        let none_left = self.ledger.book(f).instances() == 0;
        let st = &mut self.fns[f as usize];
        let p = st.plan;
        if st.pending && none_left && now >= p.start + p.prewarm {
            st.pending = false;
            if now < p.start + p.prewarm + p.keep_alive {
                self.ledger.prewarmed(f, now, now);
                d.prewarm.push(f);
            }
        }
        self.retime(f);
    }
}

impl Policy for HybridHistogram {
    fn set_profile(&mut self, f: FnId, profile: Profile) {
        self.state(f);
        self.ledger.set_profile(f, profile);
        self.retime(f);
    }

    fn on_call(&mut self, f: FnId, now: Millis, warm: bool) {
        let (bins, bin_ms) = (self.cfg.bins, self.cfg.bin_ms);
        let fully_idle = self.ledger.book(f).busy == 0;
        let st = self.state(f);
        if fully_idle {
            IdleHistogram::end_idle(&mut st.hist, &mut st.idle_since, now, bins, bin_ms);
        }
        st.pending = false;
        self.ledger.call(f, warm);
        self.retime(f);
    }

    fn on_joined(&mut self, _f: FnId, _now: Millis, _calls: u64) {}

    fn on_idle(&mut self, f: FnId, now: Millis) {
        self.state(f);
        self.ledger.went_idle(f, now, now);
        if self.ledger.book(f).busy == 0 {
            let plan = self.plan(self.fns[f as usize].hist.as_deref(), now);
            let st = &mut self.fns[f as usize];
            st.idle_since = Some(now);
            st.plan = plan;
            st.pending = plan.prewarm > 0;
        }
        self.retime(f);
    }

    fn on_lost(&mut self, f: FnId, _now: Millis, idle: bool) {
        self.state(f);
        self.ledger.lost(f, idle);
        self.retime(f);
    }

    fn decide(&mut self, now: Millis) -> Decisions {
        let mut d = Decisions::default();
        while let Some(f) = self.ledger.pop_due(now) {
            self.due(f, now, &mut d);
        }
        for s in self.ledger.evict_into(&mut d, now) {
            self.retime(s.f);
        }
        self.stops += d.stop.len() as u64;
        self.prewarms += d.prewarm.len() as u64;
        d
    }

    fn next_deadline(&self, now: Millis) -> Option<Millis> {
        self.ledger.next_deadline(now)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let mode = |m| self.fns.iter().filter(|s| s.plan.mode == Some(m)).count() as u64;
        vec![
            ("stops", self.stops),
            ("prewarms", self.prewarms),
            ("functions in warm-up", mode(Mode::WarmUp)),
            ("functions out of bounds", mode(Mode::OutOfBounds)),
            ("functions uncertain", mode(Mode::Uncertain)),
            ("functions certain", mode(Mode::Certain)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Call, Sim};
    use crate::{Config, Idle, PolicyKind};

    const SECOND: Millis = 1_000;

    fn every(gap: Millis, n: u64) -> Vec<Call> {
        (0..n).map(|i| Call::new(0, i * gap, SECOND)).collect()
    }

    fn config(fallback: Millis) -> Config {
        let mut c = Config::default();
        c.hybrid.fallback_keep_alive = fallback;
        c
    }

    #[test]
    fn a_5_minute_function_gets_a_prewarm_window_after_its_history_fills() {
        let mut sim = Sim::new(PolicyKind::Hybrid, &config(240 * MINUTE), &[(256, 500, 0)]);
        let out = sim.run(&every(5 * MINUTE, 14));
        assert_eq!(
            out.cold, 1,
            "the standard keep-alive covers the warm-up, prewarms the rest"
        );
        // Idle times are 4 min 59 s: bin 4. Prewarm at 4 × 0.9 = 3.6 min, keep until
        // 5 × 1.1 = 5.5 min after the idle start. The 10th idle time is recorded by call 10;
        // from its end on (10 × 5 min + 1 s) the instance is unloaded and prewarmed.
        let first_unload = 50 * MINUTE + SECOND;
        assert_eq!(out.stops[0], (0, first_unload));
        assert_eq!(out.prewarms[0], (0, first_unload + 216 * SECOND));
        assert_eq!(out.prewarms.len(), 4, "after calls 10, 11, 12 and the last, 13");
        let last_idle = 65 * MINUTE + SECOND;
        assert_eq!(
            *out.stops.last().unwrap(),
            (0, last_idle + 330 * SECOND),
            "the last prewarm expires 5.5 min after the last idle start"
        );
        assert_eq!(out.stops.len(), 5);
    }

    #[test]
    fn a_20_minute_function_is_cold_only_while_its_history_fills() {
        // With the fixed policy's 10 minutes as the fallback, the 20-minute gaps miss until
        // 10 idle times are in; then the prewarm at 19 × 0.9 = 17.1 min catches every call.
        let mut sim = Sim::new(PolicyKind::Hybrid, &config(10 * MINUTE), &[(256, 500, 0)]);
        let out = sim.run(&every(20 * MINUTE, 20));
        assert_eq!(out.cold_calls, (0..=10).collect::<Vec<_>>());
        assert_eq!(out.prewarms.len(), 10);
        // The paper's 4-hour standard keep-alive never misses at all.
        let mut sim = Sim::new(PolicyKind::Hybrid, &config(240 * MINUTE), &[(256, 500, 0)]);
        assert_eq!(sim.run(&every(20 * MINUTE, 20)).cold, 1);
    }

    #[test]
    fn evenly_spread_idle_times_fall_back_to_the_standard_keep_alive() {
        // A 10-minute histogram, idle times cycling through its 10 bins: CV 0, not
        // representative, so no unload and no prewarm, only the 4-hour standard keep-alive.
        let mut c = config(240 * MINUTE);
        c.hybrid.bins = 10;
        let (mut t, mut calls) = (0, Vec::new());
        for i in 0..31u64 {
            calls.push(Call::new(0, t, SECOND));
            t += SECOND + (i % 10) * MINUTE + 30 * SECOND;
        }
        let last_idle = calls.last().unwrap().at + SECOND;
        let mut sim = Sim::new(PolicyKind::Hybrid, &c, &[(256, 500, 0)]);
        let out = sim.run(&calls);
        assert!(sim.policy.stats().contains(&("functions uncertain", 1)));
        assert_eq!(out.cold, 1);
        assert!(out.prewarms.is_empty());
        assert_eq!(out.stops, vec![(0, last_idle + 240 * MINUTE)]);
    }

    #[test]
    fn rare_calls_use_the_out_of_bounds_forecast() {
        // A daily timer: every idle time is out of the 4-hour range.
        let day = 24 * 60 * MINUTE;
        let mut sim = Sim::new(PolicyKind::Hybrid, &config(240 * MINUTE), &[(256, 500, 0)]);
        let out = sim.run(&every(day, 14));
        assert_eq!(out.cold_calls, (0..=10).collect::<Vec<_>>());
        assert!(sim.policy.stats().contains(&("functions out of bounds", 1)));
        // Forecast 1 day − 1 s; prewarm at 85% of it.
        let idle = day - SECOND;
        assert_eq!(out.prewarms[0], (0, 10 * day + SECOND + idle * 85 / 100));
    }

    #[test]
    fn min_instances_are_kept_through_an_unload() {
        let mut p = HybridHistogram::new(HybridConfig::default(), None);
        p.set_profile(
            0,
            Profile {
                memory_mb: 64,
                cold_start_ms: 10,
                min_instances: 1,
            },
        );
        let mut now = 0;
        for _ in 0..12 {
            p.on_call(0, now, now > 0);
            p.on_idle(0, now + SECOND);
            assert!(p.decide(now + SECOND).stop.is_empty(), "the min instance stays");
            now += 5 * MINUTE;
        }
        assert!(p.stats().contains(&("functions certain", 1)));
        assert_eq!(
            p.next_deadline(now),
            None,
            "nothing to stop, and no prewarm since it has its instance"
        );
        // A second instance is unloaded right away, the first is kept.
        p.on_call(0, now, true);
        p.on_call(0, now, false);
        p.on_idle(0, now + SECOND);
        p.on_idle(0, now + 2 * SECOND);
        let d = p.decide(now + 2 * SECOND);
        assert_eq!(
            d.stop,
            vec![Idle {
                f: 0,
                since: now + SECOND,
                memory_mb: 64
            }]
        );
        assert!(p.decide(now + 10 * 60 * MINUTE).is_empty());
    }
}
