//! Asynchronous invocations: accepted only once durably stored, run by a bounded set of
//! workers through the same instance path as synchronous calls, retried with exponential
//! backoff and jitter, dead-lettered after `max_attempts`, results kept and POSTed to a
//! callback URL.
//!
//! Delivery is at-least-once: a call leaves the durable queue only after it finished, so a
//! crash in between runs it again. Handlers see `X-Call-Id` and `X-Strata-Attempt`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_instance::Request;
use strata_store::{AsyncCall, AttemptError, CallResult, CallState, Store, now_ms};
use strata_types::ErrorCode;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::{Error, Orchestrator};

/// Bodies up to this size stay in memory with the queued call; larger ones are read back
/// from the store when the call runs.
const INLINE_BODY: usize = 64 << 10;
/// Retry delays are capped here: longer waits belong to the dead-letter list.
const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;
/// Results are kept this long, then forgotten.
const RESULT_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Callback delivery attempts.
const CALLBACK_ATTEMPTS: u32 = 5;

/// Why a call was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// No such function.
    #[error("function {0} not found")]
    NotFound(String),
    /// The function's queue is at its bound.
    #[error("the queue of {function} holds {depth} calls, its limit")]
    Full {
        /// Function.
        function: String,
        /// Its depth.
        depth: usize,
    },
    /// The store could not make it durable.
    #[error("storing the call failed: {0}")]
    Store(String),
}

impl QueueError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueError::NotFound(_) => ErrorCode::FunctionNotFound,
            QueueError::Full { .. } => ErrorCode::OverCapacity,
            QueueError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// A call to accept: everything but the queue position.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// Call id.
    pub call_id: String,
    /// Function.
    pub function: String,
    /// Method.
    pub method: String,
    /// Path after the function name.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Callback URL.
    pub callback_url: Option<String>,
    /// Origin ("http", "topic:NAME", "cron", "event").
    pub source: String,
}

struct Queued {
    call: AsyncCall,
    body: Option<Bytes>,
}

#[derive(Default)]
struct State {
    due: BinaryHeap<Reverse<(u64, u64)>>,
    calls: HashMap<u64, Queued>,
    depth: HashMap<String, usize>,
    retries: HashMap<String, u64>,
    dead: HashMap<String, u64>,
    /// Calls running per function.
    running: HashMap<String, usize>,
    /// Due calls held back because their function runs as many as its instances can take.
    parked: HashMap<String, std::collections::VecDeque<u64>>,
}

/// Per-function queue figures for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Calls accepted and not finished.
    pub depth: u64,
    /// Age of the oldest of them, ms.
    pub oldest_age_ms: u64,
    /// Retries scheduled since start.
    pub retries: u64,
    /// Calls dead-lettered since start.
    pub dead_letters: u64,
}

/// The asynchronous invocation queue.
pub struct AsyncQueue {
    orch: Arc<Orchestrator>,
    store: Store,
    state: Mutex<State>,
    wake: Notify,
    workers: Arc<Semaphore>,
    next_seq: AtomicU64,
    depth_limit: usize,
    /// Held by a replay of dead letters.
    replaying: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue").finish_non_exhaustive()
    }
}

/// Delay before retry `attempt` (1-based count of failures so far): `base · 2^(attempt-1)`,
/// ±25 % jitter, capped.
pub fn backoff_ms(base: u64, attempt: u32, jitter: f64) -> u64 {
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    ((exp as f64 * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))) as u64).min(MAX_BACKOFF_MS)
}

impl AsyncQueue {
    /// Load the durable queue and start the workers (`workers` calls at once).
    pub fn start(orch: Arc<Orchestrator>, workers: usize, depth_limit: usize) -> Result<Arc<Self>, QueueError> {
        let store = orch.context().store.clone();
        let pending = store.pending_calls().map_err(|e| QueueError::Store(e.to_string()))?;
        let max = store.max_call_seq().map_err(|e| QueueError::Store(e.to_string()))?;
        let mut st = State::default();
        for call in pending {
            st.due.push(Reverse((call.not_before_ms, call.seq)));
            *st.depth.entry(call.function.clone()).or_default() += 1;
            st.calls.insert(call.seq, Queued { call, body: None });
        }
        let restored = st.calls.len();
        if restored > 0 {
            tracing::info!(restored, "asynchronous calls restored from the durable queue");
        }
        let q = Arc::new(AsyncQueue {
            orch,
            store,
            state: Mutex::new(st),
            wake: Notify::new(),
            workers: Arc::new(Semaphore::new(workers.max(1))),
            next_seq: AtomicU64::new(max + 1),
            depth_limit,
            replaying: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
        });
        tokio::spawn(Arc::clone(&q).dispatch());
        tokio::spawn(Arc::clone(&q).expire());
        Ok(q)
    }

    /// Make calls durable and schedule them, all or none. Returns once they are on disk.
    pub async fn accept(self: &Arc<Self>, calls: Vec<NewCall>) -> Result<Vec<String>, QueueError> {
        self.accept_replacing(calls, None).await
    }

    /// [`AsyncQueue::accept`], removing `replaced`'s dead letters in the same commit.
    async fn accept_replacing(
        self: &Arc<Self>,
        calls: Vec<NewCall>,
        replaced: Option<(String, Vec<u64>)>,
    ) -> Result<Vec<String>, QueueError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        for c in &calls {
            if !self.orch.has(&c.function) {
                return Err(QueueError::NotFound(c.function.clone()));
            }
        }
        let now = now_ms();
        let (tx, rx) = oneshot::channel();
        let ids: Vec<String> = calls.iter().map(|c| c.call_id.clone()).collect();
        let (durable, seqs) = {
            let mut st = self.state.lock().expect("queue lock");
            // Bound check for every function first, so a publish is refused whole.
            let mut add: HashMap<&str, usize> = HashMap::new();
            for c in &calls {
                *add.entry(c.function.as_str()).or_default() += 1;
            }
            for (f, n) in &add {
                let depth = st.depth.get(*f).copied().unwrap_or(0);
                if depth + n > self.depth_limit {
                    return Err(QueueError::Full {
                        function: (*f).to_owned(),
                        depth,
                    });
                }
            }
            let mut durable = Vec::with_capacity(calls.len());
            let mut seqs = Vec::with_capacity(calls.len());
            for c in calls {
                let (call, body) = self.make_call(c, now);
                durable.push((call.clone(), body.to_vec()));
                *st.depth.entry(call.function.clone()).or_default() += 1;
                seqs.push(call.seq);
                let body = (body.len() <= INLINE_BODY).then_some(body);
                st.calls.insert(call.seq, Queued { call, body });
            }
            (durable, seqs)
        };
        // The calls are scheduled by the commit's acknowledgement, on the writer's thread, not
        // by this task (which a client that goes away drops): no worker starts one before it
        // is durable (a body over INLINE_BODY is read back from the store; one read before the
        // commit was empty), and the calls of a commit that failed, whose caller hears 500,
        // are dropped instead of run. Submitted after the queue's lock is released: a store
        // that cannot take the change acknowledges on this thread, and `settle` takes the lock.
        let q = Arc::clone(self);
        self.store.enqueue_replacing(
            durable,
            replaced,
            Box::new(move |r| {
                q.settle(&seqs, r.is_ok());
                let _ = tx.send(r);
            }),
        );
        match rx.await {
            Ok(Ok(())) => Ok(ids),
            Ok(Err(e)) => Err(QueueError::Store(e)),
            Err(_) => Err(QueueError::Store("the store writer stopped".into())),
        }
    }

    fn make_call(&self, c: NewCall, now: u64) -> (AsyncCall, Bytes) {
        let spec = self.orch.spec(&c.function);
        let (max_attempts, backoff_ms) = spec.map_or((3, 1000), |s| (s.max_attempts, s.retry_backoff_ms));
        let call = AsyncCall {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            call_id: c.call_id,
            function: c.function,
            method: c.method,
            path: c.path,
            query: c.query,
            headers: c.headers,
            attempts: 0,
            max_attempts,
            backoff_ms,
            not_before_ms: 0,
            callback_url: c.callback_url,
            enqueued_at_ms: now,
            errors: Vec::new(),
            source: c.source,
        };
        (call, c.body)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Durably mark a cron tick fired and enqueue its call, once per tick (a tick already
    /// marked is skipped), then schedule it.
    pub(crate) async fn enqueue_cron(&self, index: u32, tick_ms: u64, call: NewCall) -> Result<(), String> {
        let function = call.function.clone();
        if self
            .store
            .cron_last(&function, index)
            .map_err(|e| e.to_string())?
            .is_some_and(|l| l >= tick_ms)
        {
            return Ok(());
        }
        let (call, _) = self.make_call(call, now_ms());
        let (tx, rx) = oneshot::channel();
        self.store.fire_cron(
            index,
            tick_ms,
            call.clone(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| "the store writer stopped".to_owned())??;
        {
            let mut st = self.state.lock().expect("queue lock");
            *st.depth.entry(call.function.clone()).or_default() += 1;
            st.due.push(Reverse((0, call.seq)));
            st.calls.insert(
                call.seq,
                Queued {
                    call,
                    body: Some(Bytes::new()),
                },
            );
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Re-enqueue a function's dead letters with fresh attempts. Returns how many.
    pub async fn replay(self: &Arc<Self>, function: &str) -> Result<usize, QueueError> {
        // One replay at a time: two at once read the same dead letters and enqueued them twice.
        let _one = self.replaying.lock().await;
        let mut dead = self
            .store
            .dead_letters(function)
            .map_err(|e| QueueError::Store(e.to_string()))?;
        if dead.is_empty() {
            return Ok(0);
        }
        // As many as the function's queue has room for (all or none refused a function with
        // more dead letters than its depth for good); the rest stay for the next replay.
        let depth = self
            .state
            .lock()
            .expect("queue lock")
            .depth
            .get(function)
            .copied()
            .unwrap_or(0);
        let room = self.depth_limit.saturating_sub(depth);
        if room == 0 {
            return Err(QueueError::Full {
                function: function.to_owned(),
                depth,
            });
        }
        dead.truncate(room);
        let seqs: Vec<u64> = dead.iter().map(|c| c.seq).collect();
        let mut calls = Vec::new();
        for c in &dead {
            let body = self
                .store
                .call_body(c.seq)
                .map_err(|e| QueueError::Store(e.to_string()))?;
            calls.push(NewCall {
                call_id: c.call_id.clone(),
                function: c.function.clone(),
                method: c.method.clone(),
                path: c.path.clone(),
                query: c.query.clone(),
                headers: c.headers.clone(),
                body: body.into(),
                callback_url: c.callback_url.clone(),
                source: format!("replay:{}", c.source),
            });
        }
        let n = calls.len();
        // The new calls and the removal of the dead letters they replay in one commit.
        self.accept_replacing(calls, Some((function.to_owned(), seqs))).await?;
        Ok(n)
    }

    /// Figures per function.
    pub fn stats(&self) -> HashMap<String, QueueStats> {
        let st = self.state.lock().expect("queue lock");
        let now = now_ms();
        let mut out: HashMap<String, QueueStats> = HashMap::new();
        for q in st.calls.values() {
            let s = out.entry(q.call.function.clone()).or_default();
            s.depth += 1;
            s.oldest_age_ms = s.oldest_age_ms.max(now.saturating_sub(q.call.enqueued_at_ms));
        }
        for (f, n) in &st.retries {
            out.entry(f.clone()).or_default().retries = *n;
        }
        for (f, n) in &st.dead {
            out.entry(f.clone()).or_default().dead_letters = *n;
        }
        out
    }

    /// Queued calls of a function, oldest first.
    pub fn queued(&self, function: &str) -> Vec<AsyncCall> {
        let st = self.state.lock().expect("queue lock");
        let mut v: Vec<AsyncCall> = st
            .calls
            .values()
            .filter(|q| q.call.function == function)
            .map(|q| q.call.clone())
            .collect();
        v.sort_by_key(|c| c.seq);
        v
    }

    /// Wait for a worker slot, then for the next due call; run it; repeat.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let Ok(permit) = Arc::clone(&self.workers).acquire_owned().await else {
                return;
            };
            let seq = loop {
                let wait = {
                    let mut st = self.state.lock().expect("queue lock");
                    let now = now_ms();
                    match st.due.peek().copied() {
                        Some(Reverse((due, seq))) if due <= now => {
                            st.due.pop();
                            let Some(function) = st.calls.get(&seq).map(|q| q.call.function.clone()) else {
                                continue;
                            };
                            // A worker only goes to a function with room: a slow or saturated
                            // function must not hold every worker while others' calls wait.
                            let cap = self.capacity(&function);
                            let running = st.running.entry(function.clone()).or_default();
                            if *running >= cap {
                                st.parked.entry(function).or_default().push_back(seq);
                                continue;
                            }
                            *running += 1;
                            break seq;
                        }
                        Some(Reverse((due, _))) => Duration::from_millis(due - now),
                        None => Duration::from_secs(3600),
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            };
            let q = Arc::clone(&self);
            tokio::spawn(async move {
                let function = q
                    .state
                    .lock()
                    .expect("queue lock")
                    .calls
                    .get(&seq)
                    .map(|c| c.call.function.clone());
                // Released however the run ends: a panic in it must not leave the function
                // one running call short of its capacity for good (its later calls parked).
                let _running = function.map(|f| Running {
                    queue: Arc::clone(&q),
                    function: f,
                    seq,
                });
                q.run(seq).await;
                drop(permit);
            });
        }
    }

    async fn run(self: &Arc<Self>, seq: u64) {
        let (mut call, body) = {
            let st = self.state.lock().expect("queue lock");
            let Some(q) = st.calls.get(&seq) else { return };
            (q.call.clone(), q.body.clone())
        };
        let body = match body {
            Some(b) => b,
            None => match self.store.call_body(seq) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    // Never run with an empty body in place of the one accepted.
                    tracing::error!(call = %call.call_id, error = %e, "reading an async call's body failed; trying again");
                    self.reschedule(call, 1000);
                    return;
                }
            },
        };
        let attempt = call.attempts + 1;
        let mut headers = call.headers.clone();
        headers.retain(|(k, _)| k != "x-call-id" && k != "x-strata-attempt");
        headers.push(("x-call-id".into(), call.call_id.clone()));
        headers.push(("x-strata-attempt".into(), attempt.to_string()));
        let req = Request {
            id: call.call_id.clone(),
            method: call.method.clone(),
            path: call.path.clone(),
            query: call.query.clone(),
            headers,
            body,
        };
        let t0 = std::time::Instant::now();
        let outcome = self.orch.invoke(&call.function, req).await;
        let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (status, failure, resp) = match outcome.result {
            Ok(r) if r.status < 500 => (r.status, None, Some(r)),
            Ok(r) => {
                let msg = String::from_utf8_lossy(&r.body[..r.body.len().min(512)]).into_owned();
                (r.status, Some(format!("status {}: {msg}", r.status)), Some(r))
            }
            Err(Error::OverCapacity) | Err(Error::Draining) | Err(Error::ShuttingDown) => {
                // Not the function's fault: try again soon without spending an attempt (while
                // the daemon stops, the call stays pending for the next start).
                self.reschedule(call, 200);
                return;
            }
            // An instance the daemon's stop killed at the end of its grace: the stop's doing,
            // not the function's; the call stays pending for the next start, its attempts as
            // they were.
            Err(_) if self.orch.is_stopping() => {
                self.reschedule(call, 200);
                return;
            }
            Err(e) => (e.code().status(), Some(format!("{}: {e}", e.code())), None),
        };
        call.attempts = attempt;
        let not_found = matches!(status, 404) && !self.orch.has(&call.function);
        let state = match &failure {
            None => CallState::Succeeded,
            Some(err) => {
                call.errors.push(AttemptError {
                    attempt,
                    at_ms: now_ms(),
                    status,
                    error: err.clone(),
                });
                if call.attempts < call.max_attempts && !not_found {
                    let delay = backoff_ms(call.backoff_ms, call.attempts, rand::random::<f64>());
                    self.state
                        .lock()
                        .expect("queue lock")
                        .retries
                        .entry(call.function.clone())
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    tracing::debug!(call = %call.call_id, attempt, delay, "async call failed; retrying");
                    self.reschedule(call, delay);
                    return;
                }
                CallState::Dead
            }
        };
        let result = CallResult {
            call_id: call.call_id.clone(),
            function: call.function.clone(),
            state,
            status,
            headers: resp.as_ref().map(|r| r.headers.clone()).unwrap_or_default(),
            body: resp.as_ref().map(|r| r.body.to_vec()).unwrap_or_default(),
            attempts: call.attempts,
            errors: call.errors.clone(),
            enqueued_at_ms: call.enqueued_at_ms,
            completed_at_ms: now_ms(),
            duration_ms,
            callback_url: call.callback_url.clone(),
            callback_delivered: false,
        };
        self.store.finish(&call, result.clone());
        {
            let mut st = self.state.lock().expect("queue lock");
            st.calls.remove(&seq);
            if let Some(d) = st.depth.get_mut(&call.function) {
                *d = d.saturating_sub(1);
            }
            if state == CallState::Dead {
                *st.dead.entry(call.function.clone()).or_default() += 1;
            }
        }
        if let Some(url) = call.callback_url.clone() {
            let q = Arc::clone(self);
            tokio::spawn(async move { q.callback(url, result).await });
        }
    }

    /// Calls of `function` that may run at once: what its instances can take.
    /// Calls whose enqueue just committed go on the due heap; those whose commit failed are
    /// forgotten. Runs on the store writer's thread (or the caller's, when the store cannot
    /// take the change): it must not panic (a poisoned lock is taken anyway), and the queue's
    /// lock is never held while waiting on the writer or submitting to it.
    fn settle(&self, seqs: &[u64], committed: bool) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for &seq in seqs {
                if committed {
                    st.due.push(Reverse((0, seq)));
                } else if let Some(q) = st.calls.remove(&seq)
                    && let Some(d) = st.depth.get_mut(&q.call.function)
                {
                    *d = d.saturating_sub(1);
                }
            }
        }
        if committed {
            self.wake.notify_one();
        }
    }

    fn capacity(&self, function: &str) -> usize {
        self.orch
            .spec(function)
            .map_or(1, |s| (s.max_instances as usize * s.concurrency as usize).max(1))
    }

    /// One call of `function` stopped running: let a parked one go. After a panic in its run,
    /// `unfinished` (the call is still queued, on no heap): it is put back, due in a second.
    fn stopped_running(&self, function: &str, unfinished: Option<u64>) {
        if let Some(seq) = unfinished {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.calls.contains_key(&seq) {
                st.due.push(Reverse((now_ms() + 1000, seq)));
            }
        }
        self.done_running(function);
    }

    /// One call of `function` stopped running: let a parked one go.
    fn done_running(&self, function: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = st.running.get_mut(function) {
            *n = n.saturating_sub(1);
        }
        let next = st.parked.get_mut(function).and_then(|p| p.pop_front());
        if let Some(seq) = next {
            st.due.push(Reverse((0, seq)));
            drop(st);
            self.wake.notify_one();
        }
    }

    fn reschedule(&self, mut call: AsyncCall, delay_ms: u64) {
        call.not_before_ms = now_ms() + delay_ms;
        self.store.requeue(&call);
        let mut st = self.state.lock().expect("queue lock");
        st.due.push(Reverse((call.not_before_ms, call.seq)));
        if let Some(q) = st.calls.get_mut(&call.seq) {
            q.call = call;
        }
        drop(st);
        self.wake.notify_one();
    }

    async fn callback(&self, url: String, mut result: CallResult) {
        for attempt in 0..CALLBACK_ATTEMPTS {
            let mut req = self
                .http
                .post(&url)
                .header("x-call-id", &result.call_id)
                .header("x-function-name", &result.function)
                .header("x-function-status", result.status.to_string())
                .header(
                    "x-call-state",
                    serde_json::to_value(result.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                )
                .header("x-duration-seconds", format!("{:.6}", result.duration_ms / 1000.0))
                .header("x-attempts", result.attempts.to_string());
            if let Some((_, ct)) = result
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", ct);
            }
            match req.body(result.body.clone()).send().await {
                Ok(r) if r.status().is_success() => {
                    result.callback_delivered = true;
                    self.store.put_result(result);
                    return;
                }
                Ok(r) => tracing::debug!(%url, status = %r.status(), attempt, "callback refused"),
                Err(e) => tracing::debug!(%url, error = %e, attempt, "callback failed"),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        tracing::warn!(%url, call = %result.call_id, "callback not delivered");
    }

    async fn expire(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            self.store.expire_results(now_ms().saturating_sub(RESULT_RETENTION_MS));
        }
    }
}

/// A call a worker runs, counted in its function's running calls until dropped.
struct Running {
    queue: Arc<AsyncQueue>,
    function: String,
    seq: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        if panicked {
            tracing::error!(seq = self.seq, function = %self.function, "running an async call panicked; it runs again in a second");
        }
        self.queue.stopped_running(&self.function, panicked.then_some(self.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_a_cap() {
        assert_eq!(backoff_ms(1000, 1, 0.5), 1000);
        assert_eq!(backoff_ms(1000, 2, 0.5), 2000);
        assert_eq!(backoff_ms(1000, 3, 0.0), 3000);
        assert_eq!(backoff_ms(1000, 3, 1.0), 5000);
        assert_eq!(backoff_ms(1000, 40, 0.5), 300_000);
    }
}
