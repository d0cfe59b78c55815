//! Work around a call that the caller need not wait for: dropping a used store (resetting its
//! pool slot: finding and rewriting the pages the call dirtied) and instantiating the next
//! call's instance ahead of it. One thread per engine does both, so a call's path is the
//! guest's run and not its set-up and teardown. (The other way, `Ahead::AfterResponse`, makes
//! the next instance on the call's own worker; this thread then only expires it if no call
//! takes it: [`Recycler::watch`].)
//!
//! An instance made ahead is still used for one call only and dropped after it: nothing
//! survives from one call to the next, exactly as when the call instantiates it itself. It
//! holds a pool slot (and its memory) while it waits, so a function keeps at most one ready,
//! made only after it has been called, only while at least half the pool's slots stay free
//! once it holds one (`try_acquire`: the recycler never waits for a slot a call may need), and
//! dropped when no call has taken it within the engine's `ready_idle`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use crate::call::{CallState, Function};
use crate::capture::Capture;

/// An instance made ahead of its call, with everything the call takes over.
pub(crate) struct Ready {
    pub(crate) made: Instant,
    pub(crate) store: Store<CallState>,
    pub(crate) proxy: Proxy,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) meter: Arc<crate::call::Meter>,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
}

/// A store whose call is over and the pool slot it held: dropped in that order, so the slot
/// is free again before a call can take the permit.
type Used = (Box<Store<CallState>>, OwnedSemaphorePermit);

/// How long used stores may wait for the thread when no call wakes it.
const IDLE_SWEEP: Duration = Duration::from_millis(2);

/// How often the thread looks for instances made ahead that no call took.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// How long after its last job the thread keeps to waits of [`IDLE_SWEEP`].
const RECENT: Duration = Duration::from_millis(50);

/// The recycler thread's queue of functions to make an instance for, and the used stores it
/// drops. A call wakes the thread once, when it asks for the next instance (so that is made
/// while the call runs); used stores are only put aside, and the thread drops them after its
/// next instance, or within [`IDLE_SWEEP`] when no call comes. After [`RECENT`] without a
/// job the thread waits long (for a call, or the next expiry check), and then a retired store
/// wakes it (`sleeping`). The thread ends when the engine (the sender) is gone.
pub(crate) struct Recycler {
    tx: mpsc::Sender<Weak<Function>>,
    used: Arc<Mutex<Vec<Used>>>,
    /// Functions whose instance a worker made ahead ([`Recycler::watch`]): the thread drops
    /// it if no call takes it, as it does its own.
    watched: Arc<Mutex<Vec<Weak<Function>>>>,
    /// The thread is in, or about to start, a long wait: `retire` must wake it.
    sleeping: Arc<AtomicBool>,
}

impl Recycler {
    /// Start the thread; instances made ahead that no call takes within `ready_idle` are
    /// dropped.
    pub(crate) fn start(ready_idle: Duration) -> std::io::Result<Recycler> {
        let (tx, rx) = mpsc::channel::<Weak<Function>>();
        let used: Arc<Mutex<Vec<Used>>> = Arc::default();
        // A runtime of its own: instantiation is a future (it runs on a wasmtime fiber) that
        // does not wait for I/O, but host code a component's start-up calls may expect one.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let sweep = Arc::clone(&used);
        let watched: Arc<Mutex<Vec<Weak<Function>>>> = Arc::default();
        let watch = Arc::clone(&watched);
        let sleeping = Arc::new(AtomicBool::new(false));
        let asleep = Arc::clone(&sleeping);
        std::thread::Builder::new().name("wasm-recycle".into()).spawn(move || {
            // The functions it has made an instance for, to drop the ones no call takes.
            let mut holding: Vec<Weak<Function>> = Vec::new();
            let mut checked = Instant::now();
            let mut worked = Instant::now();
            let retired = || !sweep.lock().map(|u| u.is_empty()).unwrap_or(true);
            loop {
                for w in std::mem::take(&mut *watch.lock().unwrap_or_else(|p| p.into_inner())) {
                    if !holding.iter().any(|h| Weak::ptr_eq(h, &w)) {
                        holding.push(w);
                    }
                }
                let wait = if retired() || worked.elapsed() < RECENT {
                    Some(IDLE_SWEEP)
                } else {
                    // A long wait: say so, then look once more. A store retired before the
                    // flag is seen now; one retired after it wakes the thread. (Without this,
                    // a store retired just after the look waited for the next call: a thousand
                    // calls started at once, so none left to ask, deadlocked with every pool
                    // slot held by a store nobody dropped.)
                    asleep.store(true, Ordering::SeqCst);
                    if retired() {
                        Some(Duration::ZERO)
                    } else if holding.is_empty() {
                        None
                    } else {
                        Some(EXPIRY_CHECK)
                    }
                };
                let next = match wait {
                    Some(d) => match rx.recv_timeout(d) {
                        Ok(f) => Some(f),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    },
                    None => match rx.recv() {
                        Ok(f) => Some(f),
                        Err(_) => break,
                    },
                };
                asleep.store(false, Ordering::SeqCst);
                let asked = next.is_some();
                // A panic in one job (a bug in a host function run at instantiation, or in a
                // drop) must not end the thread: the used stores it drops hold pool slots.
                if let Some(f) = next.as_ref().and_then(Weak::upgrade)
                    && unwind_safe(|| f.prepare_ahead(&rt)).unwrap_or_else(|| {
                        f.stash.put(None);
                        false
                    })
                    && let Some(weak) = next.filter(|w| !holding.iter().any(|h| Weak::ptr_eq(h, w)))
                {
                    holding.push(weak);
                }
                let batch = std::mem::take(&mut *sweep.lock().unwrap_or_else(|p| p.into_inner()));
                if asked || !batch.is_empty() {
                    worked = Instant::now();
                }
                for (store, permit) in batch {
                    if unwind_safe(|| drop(store)).is_none() {
                        tracing::warn!("dropping a used wasm store panicked; its slot is released");
                    }
                    drop(permit);
                }
                if checked.elapsed() >= EXPIRY_CHECK {
                    checked = Instant::now();
                    holding.retain(|h| {
                        let Some(f) = h.upgrade() else { return false };
                        // Guarded as the used stores' drops are: the thread owes pool slots.
                        if unwind_safe(|| drop(f.stash.expire(ready_idle))).is_none() {
                            tracing::warn!("dropping an expired wasm instance panicked; its slot is released");
                        }
                        // Cleared before the look: a worker that makes one after it
                        // finds the flag down and watches the function again.
                        f.stash.watched.store(false, Ordering::SeqCst);
                        let keep = f.stash.has_ready();
                        if keep {
                            f.stash.watched.store(true, Ordering::SeqCst);
                        }
                        keep
                    });
                }
            }
            // The engine is gone: what is left is dropped with `sweep`.
        })?;
        Ok(Recycler {
            tx,
            used,
            watched,
            sleeping,
        })
    }

    /// Drop `function`'s instance made ahead by a worker if no call takes it in time (once
    /// per function while it has one: the stash's `watched` flag).
    pub(crate) fn watch(&self, function: &Arc<Function>) {
        if function.stash.watched.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(mut w) = self.watched.lock() {
            w.push(Arc::downgrade(function));
        }
        // The thread may be in a long wait with nothing to expire: wake it to take this one.
        let _ = self.tx.send(Weak::new());
    }

    /// Make `function`'s next instance, off any call's path.
    pub(crate) fn prepare(&self, function: &Arc<Function>) {
        let _ = self.tx.send(Arc::downgrade(function));
    }

    /// Drop `store` and release its slot, off the caller's path.
    pub(crate) fn retire(&self, store: Store<CallState>, permit: OwnedSemaphorePermit) {
        match self.used.lock() {
            Ok(mut used) => used.push((Box::new(store), permit)),
            Err(_) => {
                crate::call::teardown_now(store, permit);
                return;
            }
        }
        // After the push (the lock orders the two): either the thread's second look sees the
        // store, or this sees the flag and wakes it (a dangling `Weak` makes nothing).
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.tx.send(Weak::new());
        }
    }
}

/// Run `f`, a panic in it caught and logged.
fn unwind_safe<T>(f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!("the wasm recycler caught a panic");
            None
        }
    }
}

/// A function's instance made ahead, if any, and whether one is being made.
#[derive(Default)]
pub(crate) struct Stash {
    ready: Mutex<Option<Ready>>,
    asked: AtomicBool,
    /// The recycler's thread has the function among those whose instance it expires.
    watched: AtomicBool,
}

impl Stash {
    /// The instance made ahead, if there is one.
    pub(crate) fn take(&self) -> Option<Ready> {
        self.ready.lock().ok()?.take()
    }

    /// Whether a call should ask the recycler for one: not when one is asked for already.
    pub(crate) fn should_ask(&self) -> bool {
        !self.asked.swap(true, Ordering::AcqRel)
    }

    /// Keep `ready` for the next call (the recycler's side); the request is answered.
    pub(crate) fn put(&self, ready: Option<Ready>) {
        if let (Some(r), Ok(mut slot)) = (ready, self.ready.lock())
            && slot.is_none()
        {
            *slot = Some(r);
        }
        self.asked.store(false, Ordering::Release);
    }

    /// The instance made ahead if it has waited `idle` or longer.
    pub(crate) fn expire(&self, idle: Duration) -> Option<Ready> {
        let mut ready = self.ready.lock().ok()?;
        if ready.as_ref().is_some_and(|r| r.made.elapsed() >= idle) {
            ready.take()
        } else {
            None
        }
    }

    /// Whether an instance is ready.
    pub(crate) fn has_ready(&self) -> bool {
        self.ready.lock().map(|r| r.is_some()).unwrap_or(false)
    }
}

/// Whether the machine has a core to spare for the recycler: when it has not, the work moved
/// off a call's path only competes with the calls (and costs a hand-off), so calls make and
/// drop their own instances. Read from `/proc/stat` by the engine's epoch thread, over the
/// cores this process may run on (its cpuset or `taskset` pinning, read again at every sample):
/// whatever else runs on them takes the same cores, and an idle core it may not use is no
/// spare. (The whole machine's figure counted a daemon pinned to one busy core of two as
/// having half a core to spare.) Under a CPU quota (cgroup `cpu.max` or CFS quota: `docker
/// --cpus`, Kubernetes' `limits.cpu`), a sample in which the quota throttled the process
/// counts as busy too (`quota.rs`).
#[derive(Debug)]
pub(crate) struct Load {
    /// [`crate::EngineConfig::load_aware`]: off, `busy` stays false.
    aware: bool,
    busy: AtomicBool,
    /// The last sample and the cores it covers.
    last: Mutex<Option<Sample>>,
    /// The process's cgroup CPU quota, if any (`quota.rs`).
    quota: Option<crate::quota::Quota>,
    /// Calls started, counted [`Load::NOTE_EVERY`] at a time ([`Load::note_call`]).
    calls: AtomicU64,
    /// A running estimate of one instance's instantiation, in nanoseconds (0: none yet).
    instantiate_ns: AtomicU64,
}

/// One reading of the load.
#[derive(Debug)]
struct Sample {
    at: Instant,
    allowed: Option<Vec<usize>>,
    times: CpuTimes,
    /// How often the quota had throttled the process's cgroup.
    throttled: Option<u64>,
    /// [`Load::calls`] when it was taken.
    calls: u64,
}

/// Idle and total time of some cores, in the kernel's clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuTimes {
    idle: u64,
    total: u64,
    /// How many cores the figures cover.
    cores: usize,
}

/// Idle cores below which the machine counts as busy. Saturated, the cores a daemon may use
/// idle 0.003 (pinned to one) to 0.04 (two) of a core; one client calling back to back leaves
/// its one pinned core 0.20–0.26 idle, gaps the recycler's work fits in (docs/benchmarks.md,
/// "The spare-core reading over the cores the daemon may use"). 0.3 counted those as busy.
const SPARE_CORES: f64 = 0.15;

/// The work a call moves off its path when it is offloaded (its instance made ahead, its
/// store dropped after it), as a multiple of the instantiation alone: dropping a store costs
/// about half an instantiation (criterion: 7.1 µs to instantiate, 3.4 µs to drop), plus the
/// hand-off between threads.
const OFFLOAD_PER_INSTANTIATE: f64 = 2.0;

/// Whether the cores this process may use are too busy to take work off calls' paths: fewer
/// than [`SPARE_CORES`] idle, or fewer than the work offloading would add at the calls'
/// current rate (`offload_cores`: calls a second × the work each moves), or the CPU quota
/// throttled the process since the last sample. The second matters under load: 32 clients
/// left the two cores of this machine 0.12 of a core idle on average, in gaps that passed the
/// first test in some samples, while offloading 27,000 calls a second would ask ~0.4 of a
/// core; the calls then paid for the hand-offs and a thread competing with them
/// (docs/benchmarks.md, "Spare only if the idle time holds the work").
pub(crate) fn too_busy(idle_cores: f64, offload_cores: f64, throttled: bool) -> bool {
    throttled || idle_cores < SPARE_CORES.max(offload_cores)
}

impl Load {
    /// Unless `aware`, the machine always counts as having a core to spare (no sampling).
    pub(crate) fn new(aware: bool) -> Self {
        Load {
            aware,
            busy: AtomicBool::new(false),
            last: Mutex::new(None),
            quota: if aware { crate::quota::Quota::find() } else { None },
            calls: AtomicU64::new(0),
            instantiate_ns: AtomicU64::new(0),
        }
    }

    /// Calls [`Load::note_call`] counts at once: one call in this many updates the shared
    /// counters, so that calls on different cores do not contend for them on every call.
    pub(crate) const NOTE_EVERY: u64 = 16;

    /// Count a call, given its function's call number `seq` and how long its instance took
    /// to make, if it was made for it (in the call or ahead of it).
    pub(crate) fn note_call(&self, seq: u64, instantiate: Option<Duration>) {
        // The 16th, 32nd, … call of a function: each function's first call does not count
        // 16 (many functions called once would read as a high rate).
        if !self.aware || !(seq + 1).is_multiple_of(Self::NOTE_EVERY) {
            return;
        }
        self.calls.fetch_add(Self::NOTE_EVERY, Ordering::Relaxed);
        if let Some(d) = instantiate {
            // A running mean over about 8 samples; a lost update between two threads only
            // drops one sample.
            let ns = d.as_nanos().min(u64::MAX as u128) as u64;
            let old = self.instantiate_ns.load(Ordering::Relaxed);
            let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
            self.instantiate_ns.store(new.max(1), Ordering::Relaxed);
        }
    }

    /// Whether a core is idle enough to take work off calls' paths.
    pub(crate) fn spare(&self) -> bool {
        !self.busy.load(Ordering::Relaxed)
    }

    /// Take a new sample (the epoch thread, every few ticks). Without `/proc/stat` the
    /// machine counts as having a core to spare; without the process's status, every core
    /// counts as allowed. The cores are those of the process's main thread, which a cpuset
    /// or `taskset` sets for all its threads.
    pub(crate) fn sample(&self) {
        if !self.aware {
            return;
        }
        let allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_allowed(&s));
        let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_stat(&s, allowed.as_deref()))
        else {
            return;
        };
        let now = Sample {
            at: Instant::now(),
            allowed,
            times: now,
            throttled: self.quota.as_ref().and_then(crate::quota::Quota::throttled),
            calls: self.calls.load(Ordering::Relaxed),
        };
        let Ok(mut last) = self.last.lock() else { return };
        if let Some(prev) = last.as_ref()
            && prev.allowed == now.allowed
            && let Some(idle) = idle_cores(prev.times, now.times)
        {
            // Under a quota that throttled the process since the last sample, nothing is
            // spare however idle the cores are: more work would only be throttled.
            let throttled = matches!((prev.throttled, now.throttled), (Some(a), Some(b)) if b > a);
            let secs = now.at.saturating_duration_since(prev.at).as_secs_f64();
            let offload = if secs > 0.0 {
                let rate = now.calls.saturating_sub(prev.calls) as f64 / secs;
                rate * self.instantiate_ns.load(Ordering::Relaxed) as f64 * 1e-9 * OFFLOAD_PER_INSTANTIATE
            } else {
                0.0
            };
            self.busy.store(too_busy(idle, offload, throttled), Ordering::Relaxed);
        }
        *last = Some(now);
    }
}

/// The cores a thread may run on, from its `Cpus_allowed_list` (`/proc/self/status`):
/// "0-3,6" is 0, 1, 2, 3 and 6. Sorted, without repeats.
pub(crate) fn parse_allowed(status: &str) -> Option<Vec<usize>> {
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    let mut cores = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if b < a || b - a > 1 << 16 {
            return None;
        }
        cores.extend(a..=b);
    }
    cores.sort_unstable();
    cores.dedup();
    (!cores.is_empty()).then_some(cores)
}

/// Idle and total ticks of the cores in `allowed` (sorted; every core when `None`), from the
/// per-core lines of `/proc/stat` (`cpuN user nice system idle iowait irq softirq steal …`);
/// idle time is idle + iowait. `None` when no line matched.
pub(crate) fn parse_stat(stat: &str, allowed: Option<&[usize]>) -> Option<CpuTimes> {
    let mut sum = CpuTimes {
        idle: 0,
        total: 0,
        cores: 0,
    };
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(core) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        // The first line, "cpu", is every core's sum.
        let Ok(core) = core.parse::<usize>() else { continue };
        if allowed.is_some_and(|a| a.binary_search(&core).is_err()) {
            continue;
        }
        let ticks: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        if ticks.len() < 5 {
            return None;
        }
        // Saturating: absurd counters give a useless reading, not an overflow.
        sum.idle = sum.idle.saturating_add(ticks[3].saturating_add(ticks[4]));
        sum.total = ticks.iter().fold(sum.total, |t, x| t.saturating_add(*x));
        sum.cores += 1;
    }
    (sum.cores > 0).then_some(sum)
}

/// Cores idle on average between two samples of the same cores, `None` if no time passed.
pub(crate) fn idle_cores(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    if prev.cores != now.cores {
        return None;
    }
    let total = now.total.checked_sub(prev.total).filter(|t| *t > 0)?;
    let idle = now.idle.saturating_sub(prev.idle).min(total);
    Some(idle as f64 / total as f64 * now.cores as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  30 0 0 100 10 0 0 0 0 0\n\
                        cpu0 10 0 0 60 5 0 0 0 0 0\n\
                        cpu1 20 0 0 40 5 0 0 0 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn proc_stat_gives_idle_and_total_ticks_of_the_allowed_cores() {
        let all = parse_stat(STAT, None).expect("parsed");
        assert_eq!(
            all,
            CpuTimes {
                idle: 110,
                total: 140,
                cores: 2
            }
        );
        let one = parse_stat(STAT, Some(&[1])).expect("parsed");
        assert_eq!(
            one,
            CpuTimes {
                idle: 45,
                total: 65,
                cores: 1
            }
        );
        // Allowed cores the machine does not list count for nothing.
        assert_eq!(parse_stat(STAT, Some(&[0, 7])).expect("parsed").cores, 1);
        assert_eq!(parse_stat(STAT, Some(&[7])), None);
        assert_eq!(parse_stat("intr 1 2 3\n", None), None);
        assert_eq!(parse_stat("cpu0 1 2 x 4 5\n", None), None);
        assert_eq!(parse_stat("cpu0 1 2 3\n", None), None);
    }

    #[test]
    fn the_allowed_cores_come_from_the_status_list() {
        let status = "Name:\tstrata\nCpus_allowed:\t4f\nCpus_allowed_list:\t0-3,6\nMems_allowed_list:\t0\n";
        assert_eq!(parse_allowed(status), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_allowed("Cpus_allowed_list:\t1\n"), Some(vec![1]));
        assert_eq!(parse_allowed("Cpus_allowed_list: 6,0-2,1\n"), Some(vec![0, 1, 2, 6]));
        assert_eq!(parse_allowed("Cpus_allowed_list:\t3-1\n"), None);
        assert_eq!(parse_allowed("Cpus_allowed_list:\tx\n"), None);
        assert_eq!(parse_allowed("Name:\tstrata\n"), None);
    }

    #[test]
    fn idle_cores_are_the_idle_share_of_the_sampled_cores() {
        let a = CpuTimes {
            idle: 100,
            total: 1000,
            cores: 2,
        };
        // 20 ticks passed on 2 cores, 5 of them idle: a quarter of the time, half a core.
        let b = CpuTimes {
            idle: 105,
            total: 1020,
            cores: 2,
        };
        assert_eq!(idle_cores(a, b), Some(0.5));
        assert_eq!(idle_cores(a, a), None);
        // Counters that went backwards (a different machine's figures) give no reading.
        assert_eq!(idle_cores(b, a), None);
        // Nor do samples of different sets of cores.
        assert_eq!(
            idle_cores(
                a,
                CpuTimes {
                    idle: 105,
                    total: 1020,
                    cores: 1
                }
            ),
            None
        );
    }

    #[test]
    fn idle_time_counts_as_spare_only_if_it_holds_the_work_offloading_would_add() {
        // One client calling back to back on a pinned core: gaps of a quarter of a core,
        // 7,000 calls a second moving ~20 µs each (0.14 of a core): spare.
        assert!(!too_busy(0.25, 0.14, false));
        // 32 clients: 0.12 of a core idle on average, a sample with 0.2 in its gaps, while
        // 27,000 calls a second would move ~0.3 of a core: busy.
        assert!(too_busy(0.2, 0.3, false));
        // Too little idle time for anything, however few the calls.
        assert!(too_busy(0.1, 0.0, false));
        // A whole idle core at a moderate rate: spare; throttled by a quota: never.
        assert!(!too_busy(1.0, 0.2, false));
        assert!(too_busy(1.0, 0.2, true));
    }

    #[test]
    fn calls_are_counted_in_steps_with_a_running_instantiation_estimate() {
        let load = Load::new(true);
        for seq in 0..64 {
            load.note_call(seq, Some(Duration::from_micros(8)));
        }
        // Every 16th call counts 16: 64 calls.
        assert_eq!(load.calls.load(Ordering::Relaxed), 64);
        assert_eq!(load.instantiate_ns.load(Ordering::Relaxed), 8_000);
        // A slower instantiation moves the estimate an eighth of the way.
        load.note_call(79, Some(Duration::from_micros(16)));
        assert_eq!(load.instantiate_ns.load(Ordering::Relaxed), 9_000);
        // A call whose instance was not made for it counts, without a sample.
        load.note_call(95, None);
        assert_eq!(load.calls.load(Ordering::Relaxed), 96);
        assert_eq!(load.instantiate_ns.load(Ordering::Relaxed), 9_000);
        // A function's first call counts nothing on its own.
        let first = Load::new(true);
        first.note_call(0, Some(Duration::from_micros(8)));
        assert_eq!(first.calls.load(Ordering::Relaxed), 0);
        // Not load-aware: nothing is counted.
        let off = Load::new(false);
        off.note_call(15, Some(Duration::from_micros(8)));
        assert_eq!(off.calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_process_pinned_to_its_busy_core_has_none_to_spare() {
        // Two cores; this process may use core 1 only, busy throughout, while core 0 idles.
        let before = "cpu0 0 0 0 1000 0 0 0 0\ncpu1 1000 0 0 0 0 0 0 0\n";
        let after = "cpu0 0 0 0 1100 0 0 0 0\ncpu1 1100 0 0 0 0 0 0 0\n";
        let (pinned, whole) = (Some(&[1usize][..]), None);
        let idle = |allowed| {
            idle_cores(
                parse_stat(before, allowed).unwrap(),
                parse_stat(after, allowed).unwrap(),
            )
        };
        assert_eq!(idle(pinned), Some(0.0));
        // The whole machine has a core idle, which this process may not use.
        assert_eq!(idle(whole), Some(1.0));
    }
}
