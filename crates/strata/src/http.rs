//! The gateway's HTTP server: one single-threaded tokio runtime per core, each serving the
//! connections handed to it, instead of axum's `serve` on the daemon's work-stealing runtime.
//!
//! Why: on the work-stealing runtime a request's tasks wake the other worker (to steal the
//! task just scheduled, or the one a response left behind), and the two workers spend their
//! time parking, waking and searching each other: with one client both cores were busy for
//! each call. Served on one thread, a connection's requests, their wasm calls and what those
//! leave behind stay on one core with its caches. Measured in docs/benchmarks.md ("One
//! runtime per core").
//!
//! One acceptor (on the daemon's runtime) owns the listening socket, so a port in use is still
//! an error at start and a port of 0 works; it hands each accepted connection to the thread
//! serving the fewest. (`SO_REUSEPORT` listeners per thread would spread connections by hash
//! instead, and would let a second daemon on the same port share its traffic silently.)
//!
//! Everything else of the daemon (ticks, the async queue, cron) stays on its runtime; tasks a
//! request spawns run on the thread that served it. A thread's runtime lives until
//! [`Server::finish`], after the orchestrator has stopped, so instances whose pipes and timers
//! were made on it can still be drained.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, oneshot, watch};

/// The threads serving HTTP, and the acceptor feeding them.
pub struct Server {
    threads: Vec<Thread>,
    /// Tells the threads to stop serving (graceful: calls in flight finish).
    stop: watch::Sender<bool>,
}

struct Thread {
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
    conns: mpsc::UnboundedSender<std::net::TcpStream>,
    /// Told when its connections have all closed after `stop`.
    drained: Option<oneshot::Receiver<()>>,
    /// Ends its runtime.
    exit: Option<oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// How many threads serve HTTP: `STRATA_HTTP_THREADS`, or one per core.
pub fn threads_wanted() -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_from(std::env::var("STRATA_HTTP_THREADS").ok().as_deref(), cores)
}

fn threads_from(setting: Option<&str>, cores: usize) -> anyhow::Result<usize> {
    match setting {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| anyhow::anyhow!("STRATA_HTTP_THREADS = {v:?}: expected a number from 1 to 1024")),
        None => Ok(cores),
    }
}

impl Server {
    /// Start `n` threads serving `router`.
    pub fn start(router: Router, n: usize) -> anyhow::Result<Server> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (conns, rx) = mpsc::unbounded_channel();
            let (drained_tx, drained) = oneshot::channel();
            let (exit, exit_rx) = oneshot::channel();
            let open = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building an HTTP thread's runtime")?;
            let (router, open2, stopped) = (router.clone(), Arc::clone(&open), stopped.clone());
            let handle = std::thread::Builder::new()
                .name(format!("strata-http-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let serving = async move {
                            serve(rx, router, open2, stopped).await;
                            let _ = drained_tx.send(());
                            // Keep driving this runtime's I/O and timers until the daemon is
                            // done with what was made on it.
                            std::future::pending::<()>().await
                        };
                        // `exit` ends it, connections still open past the drain included.
                        tokio::select! {
                            () = serving => {}
                            _ = exit_rx => {}
                        }
                    });
                    // Its tasks are dropped; blocking work still running is not waited for long.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })
                .context("starting an HTTP thread")?;
            threads.push(Thread {
                open,
                conns,
                drained: Some(drained),
                exit: Some(exit),
                handle: Some(handle),
            });
        }
        Ok(Server { threads, stop })
    }

    /// Accept connections on `listener` until `signal` resolves, then stop the threads
    /// gracefully: no new connections; requests in flight are answered; idle keep-alive
    /// connections are closed. Returns when every connection has closed, or after `drain`
    /// (the rest are cut when the threads finish).
    pub async fn run(&mut self, listener: tokio::net::TcpListener, signal: impl Future<Output = ()>, drain: Duration) {
        tokio::pin!(signal);
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                () = &mut signal => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                // The connection went before it was taken: nothing wrong with the listener.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Responses go out as soon as they are written, not held for the previous
            // segment's acknowledgement (Nagle): the usual setting for an HTTP server.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
            let mut stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "taking a connection off the acceptor failed");
                    continue;
                }
            };
            // A thread whose runtime has gone hands the connection back: the next one takes it.
            for _ in 0..self.threads.len() {
                let i = pick(&self.threads, next);
                next = i + 1;
                let t = &self.threads[i];
                t.open.fetch_add(1, Ordering::Relaxed);
                match t.conns.send(stream) {
                    Ok(()) => break,
                    Err(mpsc::error::SendError(back)) => {
                        tracing::error!(thread = i, "an HTTP thread has stopped");
                        // Left counted, so `pick` passes it over from now on.
                        stream = back;
                    }
                }
            }
        }
        drop(listener);
        let _ = self.stop.send(true);
        let all = async {
            for t in &mut self.threads {
                if let Some(d) = t.drained.take() {
                    let _ = d.await;
                }
            }
        };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!(?drain, "connections still open after the drain period; closing them");
        }
    }

    /// End the threads' runtimes (after the orchestrator has stopped).
    pub fn finish(mut self) {
        let _ = self.stop.send(true);
        for t in &mut self.threads {
            if let Some(e) = t.exit.take() {
                let _ = e.send(());
            }
        }
        for t in &mut self.threads {
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Errors of one connection that `accept` reports, as opposed to the listener's own.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// The thread with the fewest open connections; among equals, the first from `from` on, so
/// ties go round.
fn pick(threads: &[Thread], from: usize) -> usize {
    let n = threads.len();
    (0..n)
        .map(|k| (from + k) % n)
        .min_by_key(|&i| threads[i].open.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// How long a new connection may take to send its first byte (nginx's
/// `client_header_timeout` is 60 s; hyper's for a request's head is 30 s).
const FIRST_BYTE: Duration = Duration::from_secs(30);

/// One thread's loop: serve each connection handed over until told to stop, then close them
/// gracefully.
async fn serve(
    mut conns: mpsc::UnboundedReceiver<std::net::TcpStream>,
    router: Router,
    open: Arc<AtomicUsize>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1, and HTTP/2 with prior knowledge, as axum's `serve` does. With a timer, a
    // client that does not finish its request's head within hyper's 30 s is disconnected
    // instead of holding its connection (and a graceful stop) open.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    loop {
        let stream = tokio::select! {
            s = conns.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = stopped.wait_for(|s| *s) => break,
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "registering a connection failed");
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let counted = Counted(Arc::clone(&open));
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            // Uncounted when the task ends, however it ends (a handler's panic included).
            let _counted = counted;
            // hyper's header timer starts only once it reads HTTP/1, after the builder has
            // sniffed for HTTP/2's preface, which waits without one: a client that connects
            // and sends nothing would hold its descriptor and this task until it left. A stop
            // ends the wait (the graceful shutdown waits for this task's watcher).
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(FIRST_BYTE, stream.peek(&mut first)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// One open connection of a thread, counted while it lives.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(open: usize) -> Thread {
        Thread {
            open: Arc::new(AtomicUsize::new(open)),
            conns: mpsc::unbounded_channel().0,
            drained: None,
            exit: None,
            handle: None,
        }
    }

    #[test]
    fn a_connection_goes_to_the_thread_serving_the_fewest() {
        let threads = [thread(3), thread(1), thread(2)];
        assert_eq!(pick(&threads, 0), 1);
        assert_eq!(pick(&threads, 2), 1);
    }

    #[test]
    fn one_thread_per_core_unless_set() {
        assert_eq!(threads_from(None, 2).unwrap(), 2);
        assert_eq!(threads_from(Some("3"), 2).unwrap(), 3);
        for bad in ["0", "-1", "two", "", "1025"] {
            let e = threads_from(Some(bad), 2).unwrap_err().to_string();
            assert!(
                e.contains("STRATA_HTTP_THREADS") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn ties_go_round() {
        let threads = [thread(0), thread(0), thread(0)];
        assert_eq!(pick(&threads, 0), 0);
        assert_eq!(pick(&threads, 1), 1);
        assert_eq!(pick(&threads, 3), 0);
        assert_eq!(pick(&[], 5), 0);
    }
}
