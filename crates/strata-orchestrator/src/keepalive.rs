//! The daemon-wide keep-alive policy: which idle instances to stop and which functions to
//! start an instance for ahead of their next call, across every function, under an optional
//! idle-memory budget.
//!
//! The decisions come from [`strata_policy`] (the same code `cargo xtask simulate` replays
//! traces through); this file only translates between the pools and the policy: pools report
//! calls and instances going idle or away, [`crate::Orchestrator::run_ticks`] asks for the
//! decisions and carries them out. Time is the policy's [`Millis`]: milliseconds since the
//! daemon started, multiplied by [`KeepAliveConfig::time_scale`] (1 in production; a replay
//! fast-forwards a trace by running the daemon with, say, 60: a trace minute per second).
//!
//! Functions whose manifest says `keep_alive = "0s"` (never reuse an instance) stay outside
//! the policy: their instances stop after each call, whatever it decides.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use strata_policy::{Config, FnId, Millis, Policy, PolicyKind, Profile};

/// How the daemon keeps instances.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepAliveConfig {
    /// The policy.
    pub kind: PolicyKind,
    /// The policies' settings (keep-alive of the fixed policy, idle-memory budget, …).
    pub config: Config,
    /// Policy milliseconds per real millisecond (1 = real time).
    pub time_scale: f64,
}

struct Inner {
    policy: Box<dyn Policy + Send>,
    ids: HashMap<String, FnId>,
    names: Vec<String>,
}

/// The policy and its bookkeeping: function names ↔ dense ids, the policy's clock.
pub struct KeepAlive {
    inner: Mutex<Inner>,
    epoch: Instant,
    scale: f64,
    kind: PolicyKind,
    /// Woken by every event: it may have brought the next decision forward.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive").field("kind", &self.kind).finish()
    }
}

/// What [`KeepAlive::decide`] asks the orchestrator to do, by function name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Stop the longest-idle instance of each (a name may repeat).
    pub stop: Vec<String>,
    /// Start one instance of each.
    pub prewarm: Vec<String>,
}

impl KeepAlive {
    /// A policy as configured; a bad configuration is named.
    pub fn new(config: &KeepAliveConfig) -> Result<KeepAlive, String> {
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(format!(
                "policy time scale {} is not a positive number",
                config.time_scale
            ));
        }
        let policy = strata_policy::build(config.kind, &config.config).map_err(|e| e.to_string())?;
        Ok(KeepAlive {
            inner: Mutex::new(Inner {
                policy,
                ids: HashMap::new(),
                names: Vec::new(),
            }),
            epoch: Instant::now(),
            scale: config.time_scale,
            kind: config.kind,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The policy in use.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The policy's clock now.
    pub fn now(&self) -> Millis {
        (self.epoch.elapsed().as_secs_f64() * 1000.0 * self.scale) as Millis
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut dyn Policy, FnId, Millis) -> R) -> R {
        let mut inner = self.inner.lock().expect("keep-alive lock");
        // Read under the lock, so events reach the policy in time order.
        let now = self.now();
        let id = match inner.ids.get(name) {
            Some(&id) => id,
            None => {
                let id = inner.names.len() as FnId;
                inner.names.push(name.to_owned());
                inner.ids.insert(name.to_owned(), id);
                id
            }
        };
        let r = f(inner.policy.as_mut(), id, now);
        drop(inner);
        self.wake.notify_one();
        r
    }

    /// Real time until the policy's next deadline (zero when one is due), `None` when it has
    /// none.
    pub fn until_next(&self) -> Option<std::time::Duration> {
        let now = self.now();
        let next = self.inner.lock().expect("keep-alive lock").policy.next_deadline(now)?;
        let policy_ms = next.saturating_sub(now) as f64;
        // At most a minute: a far deadline with a small time scale would overflow.
        Some(std::time::Duration::from_secs_f64(
            (policy_ms / self.scale / 1000.0).min(60.0),
        ))
    }

    /// Resolves after the next event.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// What a function costs: memory per instance, cold-start time, instances kept always.
    pub fn profile(&self, name: &str, profile: Profile) {
        self.with(name, |p, id, _| p.set_profile(id, profile));
    }

    /// A call took an instance: an idle one (`warm`) or a new one started for it.
    pub fn call(&self, name: &str, warm: bool) {
        self.with(name, |p, id, now| p.on_call(id, now, warm));
    }

    /// A call joined an instance that was already busy.
    pub fn joined(&self, name: &str) {
        self.with(name, |p, id, now| p.on_joined(id, now, 1));
    }

    /// An instance finished its calls.
    pub fn idle(&self, name: &str) {
        self.with(name, |p, id, now| p.on_idle(id, now));
    }

    /// An instance ended without a decision (crash, redeploy, shutdown).
    pub fn lost(&self, name: &str, idle: bool) {
        self.with(name, |p, id, now| p.on_lost(id, now, idle));
    }

    /// The decisions due now, if any.
    pub fn decide(&self) -> Actions {
        let now = self.now();
        let mut inner = self.inner.lock().expect("keep-alive lock");
        if inner.policy.next_deadline(now).is_none_or(|t| t > now) {
            return Actions::default();
        }
        let d = inner.policy.decide(now);
        let name = |f: FnId| inner.names.get(f as usize).cloned().unwrap_or_default();
        Actions {
            stop: d.stop.iter().map(|i| name(i.f)).collect(),
            prewarm: d.prewarm.iter().map(|&f| name(f)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ka(kind: PolicyKind, keep_alive: Millis, scale: f64) -> KeepAlive {
        KeepAlive::new(&KeepAliveConfig {
            kind,
            config: Config {
                keep_alive,
                ..Config::default()
            },
            time_scale: scale,
        })
        .unwrap()
    }

    #[test]
    fn a_bad_time_scale_is_named() {
        let err = KeepAlive::new(&KeepAliveConfig {
            kind: PolicyKind::Fixed,
            config: Config::default(),
            time_scale: 0.0,
        })
        .unwrap_err();
        assert!(err.contains("time scale 0"), "{err}");
    }

    #[test]
    fn fixed_policy_stops_the_idle_instance_once_its_keep_alive_has_passed() {
        // Real time (scale 1), so the first check has 100 ms to run before the keep-alive
        // passes. (At scale 1000 it had 0.1 ms, and a busy CI machine missed that.)
        let k = ka(PolicyKind::Fixed, 100, 1.0);
        k.profile(
            "f",
            Profile {
                memory_mb: 128,
                cold_start_ms: 20,
                min_instances: 0,
            },
        );
        k.call("f", false);
        k.idle("f");
        assert_eq!(k.decide(), Actions::default(), "not yet idle for 100 policy ms");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(
            k.decide(),
            Actions {
                stop: vec!["f".into()],
                prewarm: vec![]
            }
        );
        assert_eq!(k.decide(), Actions::default(), "counted as done");
    }

    #[test]
    fn min_instances_is_never_stopped() {
        let k = ka(PolicyKind::Fixed, 1, 1000.0);
        k.profile(
            "g",
            Profile {
                memory_mb: 64,
                cold_start_ms: 20,
                min_instances: 1,
            },
        );
        k.call("g", false);
        k.idle("g");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(k.decide(), Actions::default());
    }
}
