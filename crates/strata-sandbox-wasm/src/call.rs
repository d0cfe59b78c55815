//! One call: a store and an instance made for it, `wasi:http/incoming-handler.handle`, and
//! the response, the output and what went wrong.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::capture::Capture;
use crate::choose::{Chooser, Way};
use crate::engine::{Ahead, Inner, Limits, Pre, WasmFunction};
use crate::recycle::{Ready, Stash};
use strata_types::AllowedHosts;

/// An HTTP request for a function.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query as the function sees them (starts with `/`).
    pub path_with_query: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The function's response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers (values that are not UTF-8 are dropped).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// Why a call has no response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// It ran past its timeout and was stopped.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// It asked for more memory than its limit, and failed because of it.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// It trapped (the message carries the wasm backtrace).
    #[error("trapped: {0}")]
    Trap(String),
    /// It returned without setting a response, or the response was malformed or too large.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// A command module exited with a non-zero status.
    #[error("exited with status {0}")]
    Exit(i32),
    /// Every instance slot of the engine stayed taken for the call's whole timeout: it never
    /// started.
    #[error("no instance slot free within {0:?}")]
    OverCapacity(Duration),
}

/// Everything a call produced.
#[derive(Debug)]
pub struct CallReport {
    /// The response, or why there is none.
    pub result: Result<Reply, CallError>,
    /// Its stdout, and how many bytes were dropped past the cap.
    pub stdout: (Bytes, u64),
    /// Its stderr, and how many bytes were dropped past the cap.
    pub stderr: (Bytes, u64),
    /// Creating the store and instantiating, when it got that far.
    pub instantiate: Option<Duration>,
    /// Waiting for a free instance slot.
    pub queued: Duration,
    /// Time the call's instance ran on a thread (instantiation, guest code and the host
    /// functions it called): its CPU time, measured as the wall time of its polls.
    pub cpu: Duration,
    /// The largest linear memory the instance had, bytes.
    pub memory_peak_bytes: u64,
    /// The instance was made ahead of the call (`instantiate` is how long that took, off
    /// the call's path).
    pub ahead: bool,
}

/// The data of one call's store.
pub(crate) struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    limiter: MemoryLimiter,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP, only to allowed hosts.
struct Outbound {
    allowed: AllowedHosts,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// Bytes of one `fields` (headers or trailers) a guest may build: names and values together,
/// plus a small overhead per entry (wasmtime-wasi-http's default is 128 KiB). Past it the call
/// traps (wasmtime-wasi-http's choice, not an error the guest sees).
pub(crate) const FIELDS_MAX_BYTES: usize = 64 << 10;
/// The largest write to an outgoing body the host buffers (wasmtime-wasi-http's default is
/// 1 MiB; a body holds at most two): bodies stream through in pieces this size.
const BODY_CHUNK_BYTES: usize = 64 << 10;

/// Host-side resources (`fields`, bodies, streams, pollables, requests…) a call may hold at
/// once: one per 256 KiB of its memory limit, from 256 to 16,384. wasmtime's default is a
/// million: a guest holding a million 128 KiB `fields` could take the host's memory, which its
/// memory limit (linear memory only) does not see. With this cap and the two sizes above,
/// `fields` hold at most a quarter of the memory limit from 64 MiB up (resources × 64 KiB;
/// below, the floor of 256 resources allows 16 MiB) and bodies' channels a sixth (three
/// resources a body, two 64 KiB chunks each). Not counted: an outbound request body to an
/// allowed host that stops reading also fills hyper's write buffer (~400 KiB a connection),
/// and the response being collected is bounded by the response cap, not by `memory`.
/// A request handler holds a dozen or two resources, plus about ten per outbound call in
/// flight: 64 MiB allows some twenty concurrent outbound calls; more need more `memory`.
pub(crate) fn max_resources(memory_bytes: u64) -> usize {
    usize::try_from(memory_bytes / (256 << 10))
        .unwrap_or(usize::MAX)
        .clamp(256, 16_384)
}

impl WasiHttpHooks for Outbound {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http");
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.allowed.allows(scheme, host, port) {
            tracing::debug!(%uri, "outbound request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

/// Caps linear memory and tables; remembers whether it refused a growth, and the largest
/// memory it allowed.
struct MemoryLimiter {
    memory_bytes: usize,
    /// The instance's memories together, as granted so far.
    total: usize,
    meter: Arc<Meter>,
}

const MAX_TABLE_ELEMENTS: usize = 200_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The limit is the instance's, over all its memories (a component of several core
        // modules has several, up to the pool's 8): each memory's creation (from 0) and
        // growth adds to `total`; wasm memories never shrink. A growth that then fails for
        // another reason stays counted: the error is on the safe side.
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.memory_bytes {
            self.meter.refused.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.total = total;
        self.meter.peak.fetch_max(total as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.meter.refused.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }
}

/// The marker error the epoch callback raises at the deadline.
#[derive(Debug)]
struct DeadlineReached;

impl std::fmt::Display for DeadlineReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline reached")
    }
}

impl std::error::Error for DeadlineReached {}

impl WasmFunction {
    /// Serve one request with a fresh instance.
    pub async fn call(&self, call: HttpCall) -> CallReport {
        self.function.call(call).await
    }
}

/// A loaded component and what its calls share: the linked component, the limits, the
/// engine, and the instance made ahead of its next call.
pub(crate) struct Function {
    pub(crate) pre: Pre,
    pub(crate) limits: Limits,
    pub(crate) inner: Arc<Inner>,
    pub(crate) stash: Stash,
    /// Whether its calls are faster with instances made ahead on the recycler or on their worker
    /// ([`Ahead::Adaptive`]).
    pub(crate) chooser: Mutex<Chooser>,
    /// Its calls in flight.
    pub(crate) inflight: AtomicU32,
    /// Its calls so far (each call's number, for the chooser).
    pub(crate) calls: AtomicU64,
    /// Attempts in a row to make its instance ahead that took longer than [`AHEAD_LIMIT`]:
    /// after [`AHEAD_STRIKES`] its calls make their own from then on, under their own timeout.
    pub(crate) ahead_slow: AtomicU32,
}

/// The longest an instance made ahead of its call may take. Instantiation runs the guest's
/// start functions; one that spins or waits would hold the thread that makes it (the
/// recycler's, which also frees other calls' pool slots, or a worker's) for the function's
/// whole timeout, up to 15 minutes. Past this the attempt is dropped and the function's calls
/// make their own instances. A pooled instantiation takes microseconds, an interpreter's
/// snapshot a few milliseconds.
pub(crate) const AHEAD_LIMIT: Duration = Duration::from_millis(100);

/// Attempts over [`AHEAD_LIMIT`] in a row that stop a function's instances being made ahead:
/// one could be a busy moment (the limit is wall-clock time, and on a worker includes its
/// other tasks); a start function that spins or waits is over it every time.
const AHEAD_STRIKES: u32 = 3;

/// Counts a call out of its function's calls in flight when dropped.
struct Inflight<'a>(&'a AtomicU32);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Function {
    /// Serve one request with a fresh instance: the one made ahead of it if there is one,
    /// else one made now. While the machine has a core to spare, either the recycler is asked
    /// for the next call's instance as this one starts and gets this one's store to drop
    /// (`WhenIdle`, and `Adaptive` while its chooser finds that faster), or the call drops
    /// its store in a task that runs after it has returned, which then makes the next call's
    /// instance (`AfterResponse`, and `Adaptive`'s other way; with `Never`, only the drop).
    /// With no core spare, the call makes and drops its own.
    async fn call(self: &Arc<Self>, call: HttpCall) -> CallReport {
        let queued_at = Instant::now();
        let command = matches!(self.pre, Pre::Command(_));
        let ahead_on = self.makes_ahead();
        let ready = if ahead_on { self.stash.take() } else { None };
        // When the machine has no core to spare, work moved to the recycler's thread would
        // only compete with the calls and add a hand-off: a call then makes and drops its own
        // instance (it still takes one that is ready). With a core to spare, `Adaptive` asks
        // the function's chooser which way its calls are faster.
        let idle = self.inner.load.spare();
        let spare = ahead_on && (self.inner.ahead == Ahead::Always || idle);
        let alone = self.inflight.fetch_add(1, Ordering::Relaxed) == 0;
        let _inflight = Inflight(&self.inflight);
        let seq = self.calls.fetch_add(1, Ordering::Relaxed);
        let ticket = (spare && self.inner.ahead == Ahead::Adaptive).then(|| {
            let now = queued_at.saturating_duration_since(self.inner.born).as_nanos() as u64;
            self.chooser.lock().expect("chooser lock").start(seq, now, alone)
        });
        let after_response = self.inner.ahead == Ahead::AfterResponse;
        let offload = match ticket {
            Some(t) => t.way == Way::Ahead,
            None => spare && !after_response,
        };
        // Who drops the store once the guest is done. Not on the recycler, the next instance
        // is made by this call's worker once its response is out (`AfterResponse`, and
        // `Adaptive`'s other way). A command is never made ahead: `AfterThisTask` or `Now`.
        let teardown = if offload {
            Teardown::Recycler
        } else if !idle {
            Teardown::Now
        } else if ahead_on && (after_response || ticket.is_some()) {
            Teardown::AfterThisTaskThenNext
        } else {
            Teardown::AfterThisTask
        };
        if offload {
            self.ask_next();
        }
        let ahead = ready.is_some();
        let (stdout, stderr, permit, meter, made) = match ready {
            Some(r) => (r.stdout, r.stderr, r.permit, r.meter, Some((r.store, r.proxy))),
            None => {
                let (stdout, stderr) = self.captures();
                let permit = match self.take_slot().await {
                    Ok(permit) => permit,
                    Err(e) => return report(Err(e), &stdout, &stderr, None, queued_at.elapsed(), command),
                };
                (stdout, stderr, permit, Arc::new(Meter::default()), None)
            }
        };
        let queued = queued_at.elapsed();
        let started = Instant::now();
        let result = match &self.pre {
            Pre::Proxy(pre) => {
                let made = match made {
                    Some((mut store, proxy)) => {
                        self.arm(&mut store, started);
                        Ok((store, Some(proxy)))
                    }
                    None => self
                        .store(None, &stdout, &stderr, &[], started, &meter)
                        .map(|s| (s, None)),
                };
                match made {
                    Ok((store, proxy)) => {
                        let run = (pre, store, permit, Arc::clone(&meter));
                        self.run_proxy(run, proxy, teardown, &call, started).await
                    }
                    Err(e) => Err(e),
                }
            }
            Pre::Command(pre) => {
                let (path, query) = call
                    .path_with_query
                    .split_once('?')
                    .unwrap_or((call.path_with_query.as_str(), ""));
                let env = strata_types::cgi::request_env(&call.method, path, query, &call.headers);
                let body = Some(call.body.clone());
                match self.store(body, &stdout, &stderr, &env, started, &meter) {
                    Ok(store) => {
                        let run = (pre, store, permit, Arc::clone(&meter));
                        self.run_command(run, teardown, &stdout, started).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let instantiate = match meter.instantiate_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        };
        self.inner.load.note_call(seq, instantiate);
        let mut r = report(result, &stdout, &stderr, instantiate, queued, command);
        r.ahead = ahead;
        r.cpu = Duration::from_nanos(meter.cpu_ns.load(Ordering::Relaxed));
        r.memory_peak_bytes = meter.peak.load(Ordering::Relaxed);
        r
    }

    /// An instance slot for a call: a free one at once (no timer armed), else the first to
    /// free up within the call's timeout; past it the engine is full and the caller is told
    /// so (429) instead of waiting on.
    async fn take_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, CallError> {
        use tokio::sync::TryAcquireError;
        let closed = || CallError::BadResponse("engine closed".into());
        match Arc::clone(&self.inner.slots).try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::Closed) => Err(closed()),
            Err(TryAcquireError::NoPermits) => {
                let slot = Arc::clone(&self.inner.slots).acquire_owned();
                match tokio::time::timeout(self.limits.timeout, slot).await {
                    Ok(Ok(permit)) => Ok(permit),
                    Ok(Err(_)) => Err(closed()),
                    Err(_) => Err(CallError::OverCapacity(self.limits.timeout)),
                }
            }
        }
    }

    /// A call's stdout and stderr captures. A command's stdout is its response body, so it
    /// gets the response's cap.
    fn captures(&self) -> (Capture, Capture) {
        let stdout = Capture::new(match self.pre {
            Pre::Command(_) => self.limits.max_response_bytes,
            Pre::Proxy(_) => self.limits.max_output_bytes,
        });
        (stdout, Capture::new(self.limits.max_output_bytes))
    }

    /// Ask the recycler for this function's next instance, unless it has been asked already.
    pub(crate) fn ask_next(self: &Arc<Self>) {
        if self.stash.should_ask() {
            self.inner.recycler.prepare(self);
        }
    }

    /// Whether this function's instances may be made ahead: not a command's (its store holds
    /// the request's body), nor when the engine makes nothing ahead.
    pub(crate) fn makes_ahead(&self) -> bool {
        self.inner.ahead != Ahead::Never
            && !matches!(self.pre, Pre::Command(_))
            && self.ahead_slow.load(Ordering::Relaxed) < AHEAD_STRIKES
    }

    /// Make the instance for the next call on the recycler's thread ([`Self::make_ready`]),
    /// kept in the stash. Whether it made one.
    pub(crate) fn prepare_ahead(&self, rt: &tokio::runtime::Runtime) -> bool {
        let ready = rt.block_on(self.make_ready());
        let made = ready.is_some();
        self.stash.put(ready);
        made
    }

    /// Make the next call's instance on this task's worker, unless one is ready or being made
    /// ([`Ahead::AfterResponse`]); the recycler is told to drop it if no call takes it.
    pub(crate) async fn prepare_here(self: &Arc<Self>) {
        use futures::FutureExt as _;
        if !self.stash.should_ask() {
            return;
        }
        // Behind anything this worker has to do first: a yielded task is woken only after the
        // worker has run its ready tasks and polled the I/O driver, so a request that came
        // in meanwhile is served here first, instead of waking the other worker for it.
        // Measured (docs/benchmarks.md, 2026-11-28): one client's p50 97–115 µs against
        // 109–122 µs without the yield.
        tokio::task::yield_now().await;
        // A panic in the host while instantiating leaves no instance, and the stash free
        // to be asked again.
        let ready = std::panic::AssertUnwindSafe(self.make_ready())
            .catch_unwind()
            .await
            .unwrap_or(None);
        let made = ready.is_some();
        self.stash.put(ready);
        if made {
            self.inner.recycler.watch(self);
        }
    }

    /// A store and an instance, as a call would make them, with their pool slot: not when
    /// one is ready already, the function is a command (its store holds the request's body),
    /// or fewer than half the pool's slots would be free once it holds one.
    async fn make_ready(&self) -> Option<Ready> {
        let Pre::Proxy(pre) = &self.pre else { return None };
        // At least half the pool stays free once this instance holds its slot (with a pool
        // of one slot or two, nothing is made ahead: it would hold a slot a call of another
        // function may need).
        let free_after = self.inner.slots.available_permits().saturating_sub(1);
        if self.stash.has_ready() || free_after * 2 < self.inner.pool_slots {
            return None;
        }
        let permit = Arc::clone(&self.inner.slots).try_acquire_owned().ok()?;
        let (stdout, stderr) = self.captures();
        let meter = Arc::new(Meter::default());
        let started = Instant::now();
        let mut store = self.store(None, &stdout, &stderr, &[], started, &meter).ok()?;
        let made = tokio::time::timeout(
            AHEAD_LIMIT,
            guarded(Arc::clone(&meter), pre.instantiate_async(&mut store)),
        )
        .await;
        let Ok(made) = made else {
            if self.ahead_slow.fetch_add(1, Ordering::Relaxed) + 1 == AHEAD_STRIKES {
                tracing::warn!(
                    "instantiating ahead took longer than {AHEAD_LIMIT:?} {AHEAD_STRIKES} times in a row \
                     (a start function that runs or waits): this function's calls make their own \
                     instances from now on"
                );
            }
            teardown_now(store, permit);
            return None;
        };
        self.ahead_slow.store(0, Ordering::Relaxed);
        match made {
            Ok(Ok(proxy)) => {
                meter.instantiated(started);
                Some(Ready {
                    made: Instant::now(),
                    store,
                    proxy,
                    permit,
                    meter,
                    stdout,
                    stderr,
                })
            }
            // The call that finds no instance ready instantiates its own and reports what
            // went wrong; here it is only noted.
            Ok(Err(e)) => {
                tracing::debug!("instantiating ahead failed: {e:#}");
                None
            }
            Err(_) => {
                tracing::debug!("instantiating ahead panicked in the host");
                None
            }
        }
    }

    /// A store for one call: WASI with captured output, no sockets, the granted folder, the
    /// memory limiter, and the deadline.
    fn store(
        &self,
        stdin: Option<Bytes>,
        stdout: &Capture,
        stderr: &Capture,
        extra_env: &[(String, String)],
        started: Instant,
        meter: &Arc<Meter>,
    ) -> Result<Store<CallState>, CallError> {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&self.limits.env)
            .envs(extra_env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if let Some(body) = stdin {
            wasi.stdin(MemoryInputPipe::new(body));
        }
        if let Some(dir) = &self.limits.files {
            wasi.preopened_dir(dir, "/", FsPerms::ReadOnly)
                .map_err(|e| CallError::BadResponse(format!("granted folder: {e:#}")))?;
        }
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELDS_MAX_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(max_resources(self.limits.memory_bytes));
        let state = CallState {
            wasi: wasi.build(),
            http,
            table,
            hooks: Outbound {
                allowed: self.limits.allowed_hosts.clone(),
            },
            limiter: MemoryLimiter {
                memory_bytes: self.limits.memory_bytes as usize,
                total: 0,
                meter: Arc::clone(meter),
            },
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        self.arm(&mut store, started);
        Ok(store)
    }

    /// Give `store` its call's deadline, counted from `started`: the epoch callback stops
    /// the guest there and lets it yield to the executor at every tick before.
    fn arm(&self, store: &mut Store<CallState>, started: Instant) {
        let deadline = started + self.limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }

    /// How long to wait for the guest before giving up on it from the host side: the
    /// timeout plus two epoch ticks (the epoch check stops a running guest; this catches
    /// one blocked in the host, e.g. on an outbound call).
    fn grace(&self) -> Duration {
        self.limits.timeout + self.inner.tick * 2 + Duration::from_millis(20)
    }

    /// The guest runs in this task, polled together with the collection of its response: no
    /// task is spawned per call, so the call does not hop between worker threads. Giving up on
    /// it (the grace timeout) drops the guest's future, and with it its store and pool slot.
    async fn run_proxy(
        self: &Arc<Self>,
        (pre, mut store, permit, meter): Run<'_, ProxyPre<CallState>>,
        made: Option<Proxy>,
        teardown: Teardown,
        call: &HttpCall,
        started: Instant,
    ) -> Result<Reply, CallError> {
        let timeout = self.limits.timeout;
        let request = build_request(call).map_err(CallError::BadResponse)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let resources = (|| {
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            wasmtime::Result::<_>::Ok((req, out))
        })();
        let (req, out) = resources.map_err(|e| CallError::BadResponse(format!("{e:#}")))?;
        let timer = Arc::clone(&meter);
        let guest = guarded(Arc::clone(&meter), async move {
            let proxy = match made {
                Some(proxy) => proxy,
                None => {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    timer.instantiated(started);
                    proxy
                }
            };
            let outcome = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await;
            self.finish(teardown, store, permit);
            outcome
        });
        let max_body = self.limits.max_response_bytes;
        // The response as the guest set it, with its whole body, or why there is none.
        let response = async {
            match rx.await {
                Ok(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    match Limited::new(body, max_body).collect().await {
                        Ok(b) => Ok((parts, b.to_bytes())),
                        // The guest trapped mid-body, or the body is too large.
                        Err(e) => Err(CallError::BadResponse(format!("response body: {e}"))),
                    }
                }
                Ok(Err(code)) => Err(CallError::BadResponse(format!(
                    "the function answered with an error: {code:?}"
                ))),
                Err(_) => Err(CallError::BadResponse(
                    "the function returned without a response".into(),
                )),
            }
        };
        let both = async {
            let (outcome, response) = tokio::join!(guest, response);
            let refused = meter.refused.load(Ordering::Relaxed);
            match response {
                Ok((parts, body)) => {
                    // The guest may have run on after its response (bounded by the same
                    // deadline): a late failure is logged, the response stands.
                    if let Some(e) = classify(outcome, refused, timeout) {
                        tracing::debug!("guest failed after its response: {e}");
                    }
                    let headers = parts
                        .headers
                        .iter()
                        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                        .collect();
                    Ok(Reply {
                        status: parts.status.as_u16(),
                        headers,
                        body,
                    })
                }
                Err(no_response) => Err(classify(outcome, refused, timeout).unwrap_or(no_response)),
            }
        };
        tokio::time::timeout(self.grace(), both)
            .await
            .unwrap_or(Err(CallError::Timeout(timeout)))
    }

    async fn run_command(
        self: &Arc<Self>,
        (pre, mut store, permit, meter): Run<'_, CommandPre<CallState>>,
        teardown: Teardown,
        stdout: &Capture,
        started: Instant,
    ) -> Result<Reply, CallError> {
        let timeout = self.limits.timeout;
        let timer = Arc::clone(&meter);
        let guest = guarded(Arc::clone(&meter), async move {
            let command = pre.instantiate_async(&mut store).await?;
            timer.instantiated(started);
            let outcome = command.wasi_cli_run().call_run(&mut store).await;
            // Its stdout, the response, is in the capture already.
            self.finish(teardown, store, permit);
            outcome
        });
        let Ok(outcome) = tokio::time::timeout(self.grace(), guest).await else {
            return Err(CallError::Timeout(timeout));
        };
        let code = match outcome {
            Ok(Ok(Ok(()))) => 0,
            Ok(Ok(Err(()))) => 1,
            Ok(Err(e)) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => exit.0,
                None => {
                    let refused = meter.refused.load(Ordering::Relaxed);
                    return Err(classify::<()>(Ok(Err(e)), refused, timeout).expect("an error"));
                }
            },
            Err(panic) => return Err(classify::<()>(Err(panic), false, timeout).expect("an error")),
        };
        if code != 0 {
            return Err(CallError::Exit(code));
        }
        let (body, dropped) = stdout.take();
        if dropped > 0 {
            return Err(CallError::BadResponse(format!(
                "response larger than {} bytes",
                self.limits.max_response_bytes
            )));
        }
        Ok(Reply {
            status: 200,
            headers: Vec::new(),
            body,
        })
    }

    /// A call's instance is done. The host's resources go now (for a proxy, the response's
    /// sender among them, whose drop tells the response's side that a guest that trapped set
    /// none); the store's teardown (the pool slot's reset) goes the `how` way.
    fn finish(self: &Arc<Self>, how: Teardown, mut store: Store<CallState>, permit: tokio::sync::OwnedSemaphorePermit) {
        drop(std::mem::take(&mut store.data_mut().table));
        match how {
            Teardown::Recycler => self.inner.recycler.retire(store, permit),
            Teardown::AfterThisTask => teardown_after_this_task(store, permit, None),
            Teardown::AfterThisTaskThenNext => teardown_after_this_task(store, permit, Some(Arc::clone(self))),
            Teardown::Now => teardown_now(store, permit),
        }
    }
}

/// Who drops a call's store (resetting its pool slot) once the guest is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// The recycler's thread (the call's instance was made the `Ahead` way).
    Recycler,
    /// This worker, once the response is on its way ([`teardown_after_this_task`]): while a
    /// core is spare. Measured (docs/benchmarks.md, 2026-11-28): one client's p50 150 against
    /// 162 µs; under 32 clients the extra task per call cost 3 % of the throughput, hence
    /// `Now` when no core is spare.
    AfterThisTask,
    /// As `AfterThisTask`, and the same task then makes the function's next instance
    /// ([`Ahead::AfterResponse`]).
    AfterThisTaskThenNext,
    /// The call itself, before it returns.
    Now,
}

/// Drop a used store, then free its pool slot, once the current task has gone on with the
/// response: a task spawned on this worker, which runs it when the current task's poll
/// returns (tokio's LIFO slot: the same core, where the slot's pages are in cache; not
/// stolen by other workers), after the response has been handed on (through the gateway, in
/// the same poll, to the socket). The pool slot's reset is then not part of what the client
/// waits for. Its CPU time is not in the call's record. Outside a runtime: at once.
/// With `next`, the task then makes that function's next instance.
fn teardown_after_this_task(
    store: Store<CallState>,
    permit: tokio::sync::OwnedSemaphorePermit,
    next: Option<Arc<Function>>,
) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(async move {
            teardown_now(store, permit);
            if let Some(f) = next {
                f.prepare_here().await;
            }
        })),
        Err(_) => teardown_now(store, permit),
    }
}

/// Drop a used store, then free its pool slot: in that order, so the slot is free again
/// before a call can take the permit.
pub(crate) fn teardown_now(store: Store<CallState>, permit: tokio::sync::OwnedSemaphorePermit) {
    drop(store);
    drop(permit);
}

/// The report of a call; a command's stdout was its response, not output to log.
fn report(
    result: Result<Reply, CallError>,
    stdout: &Capture,
    stderr: &Capture,
    instantiate: Option<Duration>,
    queued: Duration,
    command: bool,
) -> CallReport {
    CallReport {
        result,
        stdout: if command { (Bytes::new(), 0) } else { stdout.take() },
        stderr: stderr.take(),
        instantiate,
        queued,
        cpu: Duration::ZERO,
        memory_peak_bytes: 0,
        ahead: false,
    }
}

/// What a call's instance used: CPU while it ran, its largest memory, and whether the
/// limiter refused it memory.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    cpu_ns: AtomicU64,
    peak: AtomicU64,
    refused: AtomicBool,
    /// Store creation and instantiation, once the instance exists (0 before).
    instantiate_ns: AtomicU64,
}

impl Meter {
    fn instantiated(&self, started: Instant) {
        let ns = started.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64;
        self.instantiate_ns.store(ns, Ordering::Relaxed);
    }
}

/// The pieces a call runs with: linked component, store, pool slot, the meter.
type Run<'a, P> = (&'a P, Store<CallState>, tokio::sync::OwnedSemaphorePermit, Arc<Meter>);

/// The guest's future, timed in CPU time and with a panic in it (a bug in a host function)
/// caught as an error of this call rather than unwinding into the caller's task.
fn guarded<F: Future>(meter: Arc<Meter>, guest: F) -> impl Future<Output = std::thread::Result<F::Output>> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(CpuTimed::new(meter, guest)).catch_unwind()
}

/// A future whose polls are timed: the guest runs inside `poll` (wasmtime runs it on a fiber
/// polled by this future) and never blocks in it (waiting is a `Pending`), so the time spent
/// in its polls is the CPU time the call's instance used (instantiation, guest code and the
/// host functions it called), whichever worker thread polled it. Timed with the monotonic
/// clock (vDSO, tens of nanoseconds): the thread CPU-time clock is a system call, which cost
/// about 7 % of a call. The two differ only while the OS has the thread preempted mid-poll.
struct CpuTimed<F> {
    inner: std::pin::Pin<Box<F>>,
    meter: Arc<Meter>,
}

impl<F> CpuTimed<F> {
    fn new(meter: Arc<Meter>, inner: F) -> Self {
        CpuTimed {
            inner: Box::pin(inner),
            meter,
        }
    }
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let before = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        let spent = before.elapsed().as_nanos() as u64;
        self.meter.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

/// Map the guest task's failure, if any, to a call error.
fn classify<T>(guest: std::thread::Result<wasmtime::Result<T>>, refused: bool, timeout: Duration) -> Option<CallError> {
    let e = match guest {
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Some(CallError::Trap(format!("the call failed in the host: panic {what}")));
        }
    };
    if e.downcast_ref::<DeadlineReached>().is_some() {
        return Some(CallError::Timeout(timeout));
    }
    // The pool ran out of one kind of slot (memories, tables, core instances) before the
    // engine's instance slots: components with many of them at once. The engine is full, as
    // when no slot is free; the function did nothing wrong.
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return Some(CallError::OverCapacity(timeout));
    }
    let message = format!("{e:?}");
    if refused {
        return Some(CallError::OutOfMemory(message));
    }
    Some(CallError::Trap(message))
}

fn build_request(call: &HttpCall) -> Result<http::Request<Full<Bytes>>, String> {
    let method = http::Method::from_bytes(call.method.as_bytes()).map_err(|e| format!("request method: {e}"))?;
    // The URI from its parts: no `http://localhost…` string to format and parse again.
    let uri = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority("localhost")
        .path_and_query(call.path_with_query.as_str())
        .build()
        .map_err(|e| format!("request path: {e}"))?;
    let mut headers = http::HeaderMap::with_capacity(call.headers.len() + 1);
    for (k, v) in &call.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("request header {k:?}: {e}"))?;
        let value = http::HeaderValue::from_str(v).map_err(|e| format!("request header {k:?}: {e}"))?;
        headers.append(name, value);
    }
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
    }
    let mut request = http::Request::new(Full::new(call.body.clone()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_holds_over_all_of_an_instances_memories() {
        let meter = Arc::new(Meter::default());
        let mut l = MemoryLimiter {
            memory_bytes: 100,
            total: 0,
            meter: Arc::clone(&meter),
        };
        // The first memory's creation, then a second memory that would pass the limit
        // together with it (each alone is under it).
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(!l.memory_growing(0, 60, None).unwrap());
        assert!(meter.refused.load(Ordering::Relaxed));
        // A second that fits, and the first growing to the limit exactly: both together.
        assert!(l.memory_growing(0, 30, None).unwrap());
        assert!(l.memory_growing(60, 70, None).unwrap());
        assert!(!l.memory_growing(70, 71, None).unwrap());
        assert_eq!(meter.peak.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_call_may_hold_one_host_resource_per_256_kib_of_its_memory_limit() {
        assert_eq!(max_resources(0), 256);
        assert_eq!(max_resources(64 << 20), 256);
        assert_eq!(max_resources(128 << 20), 512);
        assert_eq!(max_resources(1 << 30), 4096);
        assert_eq!(max_resources(64 << 30), 16_384);
        // What the caps let a call make the host hold stays under half its memory limit.
        for memory in [64u64 << 20, 256 << 20, 4 << 30] {
            let r = max_resources(memory) as u64;
            let fields = r * FIELDS_MAX_BYTES as u64;
            let bodies = r / 3 * 2 * BODY_CHUNK_BYTES as u64;
            assert!(fields + bodies < memory / 2, "{memory}: {fields} + {bodies}");
        }
    }
}
