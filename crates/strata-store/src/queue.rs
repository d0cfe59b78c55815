//! The durable queue of asynchronous calls: pending calls (with their bodies), results kept
//! for a retention period, the dead-letter list per function, and cron bookkeeping.
//!
//! Every change goes through the group-committing writer; an enqueue is acknowledged only
//! once its batch is fsync'd. The in-memory scheduling lives in the orchestrator; this file
//! is only what must survive a crash.

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db::{Ack, Result, Store, decode, encode};

/// seq → AsyncCall (JSON, without body).
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("async_pending");
/// seq → request body.
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("async_bodies");
/// call id → seq of the newest pending call with that id (a caller may reuse an id).
const PENDING_IDS: TableDefinition<&str, u64> = TableDefinition::new("async_pending_ids");
/// call id → CallResult (JSON).
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("async_results");
/// (function, seq) → AsyncCall with its errors (JSON).
const DLQ: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("async_dlq");
/// (function, trigger index) → last tick fired, ms since the epoch.
const CRON: TableDefinition<(&str, u32), u64> = TableDefinition::new("cron_last_fired");

/// The queue's tables inside one batch transaction.
pub struct QueueTables<'t> {
    pending: Table<'t, u64, &'static [u8]>,
    bodies: Table<'t, u64, &'static [u8]>,
    ids: Table<'t, &'static str, u64>,
    results: Table<'t, &'static str, &'static [u8]>,
    dlq: Table<'t, (&'static str, u64), &'static [u8]>,
    cron: Table<'t, (&'static str, u32), u64>,
}

impl<'t> QueueTables<'t> {
    pub(crate) fn open(tx: &'t WriteTransaction) -> Result<Self> {
        Ok(QueueTables {
            pending: tx.open_table(PENDING)?,
            bodies: tx.open_table(BODIES)?,
            ids: tx.open_table(PENDING_IDS)?,
            results: tx.open_table(RESULTS)?,
            dlq: tx.open_table(DLQ)?,
            cron: tx.open_table(CRON)?,
        })
    }
}

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(PENDING)?;
    tx.open_table(BODIES)?;
    tx.open_table(PENDING_IDS)?;
    tx.open_table(RESULTS)?;
    tx.open_table(DLQ)?;
    tx.open_table(CRON)?;
    Ok(())
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it ended.
    pub at_ms: u64,
    /// HTTP status the call got.
    pub status: u16,
    /// Error code or handler message.
    pub error: String,
}

/// An accepted asynchronous call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncCall {
    /// Queue position, unique.
    pub seq: u64,
    /// Call id (X-Call-Id).
    pub call_id: String,
    /// Function.
    pub function: String,
    /// HTTP method.
    pub method: String,
    /// Path after the function name.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// Request headers (lowercase names).
    pub headers: Vec<(String, String)>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// First retry delay, ms (doubled each time, with jitter).
    pub backoff_ms: u64,
    /// Not to be run before this time (ms since the epoch).
    pub not_before_ms: u64,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// When it was accepted.
    pub enqueued_at_ms: u64,
    /// Every failed attempt.
    pub errors: Vec<AttemptError>,
    /// What produced it: "http", "topic:NAME", "cron", "event".
    pub source: String,
}

/// Where an asynchronous call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Waiting (or waiting for a retry).
    Queued,
    /// Completed with a non-failing status.
    Succeeded,
    /// Every attempt failed; in the dead-letter list.
    Dead,
}

/// What is known of an asynchronous call: its state, its result once finished, the pending
/// call while queued.
pub type CallLookup = (CallState, Option<CallResult>, Option<AsyncCall>);

/// The outcome of an asynchronous call, kept for the retention period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    /// Call id.
    pub call_id: String,
    /// Function.
    pub function: String,
    /// State.
    pub state: CallState,
    /// The function's HTTP status (last attempt).
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// Attempts made.
    pub attempts: u32,
    /// Failed attempts.
    pub errors: Vec<AttemptError>,
    /// Accepted at.
    pub enqueued_at_ms: u64,
    /// Finished at.
    pub completed_at_ms: u64,
    /// Duration of the last attempt, ms.
    pub duration_ms: f64,
    /// Callback URL, if any.
    pub callback_url: Option<String>,
    /// Whether the callback was delivered.
    pub callback_delivered: bool,
}

/// Remove `function`'s cron marks (a deleted function's: a new one of the same name with a
/// schedule would otherwise fire a "missed" tick of the old one at once).
pub(crate) fn remove_cron_marks(tx: &redb::WriteTransaction, function: &str) -> Result<()> {
    let mut cron = tx.open_table(CRON)?;
    let marks: Vec<u32> = cron
        .range((function, 0)..=(function, u32::MAX))?
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<std::result::Result<_, _>>()?;
    for index in marks {
        cron.remove((function, index))?;
    }
    Ok(())
}

impl Store {
    /// Durably add calls (with their bodies); `ack` hears once they are on disk.
    pub fn enqueue(&self, calls: Vec<(AsyncCall, Vec<u8>)>, ack: Ack) {
        self.enqueue_replacing(calls, None, ack);
    }

    /// As [`Store::enqueue`], and in the same commit remove `replaced`'s dead letters (a
    /// function and sequence numbers) with their bodies: a replay's new calls and the removal
    /// of what they replay are one change, so a crash between them cannot leave both (the
    /// dead letters would be replayed again).
    pub fn enqueue_replacing(&self, calls: Vec<(AsyncCall, Vec<u8>)>, replaced: Option<(String, Vec<u64>)>, ack: Ack) {
        self.submit(
            Box::new(move |t| {
                if let Some((f, seqs)) = &replaced {
                    for s in seqs {
                        t.dlq.remove((f.as_str(), *s))?;
                        t.bodies.remove(*s)?;
                    }
                }
                for (c, body) in &calls {
                    t.pending.insert(c.seq, encode(c).as_slice())?;
                    t.bodies.insert(c.seq, body.as_slice())?;
                    t.ids.insert(c.call_id.as_str(), c.seq)?;
                    if c.source.starts_with("replay:") {
                        // A replayed dead letter keeps its id; its old result no longer stands.
                        t.results.remove(c.call_id.as_str())?;
                    }
                }
                Ok(())
            }),
            Some(ack),
        );
    }

    /// Record a failed attempt that will be retried.
    pub fn requeue(&self, call: &AsyncCall) {
        let c = call.clone();
        self.submit(
            Box::new(move |t| {
                t.pending.insert(c.seq, encode(&c).as_slice())?;
                Ok(())
            }),
            None,
        );
    }

    /// A call finished (succeeded, or dead): drop it from the queue, keep its result, and for
    /// a dead one put it in the dead-letter list.
    pub fn finish(&self, call: &AsyncCall, result: CallResult) {
        let c = call.clone();
        self.submit(
            Box::new(move |t| {
                t.pending.remove(c.seq)?;
                // A caller may send the same call id again while this call is queued; the id
                // then maps to the newer call, which is still pending and keeps it.
                let own = t.ids.get(c.call_id.as_str())?.is_some_and(|v| v.value() == c.seq);
                if own {
                    t.ids.remove(c.call_id.as_str())?;
                }
                if result.state == CallState::Dead {
                    // The body stays for a replay.
                    t.dlq.insert((c.function.as_str(), c.seq), encode(&c).as_slice())?;
                } else {
                    t.bodies.remove(c.seq)?;
                }
                t.results.insert(c.call_id.as_str(), encode(&result).as_slice())?;
                Ok(())
            }),
            None,
        );
    }

    /// Update a stored result (callback delivery).
    pub fn put_result(&self, result: CallResult) {
        self.submit(
            Box::new(move |t| {
                t.results.insert(result.call_id.as_str(), encode(&result).as_slice())?;
                Ok(())
            }),
            None,
        );
    }

    /// Every pending call, in queue order (for the scheduler at start-up).
    pub fn pending_calls(&self) -> Result<Vec<AsyncCall>> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            // One entry that does not decode (damaged on disk, or from an incompatible
            // version) is reported and left where it is: it must not keep the daemon, and
            // every other accepted call, from starting.
            match decode(&format!("async call {}", k.value()), v.value()) {
                Ok(c) => out.push(c),
                Err(e) => {
                    tracing::error!(seq = k.value(), error = %e, "a queued async call does not decode; left in the store, not run")
                }
            }
        }
        Ok(out)
    }

    /// The body of a pending call.
    pub fn call_body(&self, seq: u64) -> Result<Vec<u8>> {
        let tx = self.inner.db.begin_read()?;
        Ok(tx
            .open_table(BODIES)?
            .get(seq)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// The highest sequence number ever used (pending or dead).
    pub fn max_call_seq(&self) -> Result<u64> {
        let tx = self.inner.db.begin_read()?;
        let p = tx.open_table(PENDING)?.last()?.map_or(0, |(k, _)| k.value());
        let mut d = 0;
        for e in tx.open_table(DLQ)?.iter()? {
            d = d.max(e?.0.value().1);
        }
        Ok(p.max(d))
    }

    /// An asynchronous call by id: the pending call while one with that id is queued,
    /// otherwise its result.
    pub fn async_call(&self, call_id: &str) -> Result<Option<CallLookup>> {
        let tx = self.inner.db.begin_read()?;
        // Pending first: when an id is reused, the result stored is an older call's, and the
        // newest call is the one the caller asks about.
        let seq = tx.open_table(PENDING_IDS)?.get(call_id)?.map(|v| v.value());
        let call = match seq {
            Some(seq) => tx
                .open_table(PENDING)?
                .get(seq)?
                .map(|v| decode::<AsyncCall>(call_id, v.value()))
                .transpose()?,
            None => None,
        };
        if call.is_some() {
            return Ok(Some((CallState::Queued, None, call)));
        }
        if let Some(v) = tx.open_table(RESULTS)?.get(call_id)? {
            let r: CallResult = decode(call_id, v.value())?;
            return Ok(Some((r.state, Some(r), None)));
        }
        Ok(seq.map(|_| (CallState::Queued, None, None)))
    }

    /// The dead-letter list of a function.
    pub fn dead_letters(&self, function: &str) -> Result<Vec<AsyncCall>> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(DLQ)?;
        let mut out = Vec::new();
        for e in t.range((function, 0)..=(function, u64::MAX))? {
            let (_, v) = e?;
            out.push(decode(function, v.value())?);
        }
        Ok(out)
    }

    /// Forget results finished before `cutoff_ms`.
    pub fn expire_results(&self, cutoff_ms: u64) {
        self.submit(
            Box::new(move |t| {
                t.results.retain(|_, v| {
                    serde_json::from_slice::<CallResult>(v).is_ok_and(|r| r.completed_at_ms >= cutoff_ms)
                })?;
                Ok(())
            }),
            None,
        );
    }

    /// When a cron trigger last fired.
    pub fn cron_last(&self, function: &str, index: u32) -> Result<Option<u64>> {
        let tx = self.inner.db.begin_read()?;
        Ok(tx.open_table(CRON)?.get((function, index))?.map(|v| v.value()))
    }

    /// Enqueue a cron tick and record it as fired, in one durable step: a tick is either both
    /// enqueued and marked, or neither.
    pub fn fire_cron(&self, index: u32, tick_ms: u64, call: AsyncCall, ack: Ack) {
        self.submit(
            Box::new(move |t| {
                let already = t
                    .cron
                    .get((call.function.as_str(), index))?
                    .is_some_and(|v| v.value() >= tick_ms);
                if already {
                    return Ok(());
                }
                t.cron.insert((call.function.as_str(), index), tick_ms)?;
                t.pending.insert(call.seq, encode(&call).as_slice())?;
                t.bodies.insert(call.seq, [].as_slice())?;
                t.ids.insert(call.call_id.as_str(), call.seq)?;
                Ok(())
            }),
            Some(ack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn call(seq: u64) -> AsyncCall {
        AsyncCall {
            seq,
            call_id: format!("c{seq}"),
            function: "f".into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            attempts: 0,
            max_attempts: 3,
            backoff_ms: 100,
            not_before_ms: 0,
            callback_url: None,
            enqueued_at_ms: 1,
            errors: vec![],
            source: "http".into(),
        }
    }

    fn result(c: &AsyncCall, state: CallState) -> CallResult {
        CallResult {
            call_id: c.call_id.clone(),
            function: c.function.clone(),
            state,
            status: 200,
            headers: vec![],
            body: format!("ok {}", c.seq).into_bytes(),
            attempts: c.attempts,
            errors: vec![],
            enqueued_at_ms: 1,
            completed_at_ms: 5,
            duration_ms: 1.0,
            callback_url: None,
            callback_delivered: false,
        }
    }

    /// Calls 1 and 2 of `f`, bodies "one" and "two", on disk.
    fn enqueue_two(s: &Store) {
        wait(s, |ack| {
            s.enqueue(vec![(call(1), b"one".to_vec()), (call(2), b"two".to_vec())], ack)
        })
        .unwrap();
    }

    fn wait(store: &Store, f: impl FnOnce(Ack)) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        f(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        let _ = store;
        rx.recv().unwrap()
    }

    #[test]
    fn a_queued_call_that_does_not_decode_does_not_keep_the_others_from_starting() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            enqueue_two(&s);
            // Call 1's entry damaged on disk.
            let tx = s.inner.db.begin_write().unwrap();
            tx.open_table(PENDING).unwrap().insert(1, &b"{not json"[..]).unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let p = s.pending_calls().unwrap();
        assert_eq!(p.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn acknowledged_calls_survive_reopen_and_finish_moves_them() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            enqueue_two(&s);
        }
        let s = Store::open(d.path()).unwrap();
        let p = s.pending_calls().unwrap();
        assert_eq!(p.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.call_body(2).unwrap(), b"two");
        assert_eq!(s.max_call_seq().unwrap(), 2);
        assert_eq!(s.async_call("c1").unwrap().unwrap().0, CallState::Queued);
        let mut dead = call(2);
        dead.attempts = 3;
        s.finish(&call(1), result(&call(1), CallState::Succeeded));
        s.finish(&dead, result(&dead, CallState::Dead));
        s.flush();
        assert!(s.pending_calls().unwrap().is_empty());
        assert_eq!(s.async_call("c1").unwrap().unwrap().0, CallState::Succeeded);
        assert_eq!(s.dead_letters("f").unwrap()[0].attempts, 3);
        assert_eq!(s.max_call_seq().unwrap(), 2, "dead letters keep their sequence numbers");
        s.expire_results(10);
        s.flush();
        assert!(s.async_call("c1").unwrap().is_none());
    }

    #[test]
    fn a_replay_enqueues_and_removes_its_dead_letters_in_one_commit() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        enqueue_two(&s);
        for seq in [1, 2] {
            let mut dead = call(seq);
            dead.attempts = 3;
            s.finish(&dead, result(&dead, CallState::Dead));
        }
        s.flush();
        assert_eq!(s.dead_letters("f").unwrap().len(), 2);
        // Call 1 replayed as call 5: in the same commit its dead letter and body go.
        let mut again = call(5);
        again.call_id = "c1".into();
        wait(&s, |ack| {
            s.enqueue_replacing(vec![(again, b"one".to_vec())], Some(("f".into(), vec![1])), ack)
        })
        .unwrap();
        let left: Vec<u64> = s.dead_letters("f").unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(left, [2]);
        assert!(s.call_body(1).unwrap().is_empty());
        assert_eq!(s.call_body(5).unwrap(), b"one");
        assert_eq!(s.call_body(2).unwrap(), b"two", "the other dead letter keeps its body");
        assert_eq!(
            s.pending_calls().unwrap().iter().map(|c| c.seq).collect::<Vec<_>>(),
            [5]
        );
    }

    #[test]
    fn deleting_a_function_removes_its_cron_marks_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for name in ["f", "g"] {
            let spec = strata_types::Manifest::parse(
                "strata.toml",
                &format!("name = \"{name}\"\nruntime = \"python\"\nhandler = \"main:handle\""),
            )
            .unwrap()
            .spec;
            s.activate_new(&format!("{name}1"), &spec).unwrap();
        }
        let mut other = call(2);
        other.function = "g".into();
        wait(&s, |ack| s.fire_cron(0, 1000, call(1), ack)).unwrap();
        wait(&s, |ack| s.fire_cron(3, 2000, call(3), ack)).unwrap();
        wait(&s, |ack| s.fire_cron(0, 1000, other, ack)).unwrap();
        s.delete("f").unwrap();
        assert_eq!(s.cron_last("f", 0).unwrap(), None);
        assert_eq!(s.cron_last("f", 3).unwrap(), None);
        assert_eq!(s.cron_last("g", 0).unwrap(), Some(1000));
    }

    #[test]
    fn a_cron_tick_is_enqueued_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        wait(&s, |ack| s.fire_cron(0, 1000, call(1), ack)).unwrap();
        wait(&s, |ack| s.fire_cron(0, 1000, call(2), ack)).unwrap();
        assert_eq!(s.pending_calls().unwrap().len(), 1);
        assert_eq!(s.cron_last("f", 0).unwrap(), Some(1000));
    }

    #[test]
    fn a_reused_call_id_reads_as_its_newest_call() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let with_id = |seq| AsyncCall {
            call_id: "same".into(),
            ..call(seq)
        };
        let status = |s: &Store| {
            let (state, result, pending) = s.async_call("same").unwrap().expect("the id is known");
            (state, result.map(|r| r.body), pending.map(|c| c.seq))
        };
        // Two calls with the id pending; the older finishes first.
        wait(&s, |ack| s.enqueue(vec![(with_id(1), vec![])], ack)).unwrap();
        wait(&s, |ack| s.enqueue(vec![(with_id(2), vec![])], ack)).unwrap();
        s.finish(&with_id(1), result(&with_id(1), CallState::Succeeded));
        s.flush();
        assert_eq!(
            status(&s),
            (CallState::Queued, None, Some(2)),
            "the newest call is still queued"
        );
        s.finish(&with_id(2), result(&with_id(2), CallState::Succeeded));
        s.flush();
        assert_eq!(status(&s), (CallState::Succeeded, Some(b"ok 2".to_vec()), None));
        // The id used again after its calls finished: queued again, not the old result.
        wait(&s, |ack| s.enqueue(vec![(with_id(3), vec![])], ack)).unwrap();
        assert_eq!(status(&s), (CallState::Queued, None, Some(3)));
        s.finish(&with_id(3), result(&with_id(3), CallState::Dead));
        s.flush();
        assert_eq!(status(&s), (CallState::Dead, Some(b"ok 3".to_vec()), None));
    }
}
