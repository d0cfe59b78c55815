//! Cgroups made ahead of time and removed after the fact, both off the spawn path.
//!
//! Creating a group (a directory per v1 controller plus its limit files) costs about half a
//! millisecond and removing one about a third; neither needs to happen while a caller waits.
//! A pooled group is fresh (never reused), so its accounting starts at zero; it is made with
//! default limits and only the limits a spec changes are written at take time. Both helper
//! threads run at `SCHED_IDLE`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, CgroupFs, Hierarchy};
use crate::error::Result;
use crate::spec::Limits;

pub(crate) struct CgroupPool {
    hierarchy: Hierarchy,
    fs: Arc<dyn CgroupFs>,
    tag: String,
    seq: AtomicU64,
    ready: Mutex<Vec<Cgroup>>,
    wake: Condvar,
    target: usize,
    graveyard: Mutex<mpsc::Sender<Cgroup>>,
}

/// Move the calling thread to `SCHED_IDLE` (background upkeep of the pools).
pub(crate) fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid parameter struct.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "pool thread stays at normal priority");
    }
}

impl CgroupPool {
    pub(crate) fn new(
        hierarchy: Hierarchy,
        fs: Arc<dyn CgroupFs>,
        tag: String,
        target: usize,
    ) -> std::io::Result<Arc<Self>> {
        let (bury, graves) = mpsc::channel::<Cgroup>();
        let pool = Arc::new(CgroupPool {
            hierarchy,
            fs,
            tag,
            seq: AtomicU64::new(0),
            ready: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            target,
            graveyard: Mutex::new(bury),
        });
        let reaper_fs = Arc::clone(&pool.fs);
        std::thread::Builder::new()
            .name("strata-cg-reaper".into())
            .spawn(move || {
                idle_priority();
                while let Ok(cg) = graves.recv() {
                    remove(&cg, reaper_fs.as_ref());
                }
            })?;
        if target > 0 {
            let weak = Arc::downgrade(&pool);
            std::thread::Builder::new()
                .name("strata-cg-pool".into())
                .spawn(move || {
                    idle_priority();
                    while let Some(p) = weak.upgrade() {
                        let need = {
                            let ready = p.ready.lock().expect("cgroup pool lock");
                            let (ready, _) = p
                                .wake
                                .wait_timeout_while(ready, Duration::from_secs(1), |r| r.len() >= p.target)
                                .expect("cgroup pool lock");
                            p.target.saturating_sub(ready.len())
                        };
                        for _ in 0..need {
                            match p.create(&Limits::default()) {
                                Ok(cg) => p.ready.lock().expect("cgroup pool lock").push(cg),
                                Err(e) => {
                                    tracing::warn!(error = %e, "pre-creating a cgroup failed");
                                    std::thread::sleep(Duration::from_millis(100));
                                    break;
                                }
                            }
                        }
                    }
                })?;
        }
        Ok(pool)
    }

    fn create(&self, limits: &Limits) -> Result<Cgroup> {
        let name = format!("{}-{}", self.tag, self.seq.fetch_add(1, Ordering::Relaxed));
        self.hierarchy.create(self.fs.as_ref(), &name, limits)
    }

    /// A fresh group with `limits`: from the pool when one is ready, else made now.
    pub(crate) fn take(&self, limits: &Limits) -> Result<Cgroup> {
        let pooled = self.ready.lock().expect("cgroup pool lock").pop();
        match pooled {
            Some(cg) => match self
                .hierarchy
                .apply_limits(self.fs.as_ref(), &cg, &Limits::default(), limits)
            {
                Ok(()) => Ok(cg),
                Err(e) => {
                    self.bury(cg);
                    Err(e)
                }
            },
            None => self.create(limits),
        }
    }

    /// Wake the refill thread (after a spawn took a group).
    pub(crate) fn refill(&self) {
        self.wake.notify_one();
    }

    /// Remove a group in the background (its processes are killed first).
    pub(crate) fn bury(&self, cg: Cgroup) {
        let sent = self.graveyard.lock().expect("graveyard lock").send(cg);
        if let Err(mpsc::SendError(cg)) = sent {
            remove(&cg, self.fs.as_ref());
        }
    }
}

/// Kill what is left in the group and remove it, retrying while the kernel releases it.
fn remove(cg: &Cgroup, fs: &dyn CgroupFs) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        cg.kill_all(fs);
        match cg.remove(fs) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                tracing::warn!(error = %e, cgroup = cg.name(), "sandbox cgroup not removed");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}
