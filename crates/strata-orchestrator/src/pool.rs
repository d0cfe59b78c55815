//! The instances of one function version: leases, scale-out while calls wait, keep-alive,
//! draining. Decisions come from [`crate::scaling`]; this file only carries them out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_instance::{Instance, LaunchSpec};
use strata_types::ColdStart;
use tokio::sync::oneshot;

use crate::scaling::{self, PoolView, SlotView};
use crate::{Context, Error};

struct Slot {
    inst: Arc<Instance>,
    inflight: u32,
    last_used: Instant,
}

struct Waiter {
    tx: oneshot::Sender<Result<Lease, Error>>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    starting: u32,
    /// Of `starting`, instances the keep-alive policy asked for ahead of calls: it counts
    /// them as idle from the decision on.
    prewarming: u32,
    waiters: VecDeque<Waiter>,
    draining: bool,
    cold_starts: u64,
}

/// A pool of instances of one version.
pub struct Pool {
    pub(crate) launch: LaunchSpec,
    ctx: Arc<Context>,
    state: Mutex<State>,
}

/// The right to send one call to an instance; dropping it gives the slot back.
pub struct Lease {
    /// `None` once disarmed (a hand-over the caller abandoned).
    pool: Option<Arc<Pool>>,
    inst: Arc<Instance>,
    /// Set when the call waited for this instance to start.
    pub cold: Option<ColdStart>,
}

impl Lease {
    /// The instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.inst
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release(&self.inst);
        }
    }
}

/// Counts for `describe` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Ready instances.
    pub instances: u32,
    /// Being started.
    pub starting: u32,
    /// Calls in flight.
    pub inflight: u32,
    /// Calls waiting for an instance.
    pub waiting: u32,
    /// Cold starts so far.
    pub cold_starts: u64,
    /// Per instance: (id, calls in flight, idle for).
    pub detail: Vec<(String, u32, Duration)>,
}

impl Pool {
    pub(crate) fn new(ctx: Arc<Context>, launch: LaunchSpec) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            launch,
            ctx,
            state: Mutex::new(State::default()),
        });
        pool.scale();
        pool
    }

    /// The daemon's keep-alive policy, unless this function never reuses instances.
    fn policy(&self) -> Option<&crate::keepalive::KeepAlive> {
        self.ctx
            .keep_alive
            .as_deref()
            .filter(|_| self.launch.spec.keep_alive_ms != 0)
    }

    fn view(&self, st: &State) -> PoolView {
        let spec = &self.launch.spec;
        // Under a daemon-wide policy, idle instances stop when it decides, not after the
        // manifest's keep-alive.
        let keep_alive = if self.policy().is_some() {
            Duration::MAX
        } else {
            Duration::from_millis(spec.keep_alive_ms)
        };
        PoolView {
            slots: st
                .slots
                .iter()
                .map(|s| SlotView {
                    inflight: s.inflight,
                    last_used: s.last_used,
                })
                .collect(),
            starting: st.starting,
            waiting: st.waiters.len() as u32,
            concurrency: spec.concurrency,
            min_instances: if st.draining { 0 } else { spec.min_instances },
            max_instances: spec.max_instances,
            keep_alive,
        }
    }

    /// Start what the current demand needs.
    fn scale(self: &Arc<Self>) {
        let n = {
            let mut st = self.state.lock().expect("pool lock");
            let n = scaling::to_start(&self.view(&st));
            st.starting += n;
            n
        };
        for _ in 0..n {
            let pool = Arc::clone(self);
            tokio::spawn(async move { pool.start_one().await });
        }
    }

    /// Start one instance ahead of calls (a keep-alive policy's prewarm decision).
    pub(crate) fn prewarm(self: &Arc<Self>) {
        {
            let mut st = self.state.lock().expect("pool lock");
            let full = st.slots.len() as u32 + st.starting >= self.launch.spec.max_instances;
            if st.draining || full {
                // The policy counts the instance as idle from its decision on: tell it there is
                // none after all.
                if let Some(ka) = self.policy() {
                    ka.lost(&self.launch.spec.name, true);
                }
                return;
            }
            st.starting += 1;
            st.prewarming += 1;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move { pool.start_one().await });
    }

    /// Stop the longest-idle instance (a keep-alive policy's decision), keeping
    /// `min_instances`. Returns whether one was stopped.
    pub(crate) fn stop_longest_idle(self: &Arc<Self>) -> bool {
        let slot = {
            let mut st = self.state.lock().expect("pool lock");
            if st.slots.len() as u32 <= self.launch.spec.min_instances {
                return false;
            }
            let Some(i) = st
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inflight == 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i)
            else {
                return false;
            };
            st.slots.remove(i)
        };
        tokio::spawn(async move { slot.inst.stop().await });
        true
    }

    async fn start_one(self: Arc<Self>) {
        let log = self.ctx.log_sink(&self.launch.spec.name);
        let launched = Instance::launch(&self.ctx.backend, &self.ctx.runtimes, &self.launch, log).await;
        let mut st = self.state.lock().expect("pool lock");
        st.starting -= 1;
        // Prewarms finish in any order with other starts; count them off first.
        let prewarmed = st.prewarming > 0;
        if prewarmed {
            st.prewarming -= 1;
        }
        match launched {
            Ok(inst) => {
                st.cold_starts += 1;
                let inst = Arc::new(inst);
                let cold = inst.cold_start();
                if let Some(ka) = self.policy() {
                    let ms = cold.sandbox_ms + cold.runtime_init_ms + cold.import_ms;
                    ka.profile(&self.launch.spec.name, self.profile(ms));
                }
                st.slots.push(Slot {
                    inst: Arc::clone(&inst),
                    inflight: 0,
                    last_used: Instant::now(),
                });
                let idx = st.slots.len() - 1;
                // Hand the new instance to waiting calls, as many as it takes.
                while st.slots[idx].inflight < self.launch.spec.concurrency {
                    let Some(w) = st.waiters.pop_front() else { break };
                    st.slots[idx].inflight += 1;
                    let lease = Lease {
                        pool: Some(Arc::clone(&self)),
                        inst: Arc::clone(&inst),
                        cold: Some(cold),
                    };
                    if let Err(Ok(mut lease)) = w.tx.send(Ok(lease)) {
                        // The caller gave up; releasing through the lease would re-lock, so
                        // disarm it and undo the count here.
                        lease.pool = None;
                        st.slots[idx].inflight -= 1;
                    } else if let Some(ka) = self.policy() {
                        if st.slots[idx].inflight == 1 {
                            // A prewarmed instance was idle as far as the policy knows.
                            ka.call(&self.launch.spec.name, prewarmed);
                        } else {
                            ka.joined(&self.launch.spec.name);
                        }
                    }
                }
                if st.slots[idx].inflight == 0
                    && !prewarmed
                    && let Some(ka) = self.policy()
                {
                    // Started for calls that found another instance meanwhile (or gave up):
                    // the policy must know of it to stop it. It counts as a cold start that
                    // went idle at once.
                    ka.call(&self.launch.spec.name, false);
                    ka.idle(&self.launch.spec.name);
                }
                let stop_now = st.draining && st.waiters.is_empty() && st.slots[idx].inflight == 0;
                if stop_now {
                    if let Some(ka) = self.policy() {
                        ka.lost(&self.launch.spec.name, true);
                    }
                    let slot = st.slots.remove(idx);
                    drop(st);
                    tokio::spawn(async move { slot.inst.stop().await });
                }
            }
            Err(e) => {
                tracing::warn!(function = %self.launch.spec.name, error = %e, "instance failed to start");
                if prewarmed && let Some(ka) = self.policy() {
                    ka.lost(&self.launch.spec.name, true);
                }
                if st.slots.is_empty() && st.starting == 0 {
                    let msg = e.to_string();
                    for w in st.waiters.drain(..) {
                        let _ = w.tx.send(Err(Error::Init(msg.clone())));
                    }
                }
            }
        }
    }

    /// Get an instance for one call: a warm one with room, else wait (bounded) while one
    /// starts.
    pub(crate) async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Lease, Error> {
        let rx = {
            let mut st = self.state.lock().expect("pool lock");
            if st.draining {
                return Err(Error::Draining);
            }
            let before = st.slots.len();
            st.slots.retain(|s| !s.inst.is_dead() || s.inflight > 0);
            if let Some(ka) = self.policy() {
                for _ in st.slots.len()..before {
                    ka.lost(&self.launch.spec.name, true);
                }
            }
            let mut view = self.view(&st);
            // A dead instance still finishing its calls takes no new one: it counts as full, so
            // the pick goes to a live one with room (picking it and then refusing it made the
            // caller wait while another instance had room).
            for (v, s) in view.slots.iter_mut().zip(&st.slots) {
                if s.inst.is_dead() {
                    v.inflight = u32::MAX;
                }
            }
            if let Some(i) = scaling::pick(&view.slots, view.concurrency) {
                let slot = &mut st.slots[i];
                if let Some(ka) = self.policy() {
                    if slot.inflight == 0 {
                        ka.call(&self.launch.spec.name, true);
                    } else {
                        ka.joined(&self.launch.spec.name);
                    }
                }
                slot.inflight += 1;
                return Ok(Lease {
                    pool: Some(Arc::clone(self)),
                    inst: Arc::clone(&slot.inst),
                    cold: None,
                });
            }
            if st.waiters.len() >= self.ctx.queue_depth {
                return Err(Error::OverCapacity);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { tx });
            rx
        };
        self.scale();
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Draining),
            Err(_) => Err(Error::OverCapacity),
        }
    }

    fn release(self: &Arc<Self>, inst: &Arc<Instance>) {
        let mut stop = None;
        {
            let mut st = self.state.lock().expect("pool lock");
            let Some(i) = st.slots.iter().position(|s| Arc::ptr_eq(&s.inst, inst)) else {
                return;
            };
            st.slots[i].inflight -= 1;
            st.slots[i].last_used = Instant::now();
            let dead = inst.is_dead();
            let never_reuse = self.launch.spec.keep_alive_ms == 0;
            if !dead && !never_reuse {
                // Pass the slot straight to a waiting call.
                while st.slots[i].inflight < self.launch.spec.concurrency {
                    let Some(w) = st.waiters.pop_front() else { break };
                    if let Some(ka) = self.policy() {
                        ka.joined(&self.launch.spec.name);
                    }
                    st.slots[i].inflight += 1;
                    let lease = Lease {
                        pool: Some(Arc::clone(self)),
                        inst: Arc::clone(inst),
                        cold: None,
                    };
                    if let Err(Ok(mut lease)) = w.tx.send(Ok(lease)) {
                        lease.pool = None;
                        st.slots[i].inflight -= 1;
                    }
                }
            }
            let idle = st.slots[i].inflight == 0;
            if dead || (idle && (never_reuse || st.draining)) {
                stop = Some(st.slots.remove(i));
                if let Some(ka) = self.policy() {
                    // Busy as far as the policy knows: the call that just ended was its last.
                    ka.lost(&self.launch.spec.name, false);
                }
            } else if idle && let Some(ka) = self.policy() {
                ka.idle(&self.launch.spec.name);
            }
        }
        let replace = stop.is_some();
        if let Some(slot) = stop {
            tokio::spawn(async move { slot.inst.stop().await });
        }
        if replace {
            // A stopped instance may leave waiters behind: start a replacement.
            self.scale();
        }
    }

    /// Stop instances idle past keep-alive, drop dead ones, keep `min_instances` up.
    pub(crate) fn tick(self: &Arc<Self>, now: Instant) {
        let stopped: Vec<Slot> = {
            let mut st = self.state.lock().expect("pool lock");
            let mut out = Vec::new();
            let mut i = 0;
            while i < st.slots.len() {
                if st.slots[i].inst.is_dead() && st.slots[i].inflight == 0 {
                    if let Some(ka) = self.policy() {
                        ka.lost(&self.launch.spec.name, true);
                    }
                    out.push(st.slots.remove(i));
                } else {
                    i += 1;
                }
            }
            let mut idx = scaling::to_stop(&self.view(&st), now);
            idx.sort_unstable_by(|a, b| b.cmp(a));
            for i in idx {
                out.push(st.slots.remove(i));
            }
            out
        };
        for slot in stopped {
            tokio::spawn(async move { slot.inst.stop().await });
        }
        self.scale();
    }

    /// Stop taking calls; instances stop once idle. Returns when all are gone (or after
    /// `grace`, when the rest are killed).
    pub(crate) async fn drain(self: &Arc<Self>, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let (idle, busy) = {
                let mut st = self.state.lock().expect("pool lock");
                st.draining = true;
                let (idle, busy): (Vec<Slot>, Vec<Slot>) = st.slots.drain(..).partition(|s| s.inflight == 0);
                st.slots = busy;
                (idle, st.slots.len() + st.waiters.len() + st.starting as usize)
            };
            for slot in idle {
                if let Some(ka) = self.policy() {
                    ka.lost(&self.launch.spec.name, true);
                }
                slot.inst.stop().await;
            }
            if busy == 0 {
                return;
            }
            if Instant::now() >= deadline {
                let (slots, waiters) = {
                    let mut st = self.state.lock().expect("pool lock");
                    let slots: Vec<Slot> = st.slots.drain(..).collect();
                    (slots, std::mem::take(&mut st.waiters))
                };
                // No slot of this pool will serve them now: they go back to `invoke`, which
                // tries the function's new pool (a redeploy) or answers the daemon's stop.
                for w in waiters {
                    let _ = w.tx.send(Err(Error::Draining));
                }
                for s in slots {
                    if let Some(ka) = self.policy() {
                        ka.lost(&self.launch.spec.name, s.inflight == 0);
                    }
                    s.inst.stop().await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the keep-alive policy should know about this function.
    pub(crate) fn profile(&self, cold_start_ms: f64) -> strata_policy::Profile {
        let spec = &self.launch.spec;
        strata_policy::Profile {
            memory_mb: (spec.memory_bytes >> 20).max(1) as u32,
            cold_start_ms: cold_start_ms.max(1.0) as u32,
            min_instances: spec.min_instances,
        }
    }

    /// Counts.
    pub fn stats(&self) -> PoolStats {
        let st = self.state.lock().expect("pool lock");
        let now = Instant::now();
        PoolStats {
            instances: st.slots.len() as u32,
            starting: st.starting,
            inflight: st.slots.iter().map(|s| s.inflight).sum(),
            waiting: st.waiters.len() as u32,
            cold_starts: st.cold_starts,
            detail: st
                .slots
                .iter()
                .map(|s| {
                    (
                        s.inst.id().to_owned(),
                        s.inflight,
                        now.saturating_duration_since(s.last_used),
                    )
                })
                .collect(),
        }
    }
}
