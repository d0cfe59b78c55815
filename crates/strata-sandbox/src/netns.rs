//! A pool of empty network namespaces (loopback up, nothing else).
//!
//! Creating a network namespace costs about a millisecond here with tails past 10 ms, too
//! much for the spawn path; sharing one namespace would let sandboxes reach each other over
//! loopback. So a background thread keeps a few fresh ones ready and each sandbox takes its
//! own. A sandbox spawned with a key gives its namespace back when it has exited, and the
//! next sandbox with the same key takes it instead of a fresh one (see
//! `SandboxSpec::netns_key`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Pool of ready network namespaces.
#[derive(Debug)]
pub struct NetnsPool {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ready: Mutex<Vec<OwnedFd>>,
    wake: Condvar,
    target: usize,
    /// Namespaces of exited sandboxes, by key.
    used: Mutex<Recycled>,
}

/// Given-back namespaces, bounded per key and in total (the oldest key's go first).
#[derive(Debug, Default)]
struct Recycled {
    by_key: HashMap<String, Vec<OwnedFd>>,
    order: Vec<String>,
    total: usize,
}

/// Namespaces kept per key: about the instances one function runs at once.
const RECYCLED_PER_KEY: usize = 8;
/// Namespaces kept in all (each is a few pages of kernel memory).
const RECYCLED_TOTAL: usize = 256;

impl NetnsPool {
    /// Start a pool that keeps `target` namespaces ready.
    pub fn new(target: usize) -> io::Result<Self> {
        let inner = Arc::new(Shared {
            ready: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            target,
            used: Mutex::new(Recycled::default()),
        });
        if target > 0 {
            // Fail early if this host cannot create network namespaces at all.
            let first = create()?;
            inner.ready.lock().expect("netns pool lock").push(first);
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("strata-netns".into())
                .spawn(move || refill(weak))?;
        }
        Ok(NetnsPool { inner })
    }

    /// Take a namespace: from the pool when one is ready (`true`), else made now (`false`).
    ///
    /// The refill thread is not woken here: woken now, it would preempt the spawn in progress
    /// on a small machine (creating a namespace takes about a millisecond of CPU). Call
    /// [`NetnsPool::refill`] once the spawn is done.
    pub fn take(&self) -> io::Result<(OwnedFd, bool)> {
        let got = self.inner.ready.lock().expect("netns pool lock").pop();
        match got {
            Some(fd) => Ok((fd, true)),
            None => create().map(|fd| (fd, false)),
        }
    }

    /// A namespace given back under `key`, if there is one.
    pub fn take_used(&self, key: &str) -> Option<OwnedFd> {
        let mut used = self.inner.used.lock().expect("netns pool lock");
        let list = used.by_key.get_mut(key)?;
        let fd = list.pop()?;
        if list.is_empty() {
            // Forget the key, so keys of versions no longer deployed do not pile up.
            used.by_key.remove(key);
            used.order.retain(|k| k != key);
        }
        used.total -= 1;
        Some(fd)
    }

    /// Keep the namespace of an exited sandbox for the next one with `key`. Only call this
    /// once no process is left in it.
    pub fn give_back(&self, key: &str, fd: OwnedFd) {
        let mut used = self.inner.used.lock().expect("netns pool lock");
        let used = &mut *used;
        if !used.by_key.contains_key(key) {
            used.order.push(key.to_owned());
        }
        let list = used.by_key.entry(key.to_owned()).or_default();
        if list.len() >= RECYCLED_PER_KEY {
            return;
        }
        list.push(fd);
        used.total += 1;
        // Over the total: drop the namespaces of the least recently added keys.
        while used.total > RECYCLED_TOTAL && !used.order.is_empty() {
            let oldest = used.order.remove(0);
            if let Some(fds) = used.by_key.remove(&oldest) {
                used.total -= fds.len();
            }
        }
    }

    /// Namespaces kept for reuse, in all.
    pub fn recycled(&self) -> usize {
        self.inner.used.lock().expect("netns pool lock").total
    }

    /// Wake the refill thread (after a spawn took a namespace).
    pub fn refill(&self) {
        self.inner.wake.notify_one();
    }

    /// Namespaces ready right now.
    pub fn ready(&self) -> usize {
        self.inner.ready.lock().expect("netns pool lock").len()
    }
}

fn refill(pool: std::sync::Weak<Shared>) {
    // Refill in idle time only: making a namespace costs about a millisecond of CPU, which on
    // a small machine would otherwise be taken from the sandboxes being started. Should the
    // pool run dry under sustained load, `take` makes one inline.
    crate::cgpool::idle_priority();
    loop {
        let Some(shared) = pool.upgrade() else { return };
        let need = {
            let ready = shared.ready.lock().expect("netns pool lock");
            let (ready, _) = shared
                .wake
                .wait_timeout_while(ready, Duration::from_secs(1), |r| r.len() >= shared.target)
                .expect("netns pool lock");
            shared.target.saturating_sub(ready.len())
        };
        for _ in 0..need {
            match create() {
                Ok(fd) => shared.ready.lock().expect("netns pool lock").push(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "creating a network namespace failed");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}

fn open_ns() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// Create a network namespace with loopback up, without moving the calling thread.
pub fn create() -> io::Result<OwnedFd> {
    let orig = open_ns()?;
    // SAFETY: unshare affects only this thread's network namespace; we move back below.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let made = open_ns().and_then(|fd| loopback_up().map(|_| fd));
    // SAFETY: `orig` is an open namespace fd of the right type.
    let back = unsafe { libc::setns(orig.as_raw_fd(), libc::CLONE_NEWNET) };
    if back < 0 {
        // This thread is stuck in the new namespace; nothing else is affected, but say so.
        let e = io::Error::last_os_error();
        tracing::error!(error = %e, "could not return to the original network namespace");
        return Err(e);
    }
    made
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the `ifreq` we pass.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
