//! The hazard policy: keep an idle instance exactly while the chance that the next call comes
//! *now* is worth the memory it holds.
//!
//! When a function has been idle for `t`, the chance that its next call arrives in the next
//! minute, given that it has not arrived yet, is the *hazard* of its idle-time distribution at
//! `t`, `h(t)`. Holding the instance through that minute costs its memory for the minute (if
//! no call comes, and less if one does) and avoids a cold start with probability `h(t)`. So
//! the memory spent per cold start avoided, at `t`, is `memory / h(t)` MB·minutes, and a policy
//! that holds an instance at `t` exactly when that is at most a global price (`worth_mb_min`)
//! spends its idle memory where it avoids the most cold starts: every (function, idle time)
//! pair is bought in the order of its yield, which is the fractional-knapsack optimum for a
//! memory spend (and what an offline oracle over the trace's own idle times does, see
//! `cargo xtask simulate`'s report).
//!
//! What that does per pattern:
//! - A Poisson function's hazard is flat: it is kept for its whole idle time if it is called
//!   often enough for its size, and not at all otherwise (fixed keep-alive spends 10 minutes on
//!   every idle period of every function, most of them wasted on the ones called rarely).
//! - A bursty function's hazard falls with the idle time: it is kept while the burst may go on,
//!   then stopped.
//! - A timer's hazard is zero until its period and high around it: the instance is stopped
//!   after the call and prewarmed just before the next (periods beyond the histogram's range
//!   are recognised from the last idle times when they repeat).
//!
//! The hazard per bin (1 minute, over 4 hours by default) is estimated from the function's
//! idle-time histogram as calls ending in the bin over the time idle periods spent in it, shrunk
//! toward the function's average rate (calls over its total idle time) by `prior_bins` bins of
//! pseudo-exposure, so a bin with little history says what the average says. Until
//! `min_samples` idle times are in, the function is kept `warm_up_keep_alive` (the fixed
//! policy's 10 minutes). The plan (the idle-time intervals to hold) is recomputed from the
//! histogram when it has grown by an eighth (every sample while it holds fewer than 64).
//!
//! Under a budget the instance with the lowest hazard per MB in its interval is evicted first,
//! and its function is not prewarmed again until that interval ends; a prewarm only takes room
//! the budget has free (evicting a held instance for it would trade one likely call for
//! another).

use crate::histogram::IdleHistogram;
use crate::ledger::{Ledger, key_of};
use crate::{ConfigError, Decisions, FnId, MINUTE, Millis, Policy, Profile};

/// The hazard policy's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct HazardConfig {
    /// Length of a histogram bin. Default 1 minute.
    pub bin_ms: Millis,
    /// Number of bins. Default 240: a 4-hour range.
    pub bins: u32,
    /// The price of a cold start in idle memory, MB·minutes: an instance is held at an idle
    /// time where `memory / hazard per minute` is at most this. Default 3,500 (a 128 MB
    /// instance is kept while the chance of a call in the next minute is at least 3.7%: a
    /// Poisson function called every 27 minutes or more often). The knob that trades memory
    /// for cold starts.
    pub worth_mb_min: u64,
    /// Pseudo-exposure, in bins, pulling each bin's hazard toward the function's average
    /// rate. Default 4.
    pub prior_bins: f64,
    /// Idle times needed before the histogram is used. Default 3.
    pub min_samples: u32,
    /// What a cold start is worth, by how often its function is called: `(average calls per
    /// minute)^-app_weight`. 0 (the default) counts every cold start the same, which minimises
    /// cold starts per call; 1 counts each function's *share* of cold calls the same, which
    /// minimises the per-function cold-start percentage (the per-application metric of
    /// "Serverless in the Wild") and spends memory on rarely called functions.
    pub app_weight: f64,
    /// Keep-alive while the histogram has fewer than `min_samples` idle times, and for the
    /// extra instances of a function that is still busy. Default 10 minutes.
    pub warm_up_keep_alive: Millis,
}

impl Default for HazardConfig {
    fn default() -> Self {
        HazardConfig {
            bin_ms: MINUTE,
            bins: 240,
            worth_mb_min: 3_500,
            prior_bins: 4.0,
            min_samples: 3,
            app_weight: 0.0,
            warm_up_keep_alive: 10 * MINUTE,
        }
    }
}

impl HazardConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_histogram(self.bins, self.bin_ms)?;
        if !(self.prior_bins.is_finite() && self.prior_bins > 0.0) {
            return Err(ConfigError::Prior(self.prior_bins.to_string()));
        }
        if !(self.app_weight.is_finite() && (0.0..=1.0).contains(&self.app_weight)) {
            return Err(ConfigError::AppWeight(self.app_weight.to_string()));
        }
        Ok(())
    }
}

/// An interval of idle time (ms since the function went idle) to hold an instance through.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hold {
    start: Millis,
    /// `Millis::MAX`: until the next call.
    end: Millis,
    /// Hazard per minute per MB in it: the eviction order under a budget.
    value: f64,
}

/// Where an idle time falls in a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    /// Inside a hold interval, which ends then.
    Hold { end: Millis, value: f64 },
    /// Outside any; the next one starts then, if any does.
    Drop { next: Option<Millis> },
}

#[derive(Debug, Default)]
struct FnState {
    hist: Option<Box<IdleHistogram>>,
    /// Since when no instance of the function is busy, until its next call.
    idle_since: Option<Millis>,
    /// Hold intervals, ascending and disjoint.
    plan: Vec<Hold>,
    /// Samples the plan was made from (`None`: make it again).
    planned: Option<u64>,
    /// After a budget eviction or a prewarm the budget had no room for: no prewarm in this
    /// idle period (it started then) until this idle time (the end of that interval).
    suppressed: Option<(Millis, Millis)>,
    /// Whether the plan was made from the histogram (not warm-up).
    learned: bool,
}

impl FnState {
    fn at(&self, offset: Millis) -> At {
        let i = self.plan.partition_point(|h| h.end <= offset);
        match self.plan.get(i) {
            Some(h) if h.start <= offset => At::Hold {
                end: h.end,
                value: h.value,
            },
            Some(h) => At::Drop { next: Some(h.start) },
            None => At::Drop { next: None },
        }
    }

    /// Whether no prewarm may be made in the hold interval ending at `end` of this idle
    /// period (the budget evicted its instance, or had no room for one).
    fn suppressed(&self, end: Millis) -> bool {
        self.suppressed
            .is_some_and(|(since, until)| Some(since) == self.idle_since && end <= until)
    }
}

/// Hold idle instances where their function's idle-time hazard per MB is above a price (see
/// the module docs).
#[derive(Debug)]
pub struct Hazard {
    ledger: Ledger,
    cfg: HazardConfig,
    fns: Vec<FnState>,
    prewarms: u64,
    stops: u64,
    /// Prewarms not made for want of room in the budget.
    skipped: u64,
}

/// The plan for a function of `memory_mb` from `hist`.
fn plan(cfg: &HazardConfig, hist: Option<&IdleHistogram>, memory_mb: u32) -> (Vec<Hold>, bool) {
    let warm_up = |value| {
        (
            vec![Hold {
                start: 0,
                end: cfg.warm_up_keep_alive,
                value,
            }],
            false,
        )
    };
    let Some(h) = hist.filter(|h| h.samples() >= u64::from(cfg.min_samples)) else {
        return warm_up(0.0);
    };
    let bin = h.bin_ms() as f64;
    let per_min = MINUTE as f64 / bin;
    let mem = f64::from(memory_mb.max(1));
    // Price in MB·bins.
    let limit = cfg.worth_mb_min as f64 * per_min;
    let n_all = h.samples() as f64;
    // Average hazard per bin: samples over total idle time in bins.
    let h0 = n_all / (h.total_ms() as f64 / bin).max(1.0);
    let prior = cfg.prior_bins;
    let limit = limit * (h0 * per_min).powf(-cfg.app_weight);
    let mut holds: Vec<Hold> = Vec::new();
    let mut push = |start: Millis, end: Millis, hazard_per_bin: f64| {
        let value = hazard_per_bin * per_min / mem;
        match holds.last_mut() {
            Some(last) if last.end == start => {
                last.end = end;
                last.value = last.value.min(value);
            }
            _ => holds.push(Hold { start, end, value }),
        }
    };
    let mut survivors = n_all;
    for j in 0..h.bins() {
        let n = h.count(j) as f64;
        let exposure = survivors - n / 2.0;
        let hazard = (n + prior * h0) / (exposure + prior);
        if mem <= limit * hazard {
            push(j as Millis * h.bin_ms(), (j as Millis + 1) * h.bin_ms(), hazard);
        }
        survivors -= n;
    }
    let range = h.range_ms();
    // Beyond the range: a repeating long idle time (a timer of hours or days) is prewarmed
    // around its repetitions; otherwise the tail's average hazard decides.
    let recent = h.recent();
    let regular = recent.len() >= 3 && recent.iter().all(|&r| r >= range) && {
        let (lo, hi) = (recent.iter().min().unwrap(), recent.iter().max().unwrap());
        hi - lo <= 2 * h.bin_ms() + hi / 50
    };
    if regular {
        let (lo, hi) = (*recent.iter().min().unwrap(), *recent.iter().max().unwrap());
        let margin = h.bin_ms() + hi / 100;
        let (start, end) = (lo.saturating_sub(margin).max(range), hi + margin);
        // A call expected about half-way through the window.
        let wait_bins = (end - start) as f64 / bin / 2.0;
        if mem * wait_bins <= limit {
            push(start, end, 1.0 / wait_bins);
        }
    } else {
        let excess_bins = h.oob_excess_ms() as f64 / bin;
        let n = h.oob() as f64;
        let hazard = (n + prior * h0) / (excess_bins + prior);
        if mem <= limit * hazard {
            push(range, Millis::MAX, hazard);
        }
    }
    (holds, true)
}

impl Hazard {
    /// A policy with `cfg` (checked by [`crate::build`]), within `budget_mb` of idle memory.
    pub fn new(cfg: HazardConfig, budget_mb: Option<u64>) -> Self {
        Hazard {
            ledger: Ledger::new(budget_mb),
            cfg,
            fns: Vec::new(),
            prewarms: 0,
            stops: 0,
            skipped: 0,
        }
    }

    fn state(&mut self, f: FnId) -> &mut FnState {
        let i = f as usize;
        if i >= self.fns.len() {
            self.fns.resize_with(i + 1, FnState::default);
        }
        &mut self.fns[i]
    }

    /// Make `f`'s plan again if its histogram grew enough since the last one.
    fn replan(&mut self, f: FnId) {
        let memory_mb = self.ledger.book(f).profile.memory_mb;
        let cfg = &self.cfg;
        let st = &mut self.fns[f as usize];
        let samples = st.hist.as_ref().map_or(0, |h| h.samples());
        let stale = match st.planned {
            None => true,
            Some(p) => samples != p && (samples < 64 || samples >= p + p / 8),
        };
        if stale {
            (st.plan, st.learned) = plan(cfg, st.hist.as_deref(), memory_mb);
            st.planned = Some(samples);
        }
    }

    /// The next time something about `f` may be due.
    fn next_time(&self, f: FnId, now: Millis) -> Option<Millis> {
        let b = self.ledger.book(f);
        let st = &self.fns[f as usize];
        let Some(since) = st.idle_since.filter(|_| b.busy == 0) else {
            // Busy: its extra idle instances get the warm-up keep-alive.
            return b
                .oldest_stoppable()
                .map(|s| s.since.saturating_add(self.cfg.warm_up_keep_alive));
        };
        let offset = now.saturating_sub(since);
        match st.at(offset) {
            At::Hold { end, .. } => {
                if b.instances() == 0 {
                    if st.suppressed(end) {
                        // No prewarm in this interval: the next one, if any.
                        match st.at(end) {
                            At::Drop { next } => next.map(|n| since.saturating_add(n)),
                            At::Hold { .. } => Some(since.saturating_add(end)),
                        }
                    } else {
                        Some(now)
                    }
                } else if b.oldest_stoppable().is_some() && end != Millis::MAX {
                    Some(since.saturating_add(end))
                } else {
                    None
                }
            }
            At::Drop { next } => {
                if b.oldest_stoppable().is_some() {
                    Some(now)
                } else if b.instances() == 0 {
                    next.map(|n| since.saturating_add(n))
                } else {
                    None
                }
            }
        }
    }

    fn retime(&mut self, f: FnId, now: Millis) {
        let at = self.next_time(f, now);
        self.ledger.set_timer(f, at);
    }

    fn due(&mut self, f: FnId, now: Millis, d: &mut Decisions) {
        let busy = self.ledger.book(f).busy;
        let st = &self.fns[f as usize];
        match st.idle_since.filter(|_| busy == 0) {
            None => {
                let keep = self.cfg.warm_up_keep_alive;
                while let Some(s) = self.ledger.book(f).oldest_stoppable()
                    && s.since.saturating_add(keep) <= now
                {
                    d.stop.push(self.ledger.stop_oldest(f));
                }
            }
            Some(since) => match st.at(now.saturating_sub(since)) {
                At::Drop { .. } => {
                    while self.ledger.book(f).oldest_stoppable().is_some() {
                        d.stop.push(self.ledger.stop_oldest(f));
                    }
                }
                At::Hold { value, end } => {
                    let b = self.ledger.book(f);
                    if b.instances() == 0 && !st.suppressed(end) {
                        if self.ledger.fits(b.profile.memory_mb) {
                            self.ledger.prewarmed(f, now, key_of(value));
                            d.prewarm.push(f);
                        } else {
                            // A prewarm only takes free room: evicting a held instance for
                            // it would trade a likely call for another.
                            self.fns[f as usize].suppressed = Some((since, end));
                            self.skipped += 1;
                        }
                    }
                }
            },
        }
        self.retime(f, now);
    }
}

impl Policy for Hazard {
    fn set_profile(&mut self, f: FnId, profile: Profile) {
        self.state(f).planned = None;
        self.ledger.set_profile(f, profile);
        self.replan(f);
        let now = self.fns[f as usize].idle_since.unwrap_or(0);
        self.retime(f, now);
    }

    fn on_call(&mut self, f: FnId, now: Millis, warm: bool) {
        let (bins, bin_ms) = (self.cfg.bins, self.cfg.bin_ms);
        let fully_idle = self.ledger.book(f).busy == 0;
        let st = self.state(f);
        if fully_idle {
            IdleHistogram::end_idle(&mut st.hist, &mut st.idle_since, now, bins, bin_ms);
        }
        self.ledger.call(f, warm);
        self.retime(f, now);
    }

    fn on_joined(&mut self, _f: FnId, _now: Millis, _calls: u64) {}

    fn on_idle(&mut self, f: FnId, now: Millis) {
        self.state(f);
        let all_idle = self.ledger.book(f).busy <= 1;
        let value = if all_idle {
            self.replan(f);
            let st = &mut self.fns[f as usize];
            st.idle_since = Some(now);
            match st.at(0) {
                At::Hold { value, .. } => value,
                At::Drop { .. } => 0.0,
            }
        } else {
            0.0
        };
        self.ledger.went_idle(f, now, key_of(value));
        self.retime(f, now);
    }

    fn on_lost(&mut self, f: FnId, now: Millis, idle: bool) {
        self.state(f);
        self.ledger.lost(f, idle);
        self.retime(f, now);
    }

    fn decide(&mut self, now: Millis) -> Decisions {
        let mut d = Decisions::default();
        while let Some(f) = self.ledger.pop_due(now) {
            self.due(f, now, &mut d);
        }
        for s in self.ledger.evict_into(&mut d, now) {
            let st = &mut self.fns[s.f as usize];
            if let Some(since) = st.idle_since
                && let At::Hold { end, .. } = st.at(now.saturating_sub(since))
            {
                st.suppressed = Some((since, end));
            }
            self.retime(s.f, now);
        }
        self.stops += d.stop.len() as u64;
        self.prewarms += d.prewarm.len() as u64;
        d
    }

    fn next_deadline(&self, now: Millis) -> Option<Millis> {
        self.ledger.next_deadline(now)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let learned = self.fns.iter().filter(|s| s.learned).count() as u64;
        vec![
            ("stops", self.stops),
            ("prewarms", self.prewarms),
            ("prewarms skipped for the budget", self.skipped),
            ("functions planned from their histogram", learned),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Call, Sim};
    use crate::{Config, Idle, PolicyKind};

    const SECOND: Millis = 1_000;

    fn at(gaps: &[Millis], f: FnId) -> Vec<Call> {
        let mut t = 0;
        let mut calls = vec![Call::new(f, 0, SECOND)];
        for g in gaps {
            t += g;
            calls.push(Call::new(f, t, SECOND));
        }
        calls
    }

    fn merged(mut a: Vec<Call>, b: Vec<Call>) -> Vec<Call> {
        a.extend(b);
        a.sort_by_key(|c| (c.at, c.f));
        a
    }

    #[test]
    fn a_timer_is_stopped_after_each_call_and_prewarmed_in_the_minute_before_the_next() {
        let mut sim = Sim::new(PolicyKind::Hazard, &Config::default(), &[(256, 500, 0)]);
        let out = sim.run(&at(&[20 * MINUTE; 9], 0));
        // Three idle times of 19 min 59 s are needed: until then the 10-minute warm-up
        // keep-alive misses every call.
        assert_eq!(out.cold_calls, vec![0, 1, 2, 3]);
        // From then on: the hazard is all in bin 19, (3 + 4 × 0.05) / (1.5 + 4) per minute,
        // 256 MB / 0.58 = 441 MB·min, under the price; every other bin is over it.
        let idle = |k: Millis| k * 20 * MINUTE + SECOND;
        assert!(
            out.stops.contains(&(0, idle(3))),
            "stopped as it went idle: {:?}",
            out.stops
        );
        assert_eq!(out.prewarms[0], (0, idle(3) + 19 * MINUTE));
        assert_eq!(out.prewarms.len(), 7, "before calls 4 to 9, and after the last");
        assert_eq!(
            *out.stops.last().unwrap(),
            (0, idle(9) + 20 * MINUTE),
            "the last prewarmed instance goes when its minute is over"
        );
    }

    #[test]
    fn the_price_is_per_mb_a_small_function_is_kept_a_big_one_only_prewarmed() {
        // Idle times cycling through 0:59, 1:59, ..., 8:59: the hazard rises with the idle
        // time, to about 2 a minute in the last bin (every idle time still running ends there).
        let gaps: Vec<Millis> = (0..200).map(|i| (i % 9 + 1) * MINUTE).collect();
        let calls = merged(at(&gaps, 0), at(&gaps, 1));
        let mut sim = Sim::new(PolicyKind::Hazard, &Config::default(), &[(64, 500, 0), (4096, 500, 0)]);
        let out = sim.run(&calls);
        let cold_of = |f: FnId| -> Vec<usize> {
            let mut k = 0;
            let mut v = Vec::new();
            for (i, c) in calls.iter().enumerate() {
                if c.f == f {
                    if out.cold_calls.contains(&i) {
                        v.push(k);
                    }
                    k += 1;
                }
            }
            v
        };
        // 64 MB: at least 1/17 a minute everywhere, 64 / (1/17) ≈ 1,100 MB·min, under the
        // price: kept through every idle time, cold only on its first call, never stopped.
        assert_eq!(cold_of(0), vec![0]);
        assert!(out.stops.iter().all(|s| s.0 == 1) && out.prewarms.iter().all(|p| p.0 == 1));
        // 4 GB: only the last bin is worth it (4096 / 2 ≈ 2,000 MB·min; the bin before has
        // about 2/3 a minute: 6,100 MB·min). Once the estimate has settled (after 100 idle
        // times, well past where the prior stops hiding the last bin), the instance is
        // stopped as each call ends and prewarmed at 8 minutes of idle time: the 8:59 idle
        // times are warm, the others cold.
        let late: Vec<usize> = cold_of(1).into_iter().filter(|&k| k > 100).collect();
        let want: Vec<usize> = (101..=gaps.len()).filter(|&k| gaps[k - 1] != 9 * MINUTE).collect();
        assert_eq!(late, want);
        let t_of = |k: usize| calls.iter().filter(|c| c.f == 1).nth(k).unwrap().at;
        for (k, &gap) in gaps.iter().enumerate().skip(101) {
            let idle = t_of(k) + SECOND;
            assert!(out.stops.contains(&(1, idle)), "stopped as call {k} ended");
            if gap == 9 * MINUTE {
                assert!(
                    out.prewarms.contains(&(1, idle + 8 * MINUTE)),
                    "prewarmed after call {k}"
                );
            }
        }
    }

    #[test]
    fn a_daily_timer_beyond_the_histogram_is_prewarmed_around_its_repetition() {
        let day = 24 * 60 * MINUTE;
        let mut sim = Sim::new(PolicyKind::Hazard, &Config::default(), &[(128, 500, 0)]);
        let out = sim.run(&at(&[day; 6], 0));
        assert_eq!(out.cold_calls, vec![0, 1, 2, 3], "three repetitions to recognise it");
        // Window: the idle time (1 day − 1 s) ± (1 minute + 1%), about 15.4 minutes each side:
        // 128 MB × 15.4 min ≈ 1,970 MB·min per cold start avoided, under the price.
        let idle = day - SECOND;
        let margin = MINUTE + idle / 100;
        assert_eq!(out.prewarms[0], (0, 3 * day + SECOND + idle - margin));
        assert_eq!(out.prewarms.len(), 4, "before calls 4 to 6, and after the last");
        // At 256 MB the same window costs 3,940 MB·min: over the price, never prewarmed.
        let mut sim = Sim::new(PolicyKind::Hazard, &Config::default(), &[(256, 500, 0)]);
        let out = sim.run(&at(&[day; 6], 0));
        assert_eq!(out.cold, 7);
        assert!(out.prewarms.is_empty());
    }

    #[test]
    fn over_budget_the_lowest_hazard_per_mb_goes_and_is_not_prewarmed_again_at_once() {
        // Two functions taking turns: each busy 30 s, then idle 30 s while the other is busy.
        // Same idle times, so the same hazard; 100 MB and 300 MB, a budget of 350 MB.
        let mut p = Hazard::new(HazardConfig::default(), Some(350));
        for (f, memory_mb) in [(0, 100), (1, 300)] {
            p.set_profile(
                f,
                Profile {
                    memory_mb,
                    cold_start_ms: 500,
                    min_instances: 0,
                },
            );
        }
        p.on_call(0, 0, false);
        p.on_call(1, 0, false);
        let half = 30 * SECOND;
        let mut t = half;
        for i in 0..10 {
            let (idle, call) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            if i > 0 {
                p.on_call(call, t, true);
            }
            p.on_idle(idle, t);
            assert!(p.decide(t).is_empty(), "one idle at a time fits the budget");
            t += half;
        }
        // Function 0 is busy, function 1 idle. Now function 0 goes idle too: 400 MB, over
        // 350. Function 1 has a third of function 0's hazard per MB and goes.
        p.on_idle(0, t);
        let d = p.decide(t);
        assert_eq!(
            d.stop,
            vec![Idle {
                f: 1,
                since: t - half,
                memory_mb: 300
            }]
        );
        assert!(d.prewarm.is_empty());
        // Its plan holds it until the next call, but the eviction stands: no prewarm follows,
        // and function 0 stays.
        let mut now = t;
        while let Some(next) = p.next_deadline(now) {
            assert!(next > now && next < t + 60 * MINUTE, "only stale timers are left");
            assert!(p.decide(next).is_empty(), "nothing to do at {next}");
            now = next;
        }
        assert!(p.decide(t + 60 * MINUTE).is_empty());
    }

    #[test]
    fn min_instances_are_kept_and_bad_settings_are_named() {
        let mut sim = Sim::new(PolicyKind::Hazard, &Config::default(), &[(4096, 500, 1)]);
        let out = sim.run(&at(&[3 * 60 * MINUTE; 6], 0));
        assert!(out.stops.is_empty(), "the only instance of a min-1 function stays");
        assert_eq!(out.cold, 1);
        let mut c = Config::default();
        c.hazard.prior_bins = 0.0;
        assert_eq!(
            crate::build(PolicyKind::Hazard, &c).err().map(|e| e.to_string()),
            Some("hazard prior 0 is not a number > 0".to_owned())
        );
        c.hazard.prior_bins = 4.0;
        c.hazard.app_weight = 1.5;
        assert_eq!(
            crate::build(PolicyKind::Hazard, &c).err().map(|e| e.to_string()),
            Some("hazard app weight 1.5 is not a number from 0 to 1".to_owned())
        );
    }
}
