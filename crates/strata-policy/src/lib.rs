//! Keep-alive and prewarm policies: which idle instances to stop, which functions to start an
//! instance for before their next call.
//!
//! A policy is a pure state machine. Its driver (the daemon's pool loop, or the trace simulator
//! `cargo xtask simulate`) reports calls and instances going idle with the time, asks for
//! decisions and carries them out. This crate does no I/O, reads no clock and starts no thread:
//! time is a number of milliseconds the driver hands in ([`Millis`]), so a simulator that
//! fast-forwards a week of trace and the daemon running in real time drive the same code.
//!
//! Four policies, each its own type, all built by [`build`] from a [`PolicyKind`] and a
//! [`Config`]:
//!
//! - [`FixedKeepAlive`]: stop an instance idle for `keep_alive` (10 minutes by default).
//! - [`HybridHistogram`]: the per-function idle-time histogram of Shahrad et al., "Serverless in
//!   the Wild" (ATC'20): unload right after a call and prewarm just before the predicted next
//!   one when idle times are predictable, a long standard keep-alive when they are not.
//! - [`Hazard`]: hold an idle instance exactly at the idle times where its function's
//!   idle-time hazard (the chance the next call comes now, given it has not yet) is worth its
//!   memory at a global price; prewarm where that starts later than the call.
//! - [`GreedyDual`]: FaasCache's greedy-dual-size-frequency keep-alive (Fuerst & Sharma,
//!   ASPLOS'21): keep every idle instance while they fit the idle-memory budget, evict the
//!   lowest `clock + frequency × cold-start cost / memory` first.
//!
//! Any of them takes an optional global **idle-memory budget** ([`Config::budget_mb`]): when
//! the memory of idle instances exceeds it, instances are evicted (the longest idle first for
//! the fixed and hybrid policies, the lowest priority first for greedy-dual) so policies can be
//! compared at equal memory. [`Profile::min_instances`] always wins: no decision ever stops an
//! instance that would leave a function with fewer instances than that.
//!
//! # Driving a policy
//!
//! 1. [`Policy::set_profile`] for every function before its first event (and again when its
//!    manifest changes).
//! 2. Report every event, in time order: [`Policy::on_call`] when a call needs an instance
//!    (an idle one took it, or a new one was started for it), [`Policy::on_joined`] for calls
//!    served by an instance that was already busy, [`Policy::on_idle`] when an instance finished
//!    its calls, [`Policy::on_lost`] when an instance ended without a decision (crash, undeploy).
//! 3. Whenever [`Policy::next_deadline`] is at or before now, call [`Policy::decide`] and carry
//!    out every decision (stop those instances, start those prewarms) before reporting anything
//!    else: the policy counts them as done.
//! 4. Sleep until the next event or `next_deadline`, whichever comes first.
//!
//! What the policy assumes about instances: a warm call takes the function's most recently
//! idle instance (as `strata-orchestrator`'s `pick` does), a stop decision names the
//! function's longest-idle instance, and an instance started for a prewarm is idle (and holds
//! its memory) from the moment it is decided. Starting `min_instances` is the pool's job, not
//! the policy's.
//!
//! This crate must not grow I/O, clocks, async or dependencies: it is the code a simulator
//! replays weeks of trace through, in seconds.
#![forbid(unsafe_code)]

mod fixed;
mod greedy_dual;
mod hazard;
mod histogram;
mod hybrid;
mod ledger;

use std::fmt;
use std::str::FromStr;

pub use fixed::FixedKeepAlive;
pub use greedy_dual::{Frequency, GreedyDual};
pub use hazard::{Hazard, HazardConfig};
pub use hybrid::{HybridConfig, HybridHistogram};

/// Milliseconds since an arbitrary epoch chosen by the driver.
pub type Millis = u64;

/// A function, by a dense id chosen by the driver (policies index vectors with it).
pub type FnId = u32;

/// One minute in [`Millis`].
pub const MINUTE: Millis = 60_000;

/// What a policy knows about a function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// Memory one instance holds, in MB (what an idle instance costs).
    pub memory_mb: u32,
    /// What a cold start of this function costs, in ms (what keeping an instance saves).
    pub cold_start_ms: u32,
    /// Instances the function keeps at all times: no decision stops one below this.
    pub min_instances: u32,
}

/// An idle instance, as named in a stop decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// Its function.
    pub f: FnId,
    /// When it became idle (finished its calls, or was started by a prewarm).
    pub since: Millis,
    /// The memory it holds, in MB.
    pub memory_mb: u32,
}

/// What [`Policy::decide`] asks the driver to do, now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    /// Idle instances to stop, in the order decided; each is its function's longest-idle one
    /// at that point.
    pub stop: Vec<Idle>,
    /// Functions to start one instance for ahead of their next call; each has no instance at
    /// all at this point (so no function is in both lists).
    pub prewarm: Vec<FnId>,
}

impl Decisions {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.prewarm.is_empty()
    }
}

/// A keep-alive / prewarm policy: events in, decisions out. See the crate docs for the order
/// in which a driver calls these.
pub trait Policy {
    /// Set (or change) what `f` costs and how many instances it must keep.
    fn set_profile(&mut self, f: FnId, profile: Profile);

    /// A call of `f` arrives at `now` and needs an instance: `warm` says an idle instance was
    /// there to take it (the most recently idle one, now busy); otherwise a new instance was
    /// started for it (a cold start).
    fn on_call(&mut self, f: FnId, now: Millis, warm: bool);

    /// `calls` more calls of `f` arrived at `now` and were served by an instance that was
    /// already busy (no instance changed state). Counts for frequency-based policies.
    fn on_joined(&mut self, f: FnId, now: Millis, calls: u64);

    /// One of `f`'s busy instances finished its calls and became idle at `now`.
    fn on_idle(&mut self, f: FnId, now: Millis);

    /// One of `f`'s instances ended at `now` without a decision of this policy (it crashed,
    /// was undeployed, ...): `idle` says whether it was idle (then its longest-idle one is
    /// forgotten) or busy.
    fn on_lost(&mut self, f: FnId, now: Millis, idle: bool);

    /// The decisions due at `now`. The driver carries them all out before reporting further
    /// events; the policy counts them as done.
    fn decide(&mut self, now: Millis) -> Decisions;

    /// The earliest time [`Policy::decide`] could decide something, if any: `now` itself when
    /// something is already due (the idle memory is over budget, an instance expired). Drivers
    /// sleep until then. It may be early (a cancelled timer: decide then returns nothing), never
    /// late; after `decide(now)` it is later than `now`.
    fn next_deadline(&self, now: Millis) -> Option<Millis>;

    /// Counters for reports (decisions made, functions per mode, ...), name and value.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The policies [`build`] knows, by the names operators and the simulator use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// `fixed`: [`FixedKeepAlive`].
    Fixed,
    /// `hybrid`: [`HybridHistogram`].
    Hybrid,
    /// `greedy-dual`: [`GreedyDual`].
    GreedyDual,
    /// `hazard`: [`Hazard`].
    Hazard,
}

impl PolicyKind {
    /// Every policy, in the order reports list them.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Fixed,
        PolicyKind::Hybrid,
        PolicyKind::GreedyDual,
        PolicyKind::Hazard,
    ];

    /// The name [`FromStr`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Fixed => "fixed",
            PolicyKind::Hybrid => "hybrid",
            PolicyKind::GreedyDual => "greedy-dual",
            PolicyKind::Hazard => "hazard",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name [`PolicyKind::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolicy(pub String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown keep-alive policy {:?} (expected fixed, hybrid, greedy-dual or hazard)",
            self.0
        )
    }
}

impl std::error::Error for UnknownPolicy {}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Settings of every policy; each reads its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Fixed keep-alive: how long an instance stays idle before it is stopped. Default 10
    /// minutes, AWS Lambda's in 2019-20 (Azure's was 20; Shahrad et al. §1).
    pub keep_alive: Millis,
    /// Global budget for the memory of idle instances, in MB; `None` is unlimited. Over it,
    /// instances are evicted whatever the policy's own timers say.
    pub budget_mb: Option<u64>,
    /// The hybrid histogram policy's parameters.
    pub hybrid: HybridConfig,
    /// What greedy-dual counts as frequency. Default [`Frequency::Accesses`].
    pub frequency: Frequency,
    /// The hazard policy's parameters.
    pub hazard: HazardConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keep_alive: 10 * MINUTE,
            budget_mb: None,
            hybrid: HybridConfig::default(),
            frequency: Frequency::default(),
            hazard: HazardConfig::default(),
        }
    }
}

/// A [`Config`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The histogram has no bins, or bins of zero length.
    EmptyHistogram {
        /// Number of bins.
        bins: u32,
        /// Length of a bin, ms.
        bin_ms: Millis,
    },
    /// A percentile outside 1..=100, or a head above the tail.
    Percentiles {
        /// The head (prewarm) percentile.
        head: u32,
        /// The tail (keep-alive) percentile.
        tail: u32,
    },
    /// A margin of 100% or more would make a window negative.
    Margin {
        /// Which margin.
        name: &'static str,
        /// Its value, percent.
        percent: u32,
    },
    /// The coefficient-of-variation threshold is not a finite number ≥ 0.
    CvThreshold(String),
    /// The hazard policy's prior is not a finite number > 0.
    Prior(String),
    /// The hazard policy's app weight is not a number in 0..=1.
    AppWeight(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyHistogram { bins, bin_ms } => {
                write!(f, "idle-time histogram of {bins} bins of {bin_ms} ms holds nothing")
            }
            ConfigError::Percentiles { head, tail } => {
                write!(
                    f,
                    "histogram percentiles head {head} and tail {tail} must satisfy 1 <= head <= tail <= 100"
                )
            }
            ConfigError::Margin { name, percent } => write!(f, "{name} margin {percent}% must be below 100%"),
            ConfigError::CvThreshold(v) => write!(f, "coefficient-of-variation threshold {v} is not a number >= 0"),
            ConfigError::Prior(v) => write!(f, "hazard prior {v} is not a number > 0"),
            ConfigError::AppWeight(v) => write!(f, "hazard app weight {v} is not a number from 0 to 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An idle-time histogram of `bins` bins of `bin_ms` ms must hold something.
    pub(crate) fn check_histogram(bins: u32, bin_ms: Millis) -> Result<(), ConfigError> {
        if bins == 0 || bin_ms == 0 {
            return Err(ConfigError::EmptyHistogram { bins, bin_ms });
        }
        Ok(())
    }
}

impl Config {
    /// Check the values; [`build`] does this too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hybrid.validate()?;
        self.hazard.validate()
    }
}

/// A policy of `kind` with `config`.
pub fn build(kind: PolicyKind, config: &Config) -> Result<Box<dyn Policy + Send>, ConfigError> {
    config.validate()?;
    Ok(match kind {
        PolicyKind::Fixed => Box::new(FixedKeepAlive::new(config.keep_alive, config.budget_mb)),
        PolicyKind::Hybrid => Box::new(HybridHistogram::new(config.hybrid.clone(), config.budget_mb)),
        PolicyKind::GreedyDual => Box::new(GreedyDual::new(config.frequency, config.budget_mb)),
        PolicyKind::Hazard => Box::new(Hazard::new(config.hazard.clone(), config.budget_mb)),
    })
}

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_a_bad_name_is_named() {
        for k in PolicyKind::ALL {
            assert_eq!(k.name().parse::<PolicyKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        let err = "greedy_dual".parse::<PolicyKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown keep-alive policy \"greedy_dual\" (expected fixed, hybrid, greedy-dual or hazard)"
        );
    }

    #[test]
    fn build_checks_the_config() {
        let mut c = Config::default();
        c.hybrid.margin_percent = 100;
        let err = build(PolicyKind::Fixed, &c).err().expect("a margin of 100% is refused");
        assert_eq!(err.to_string(), "histogram margin 100% must be below 100%");
        c.hybrid.margin_percent = 10;
        c.hybrid.head_percent = 99;
        c.hybrid.tail_percent = 5;
        let err = build(PolicyKind::Hybrid, &c).err().expect("head above tail is refused");
        assert_eq!(
            err,
            ConfigError::Percentiles { head: 99, tail: 5 },
            "the values are in the error"
        );
        for k in PolicyKind::ALL {
            assert!(build(k, &Config::default()).is_ok());
        }
    }
}
