//! The registry, records and logs in redb.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use strata_types::{FunctionSpec, InvocationRecord, LogLine, LogStream};

use crate::blobs::{Blobs, PackageError};
use crate::chunks::{self, LOG_CHUNKS, RECORD_CHUNKS};
use crate::now_ms;

/// name → FunctionMeta (JSON).
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// (name, version) → FunctionSpec (JSON).
const VERSIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("versions");
/// (name, seq) → InvocationRecord (JSON): the layout before chunks, migrated at open.
const OLD_RECORDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("records");
/// call id → (name, seq).
const CALLS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("calls");
/// (name, seq) → LogLine (JSON): the layout before chunks, migrated at open.
const OLD_LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// A stored value that does not decode (written by another version of Strata?).
    #[error("stored value for {key} does not decode: {source}")]
    Decode {
        /// Which entry.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Code storage.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The filesystem.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// No such function.
    #[error("function {0} not found")]
    FunctionNotFound(String),
    /// A stored chunk of records or log lines is cut short.
    #[error("stored {0} is damaged")]
    Damaged(String),
    /// No such version.
    #[error("function {name} has no version {version}")]
    VersionNotFound {
        /// Function.
        name: String,
        /// Version asked for.
        version: String,
    },
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Content hash prefix.
    pub version: String,
    /// When it was first deployed.
    pub created_at_ms: u64,
}

/// A function in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionMeta {
    /// Name.
    pub name: String,
    /// The version that serves calls.
    pub active: String,
    /// The version active before the last change (rollback target).
    pub previous: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<VersionMeta>,
    /// First deploy.
    pub created_at_ms: u64,
}

enum Write {
    Record(Box<InvocationRecord>),
    Log {
        function: String,
        call_id: Option<String>,
        stream: LogStream,
        line: String,
        ts_ms: u64,
    },
    Flush(mpsc::SyncSender<()>),
    /// Records or logs are waiting in the side queue.
    Kick,
    /// Any change, run inside the next batch's transaction; `ack` hears once it is durable.
    Op(Op, Option<Ack>),
}

/// A change applied inside a batch transaction.
pub(crate) type Op = Box<dyn for<'t> FnOnce(&mut crate::queue::QueueTables<'t>) -> Result<()> + Send>;
/// Told whether the batch holding an op committed.
pub type Ack = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The embedded store. Cheap to clone; the last clone dropped flushes and closes it.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Arc<Database>,
    blobs: Blobs,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    /// Records and logs wait here rather than in the channel: a producer only wakes the writer
    /// when the queue was empty, so under load a call costs a push, not a wake-up.
    side: Arc<Mutex<Vec<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises registry changes (deploy, rollback, delete).
    registry: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last batch; joining it releases its
        // handle on the database, so the file can be opened again right away.
        drop(self.writes.lock().map(|mut w| w.take()));
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.into(),
        source,
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data structs always serialise")
}

/// How many invocation records and log lines the store keeps per function: the newest ones.
/// Older ones are removed as new ones come in (in steps of [`Retention::STEP`]), so a busy
/// function does not fill the disk (each call writes about 1 KB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records kept per function.
    pub records: u64,
    /// Log lines kept per function.
    pub logs: u64,
}

impl Retention {
    /// Removal runs when a function's sequence number reaches a multiple of this: small
    /// enough that one removal (decoding each record for its call id) is a short piece of
    /// the writer's work, not a pause of milliseconds under load.
    pub const STEP: u64 = 256;
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            records: 100_000,
            logs: 100_000,
        }
    }
}

impl Store {
    /// Open (or create) the store under `data_dir`, keeping the default number of records and
    /// log lines per function.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, Retention::default())
    }

    /// Open (or create) the store under `data_dir`, keeping what `retention` says.
    pub fn open_with(data_dir: &Path, retention: Retention) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let db = Arc::new(Database::create(data_dir.join("state.redb"))?);
        {
            let tx = db.begin_write()?;
            tx.open_table(FUNCTIONS)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(RECORD_CHUNKS)?;
            tx.open_table(CALLS)?;
            tx.open_table(LOG_CHUNKS)?;
            migrate(&tx)?;
            crate::queue::create_tables(&tx)?;
            tx.commit()?;
        }
        let blobs = Blobs::open(&data_dir.join("blobs"))?;
        let (writes, rx) = mpsc::channel();
        let side: Arc<Mutex<Vec<Write>>> = Arc::default();
        let writer_side = Arc::clone(&side);
        let writer_db = Arc::clone(&db);
        let handle = std::thread::Builder::new()
            .name("strata-store-writer".into())
            .spawn(move || writer(writer_db, rx, writer_side, retention))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                blobs,
                writes: Mutex::new(Some(writes)),
                side,
                writer: Mutex::new(Some(handle)),
                registry: Mutex::new(()),
            }),
        })
    }

    /// Queue a change for the next group commit; `ack` hears when it is durable.
    pub(crate) fn submit(&self, op: Op, ack: Option<Ack>) {
        let guard = self.inner.writes.lock().expect("writer lock");
        let rejected = match guard.as_ref() {
            Some(tx) => tx.send(Write::Op(op, ack)).err().map(|e| e.0),
            None => Some(Write::Op(op, ack)),
        };
        if let Some(Write::Op(_, Some(ack))) = rejected {
            ack(Err("the store is closed".into()));
        }
    }

    fn send(&self, w: Write) -> bool {
        self.inner
            .writes
            .lock()
            .expect("writer lock")
            .as_ref()
            .is_some_and(|s| s.send(w).is_ok())
    }

    /// Code storage.
    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    /// Register `spec` as version `version` of its function and make it active.
    /// Returns whether the version is new.
    pub fn activate_new(&self, version: &str, spec: &FunctionSpec) -> Result<bool> {
        let _g = self.inner.registry.lock().expect("registry lock");
        let tx = self.inner.db.begin_write()?;
        let created;
        {
            let mut versions = tx.open_table(VERSIONS)?;
            let mut functions = tx.open_table(FUNCTIONS)?;
            let existing = functions
                .get(spec.name.as_str())?
                .map(|v| decode::<FunctionMeta>(&spec.name, v.value()))
                .transpose()?;
            let now = now_ms();
            let mut meta = existing.unwrap_or_else(|| FunctionMeta {
                name: spec.name.clone(),
                active: version.into(),
                previous: None,
                versions: Vec::new(),
                created_at_ms: now,
            });
            created = !meta.versions.iter().any(|v| v.version == version);
            if created {
                meta.versions.push(VersionMeta {
                    version: version.into(),
                    created_at_ms: now,
                });
                versions.insert((spec.name.as_str(), version), encode(spec).as_slice())?;
            }
            if meta.active != version {
                meta.previous = Some(std::mem::replace(&mut meta.active, version.into()));
            }
            functions.insert(spec.name.as_str(), encode(&meta).as_slice())?;
        }
        tx.commit()?;
        Ok(created)
    }

    /// A function's registry entry.
    pub fn function(&self, name: &str) -> Result<FunctionMeta> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(FUNCTIONS)?;
        match t.get(name)? {
            Some(v) => decode(name, v.value()),
            None => Err(StoreError::FunctionNotFound(name.into())),
        }
    }

    /// Every function, by name.
    pub fn functions(&self) -> Result<Vec<FunctionMeta>> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(FUNCTIONS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The spec of one version.
    pub fn spec(&self, name: &str, version: &str) -> Result<FunctionSpec> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(VERSIONS)?;
        match t.get((name, version))? {
            Some(v) => decode(&format!("{name}@{version}"), v.value()),
            None => Err(StoreError::VersionNotFound {
                name: name.into(),
                version: version.into(),
            }),
        }
    }

    /// Make an existing version active: `to`, or the previously active one.
    pub fn rollback(&self, name: &str, to: Option<&str>) -> Result<FunctionMeta> {
        let _g = self.inner.registry.lock().expect("registry lock");
        let tx = self.inner.db.begin_write()?;
        let meta = {
            let mut functions = tx.open_table(FUNCTIONS)?;
            let mut meta: FunctionMeta = match functions.get(name)? {
                Some(v) => decode(name, v.value())?,
                None => return Err(StoreError::FunctionNotFound(name.into())),
            };
            let target = match to {
                Some(v) => v.to_owned(),
                None => match meta.previous.clone() {
                    Some(p) => p,
                    None => {
                        // No previous: the version deployed before the active one.
                        let i = meta.versions.iter().position(|v| v.version == meta.active).unwrap_or(0);
                        match i.checked_sub(1).and_then(|j| meta.versions.get(j)) {
                            Some(v) => v.version.clone(),
                            None => {
                                return Err(StoreError::VersionNotFound {
                                    name: name.into(),
                                    version: "(previous)".into(),
                                });
                            }
                        }
                    }
                },
            };
            if !meta.versions.iter().any(|v| v.version == target) {
                return Err(StoreError::VersionNotFound {
                    name: name.into(),
                    version: target,
                });
            }
            if meta.active != target {
                meta.previous = Some(std::mem::replace(&mut meta.active, target));
            }
            functions.insert(name, encode(&meta).as_slice())?;
            meta
        };
        tx.commit()?;
        Ok(meta)
    }

    /// Remove a function, its versions, records and logs.
    pub fn delete(&self, name: &str) -> Result<FunctionMeta> {
        self.flush();
        let _g = self.inner.registry.lock().expect("registry lock");
        let tx = self.inner.db.begin_write()?;
        let meta = {
            let mut functions = tx.open_table(FUNCTIONS)?;
            let meta: FunctionMeta = match functions.remove(name)? {
                Some(v) => decode(name, v.value())?,
                None => return Err(StoreError::FunctionNotFound(name.into())),
            };
            let mut versions = tx.open_table(VERSIONS)?;
            for v in &meta.versions {
                versions.remove((name, v.version.as_str()))?;
            }
            let mut records = tx.open_table(RECORD_CHUNKS)?;
            let mut calls = tx.open_table(CALLS)?;
            remove_records(&mut records, &mut calls, name, u64::MAX)?;
            remove_lines(&mut tx.open_table(LOG_CHUNKS)?, name, u64::MAX)?;
            crate::queue::remove_cron_marks(&tx, name)?;
            meta
        };
        tx.commit()?;
        // Code of versions no other function shares (names differ, so none does).
        for v in &meta.versions {
            self.inner.blobs.remove(&v.version);
        }
        Ok(meta)
    }

    /// Queue an invocation record for writing.
    pub fn record(&self, r: InvocationRecord) {
        self.push(Write::Record(Box::new(r)));
    }

    fn push(&self, w: Write) {
        let first = {
            let mut side = self.inner.side.lock().expect("side queue lock");
            side.push(w);
            side.len() == 1
        };
        if first {
            self.send(Write::Kick);
        }
    }

    /// Queue a log line for writing.
    pub fn log(&self, function: &str, call_id: Option<&str>, stream: LogStream, line: String) {
        self.push(Write::Log {
            function: function.into(),
            call_id: call_id.map(str::to_owned),
            stream,
            line,
            ts_ms: now_ms(),
        });
    }

    /// Wait until everything queued so far is durably written.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.send(Write::Flush(tx)) {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// The newest `limit` records of a function, newest first.
    pub fn records(&self, name: &str, limit: usize) -> Result<Vec<InvocationRecord>> {
        let tx = self.inner.db.begin_read()?;
        newest(&tx.open_table(RECORD_CHUNKS)?, name, limit)
    }

    /// One record by call id.
    pub fn call(&self, call_id: &str) -> Result<Option<InvocationRecord>> {
        let tx = self.inner.db.begin_read()?;
        let calls = tx.open_table(CALLS)?;
        let Some(at) = calls.get(call_id)? else { return Ok(None) };
        let (name, seq) = at.value();
        let records = tx.open_table(RECORD_CHUNKS)?;
        let Some(chunk) = records.range((name, 0)..=(name, seq))?.next_back().transpose()? else {
            return Ok(None);
        };
        let first = chunk.0.value().1;
        let all = chunks::entries(name, first, chunk.1.value())?;
        match all.get((seq - first) as usize) {
            // The index and the chunk agree, or the record is not there.
            Some(v) => Ok(Some(decode::<InvocationRecord>(call_id, v)?).filter(|r| r.call_id == call_id)),
            None => Ok(None),
        }
    }

    /// Log lines of a function with `seq >= since`, oldest first, at most `limit`.
    pub fn logs(&self, name: &str, since: u64, limit: usize) -> Result<Vec<LogLine>> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(LOG_CHUNKS)?;
        // The chunk holding `since` starts at or before it.
        let from = match t.range((name, 0)..=(name, since))?.next_back().transpose()? {
            Some((k, _)) => k.value().1,
            None => since,
        };
        let mut out = Vec::new();
        for entry in t.range((name, from)..=(name, u64::MAX))? {
            let (k, v) = entry?;
            let first = k.value().1;
            for (i, e) in chunks::entries(name, first, v.value())?.into_iter().enumerate() {
                if out.len() == limit {
                    return Ok(out);
                }
                if first + i as u64 >= since {
                    out.push(decode(name, e)?);
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` log lines (for `logs` without `since`).
    pub fn tail(&self, name: &str, limit: usize) -> Result<Vec<LogLine>> {
        let tx = self.inner.db.begin_read()?;
        let mut out: Vec<LogLine> = newest(&tx.open_table(LOG_CHUNKS)?, name, limit)?;
        out.reverse();
        Ok(out)
    }
}

/// The newest `limit` entries of `name` in a chunk table, newest first.
fn newest<T: for<'de> Deserialize<'de>>(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
    limit: usize,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for entry in table.range((name, 0)..=(name, u64::MAX))?.rev() {
        let (k, v) = entry?;
        for e in chunks::entries(name, k.value().1, v.value())?.into_iter().rev() {
            out.push(decode(name, e)?);
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Move records and log lines stored one per entry (before chunks) into chunks, in the
/// transaction that opens the store; then drop the old tables. A function that has chunks
/// already (a Strata from before chunks ran on this store after one with them) gets its old
/// entries numbered after those, its call ids pointed at their new numbers.
fn migrate(tx: &redb::WriteTransaction) -> Result<()> {
    use redb::TableHandle as _;
    let names: Vec<String> = tx.list_tables()?.map(|t| t.name().to_owned()).collect();
    for (old, new, is_log) in [(OLD_RECORDS, RECORD_CHUNKS, false), (OLD_LOGS, LOG_CHUNKS, true)] {
        if !names.iter().any(|n| n == old.name()) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut moved = 0u64;
        {
            let from = tx.open_table(old)?;
            let mut to = tx.open_table(new)?;
            let mut calls = tx.open_table(CALLS)?;
            // One function at a time (the old keys are ordered by function): one open chunk.
            let mut open: HashMap<String, chunks::Open> = HashMap::new();
            // The function being moved, and the number its next old entry gets when it has
            // chunks already (`None`: it has none, the old numbers stay, as its call ids say).
            let mut current: Option<(String, Option<u64>)> = None;
            for entry in from.iter()? {
                let (k, v) = entry?;
                let (name, old_seq) = k.value();
                if current.as_ref().is_none_or(|(n, _)| n != name) {
                    for (n, c) in open.drain() {
                        to.insert((n.as_str(), c.first), c.bytes.as_slice())?;
                    }
                    let next = chunks::next_seq(&to, name)?;
                    current = Some((name.to_owned(), (next > 1).then_some(next)));
                }
                let (seq, value) = match current.as_mut().and_then(|(_, next)| next.as_mut()) {
                    None => (old_seq, v.value().to_vec()),
                    Some(next) => {
                        let seq = *next;
                        *next += 1;
                        (seq, renumbered(is_log, &mut calls, name, seq, v.value())?)
                    }
                };
                append(&mut open, &mut to, name, seq, &value)?;
                moved += 1;
            }
            for (n, c) in open.drain() {
                to.insert((n.as_str(), c.first), c.bytes.as_slice())?;
            }
        }
        tx.delete_table(old)?;
        tracing::info!(table = old.name(), moved, took = ?started.elapsed(), "moved into chunks");
    }
    Ok(())
}

/// A stored record's call id, the one field removal and renumbering need (the rest of the
/// record is skipped, not built).
#[derive(Deserialize)]
struct CallId {
    call_id: String,
}

/// An old entry given sequence number `seq`: a log line's own `seq` field rewritten, a
/// record's call id pointed at it.
fn renumbered(
    is_log: bool,
    calls: &mut redb::Table<&'static str, (&'static str, u64)>,
    name: &str,
    seq: u64,
    value: &[u8],
) -> Result<Vec<u8>> {
    if is_log {
        let mut l: LogLine = decode(name, value)?;
        l.seq = seq;
        return Ok(encode(&l));
    }
    if let Ok(CallId { call_id }) = serde_json::from_slice::<CallId>(value) {
        calls.insert(call_id.as_str(), (name, seq))?;
    }
    Ok(value.to_vec())
}

/// Add entry `seq` of `name` to its open chunk, or store that chunk and open another when the
/// entry does not follow it or it is full.
fn append(
    open: &mut HashMap<String, chunks::Open>,
    table: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    name: &str,
    seq: u64,
    entry: &[u8],
) -> Result<()> {
    if let Some(c) = open.get_mut(name) {
        if c.first + c.n == seq && c.n < chunks::CHUNK_MAX && c.bytes.len() < chunks::CHUNK_BYTES {
            chunks::push(&mut c.bytes, entry)?;
            c.n += 1;
            return Ok(());
        }
        table.insert((name, c.first), c.bytes.as_slice())?;
        c.first = seq;
        c.n = 1;
        c.bytes.clear();
        chunks::push(&mut c.bytes, entry)?;
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(4096);
    chunks::push(&mut bytes, entry)?;
    open.insert(
        name.to_owned(),
        chunks::Open {
            first: seq,
            n: 1,
            bytes,
        },
    );
    Ok(())
}

/// The batch writer (group commit): take everything queued right now (up to 4096 items),
/// commit it in one durable transaction, then acknowledge. While one commit's fsync runs,
/// the next batch piles up, so batches grow with load and latency stays one fsync.
fn writer(db: Arc<Database>, rx: mpsc::Receiver<Write>, side: Arc<Mutex<Vec<Write>>>, retention: Retention) {
    let mut next_seq = Seqs::default();
    let mut last_durable = std::time::Instant::now();
    let mut last_commit = last_durable;
    // Lazily committed (not yet fsync'd) records or logs exist.
    let mut dirty = false;
    loop {
        let wait = if dirty {
            LAZY_DURABILITY
        } else {
            Duration::from_secs(3600)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(w) => w,
            Err(e) => {
                if dirty && write_batch(&db, &mut next_seq, retention, true, &mut []).is_ok() {
                    dirty = false;
                    last_durable = std::time::Instant::now();
                }
                match e {
                    mpsc::RecvTimeoutError::Timeout => continue,
                    mpsc::RecvTimeoutError::Disconnected => return,
                }
            }
        };
        let mut batch = vec![first];
        // Records and logs alone wait until LAZY_BATCH_INTERVAL after the last commit, so under
        // load they are committed a few hundred times a second in large batches instead of once
        // per call (a redb commit costs far more than an insert); an op or a flush ends the wait.
        // At a low rate the interval has passed already and nothing waits.
        if matches!(batch[0], Write::Kick) {
            let due = last_commit + LAZY_BATCH_INTERVAL;
            while let Some(left) = due.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(w) => {
                        let urgent = !matches!(w, Write::Kick);
                        batch.push(w);
                        if urgent {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Everything in the side queue was pushed before the messages just taken were sent or
        // has its own kick still in the channel; take it all.
        batch.append(&mut side.lock().expect("side queue lock"));
        let durable = batch.iter().any(|w| matches!(w, Write::Op(..) | Write::Flush(_)))
            || last_durable.elapsed() >= LAZY_DURABILITY;
        let outcome = write_batch(&db, &mut next_seq, retention, durable, &mut batch).map_err(|e| e.to_string());
        last_commit = std::time::Instant::now();
        match &outcome {
            Err(e) => tracing::error!(error = %e, dropped = batch.len(), "writing a batch failed"),
            Ok(()) if durable => {
                dirty = false;
                last_durable = std::time::Instant::now();
            }
            Ok(()) => dirty = true,
        }
        for w in batch {
            match w {
                Write::Flush(done) => {
                    let _ = done.send(());
                }
                Write::Op(_, Some(ack)) => ack(outcome.clone()),
                _ => {}
            }
        }
    }
}

/// The next sequence number of `name` in `table` (kept in `next` after the first lookup).
fn seq_for(
    next: &mut HashMap<String, u64>,
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
) -> Result<u64> {
    if let Some(n) = next.get_mut(name) {
        *n += 1;
        return Ok(*n);
    }
    let n = chunks::next_seq(table, name)?;
    next.insert(name.to_owned(), n);
    Ok(n)
}

/// The shortest time between two commits of records and logs alone.
const LAZY_BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Records and logs alone are committed without an fsync, at most this long: a crash loses at
/// most this much of them, and the invocation hot path does not pay a disk flush per batch.
const LAZY_DURABILITY: Duration = Duration::from_millis(500);

/// After writing sequence number `seq`, with `keep` kept: the last sequence number to remove,
/// once every [`Retention::STEP`] numbers.
fn expired(seq: u64, keep: u64) -> Option<u64> {
    (seq.is_multiple_of(Retention::STEP) && seq > keep).then(|| seq - keep)
}

/// Remove function `name`'s records up to sequence number `upto`, and their call-id entries.
fn remove_records(
    records: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    calls: &mut redb::Table<&'static str, (&'static str, u64)>,
    name: &str,
    upto: u64,
) -> Result<()> {
    // Whole chunks go with one `remove` each; redb's `retain_in` would copy the pages it
    // deletes from instead of changing them in place (it was half the writer's time once
    // retention ran, `cargo bench -p strata-store --bench records`).
    chunks::remove_upto(records, name, upto, |seq, v| {
        let Ok(CallId { call_id }) = serde_json::from_slice::<CallId>(v) else {
            return Ok(());
        };
        let taken = calls.remove(call_id.as_str())?.map(|at| {
            let (f, s) = at.value();
            (f.to_owned(), s)
        });
        // A call id a caller reused points at the newer record: that entry stays.
        if let Some((f, s)) = taken
            && (f.as_str(), s) != (name, seq)
        {
            calls.insert(call_id.as_str(), (f.as_str(), s))?;
        }
        Ok(())
    })
}

/// Remove function `name`'s log lines up to sequence number `upto`.
fn remove_lines(logs: &mut redb::Table<(&'static str, u64), &'static [u8]>, name: &str, upto: u64) -> Result<()> {
    chunks::remove_upto(logs, name, upto, |_, _| Ok(()))
}

/// The sequence numbers the writer hands out, per function: records' and log lines'.
#[derive(Default)]
struct Seqs {
    records: HashMap<String, u64>,
    logs: HashMap<String, u64>,
}

fn write_batch(db: &Database, next: &mut Seqs, retention: Retention, durable: bool, batch: &mut [Write]) -> Result<()> {
    let mut tx = db.begin_write()?;
    if !durable {
        tx.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::Db(redb::Error::from(e)))?;
    }
    {
        let mut records = tx.open_table(RECORD_CHUNKS)?;
        let mut calls = tx.open_table(CALLS)?;
        let mut logs = tx.open_table(LOG_CHUNKS)?;
        // The queue's tables, opened once per batch: opening a table per change would cost
        // more than the change.
        let mut queue = crate::queue::QueueTables::open(&tx)?;
        // This batch's chunks, per function, and how far retention removes afterwards.
        let mut open_records: HashMap<String, chunks::Open> = HashMap::new();
        let mut open_logs: HashMap<String, chunks::Open> = HashMap::new();
        let mut expire_records: HashMap<String, u64> = HashMap::new();
        let mut expire_logs: HashMap<String, u64> = HashMap::new();
        for w in batch.iter_mut() {
            match w {
                Write::Record(r) => {
                    let seq = seq_for(&mut next.records, &records, &r.function)?;
                    append(&mut open_records, &mut records, &r.function, seq, &encode(r))?;
                    calls.insert(r.call_id.as_str(), (r.function.as_str(), seq))?;
                    if let Some(upto) = expired(seq, retention.records) {
                        expire_records.insert(r.function.clone(), upto);
                    }
                }
                Write::Log {
                    function,
                    call_id,
                    stream,
                    line,
                    ts_ms,
                } => {
                    let seq = seq_for(&mut next.logs, &logs, function)?;
                    let l = LogLine {
                        seq,
                        ts_ms: *ts_ms,
                        call_id: call_id.take(),
                        stream: *stream,
                        line: std::mem::take(line),
                    };
                    append(&mut open_logs, &mut logs, function, seq, &encode(&l))?;
                    if let Some(upto) = expired(seq, retention.logs) {
                        expire_logs.insert(function.clone(), upto);
                    }
                }
                Write::Flush(_) | Write::Kick => {}
                Write::Op(op, _) => {
                    // Take the op out, leaving a no-op so the ack stays with its entry.
                    let op = std::mem::replace(op, Box::new(|_| Ok(())));
                    op(&mut queue)?;
                }
            }
        }
        for (name, c) in &open_records {
            records.insert((name.as_str(), c.first), c.bytes.as_slice())?;
        }
        for (name, c) in &open_logs {
            logs.insert((name.as_str(), c.first), c.bytes.as_slice())?;
        }
        // Sequence numbers only grow, so the batch's last limit covers the ones before it.
        for (name, upto) in expire_records {
            remove_records(&mut records, &mut calls, &name, upto)?;
        }
        for (name, upto) in expire_logs {
            remove_lines(&mut logs, &name, upto)?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::Manifest;

    fn spec(name: &str) -> FunctionSpec {
        Manifest::parse(
            "t",
            &format!("name='{name}'\nruntime='python'\nhandler='main:handle'\n"),
        )
        .unwrap()
        .spec
    }

    fn record(name: &str, id: &str) -> InvocationRecord {
        InvocationRecord {
            call_id: id.into(),
            function: name.into(),
            version: "v1".into(),
            started_at_ms: 1,
            duration_ms: 1.0,
            cold: false,
            cold_start: None,
            status: 200,
            error: None,
            cpu_ms: 0.5,
            memory_peak_bytes: 10,
            instance: None,
        }
    }

    #[test]
    fn versions_activate_roll_back_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            assert!(s.activate_new("aaa", &spec("f")).unwrap());
            assert!(s.activate_new("bbb", &spec("f")).unwrap());
            assert!(
                !s.activate_new("aaa", &spec("f")).unwrap(),
                "same content again is not new"
            );
            assert_eq!(s.function("f").unwrap().active, "aaa");
            assert_eq!(s.rollback("f", None).unwrap().active, "bbb");
            assert_eq!(s.rollback("f", Some("aaa")).unwrap().active, "aaa");
            assert!(matches!(
                s.rollback("f", Some("zzz")),
                Err(StoreError::VersionNotFound { .. })
            ));
            s.record(record("f", "c1"));
            s.log("f", Some("c1"), LogStream::Stdout, "hello".into());
            s.flush();
        }
        let s = Store::open(d.path()).unwrap();
        let m = s.function("f").unwrap();
        assert_eq!(m.versions.len(), 2);
        assert_eq!(s.spec("f", "bbb").unwrap().name, "f");
        assert_eq!(s.call("c1").unwrap().unwrap().call_id, "c1");
        let logs = s.logs("f", 0, 10).unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].line, "hello");
        s.log("f", None, LogStream::Stderr, "again".into());
        s.flush();
        assert_eq!(s.logs("f", 0, 10).unwrap()[1].seq, 2, "sequence continues after reopen");
    }

    #[test]
    fn delete_removes_everything_of_the_function_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.activate_new("a1", &spec("a")).unwrap();
        s.activate_new("b1", &spec("b")).unwrap();
        s.record(record("a", "ca"));
        s.record(record("b", "cb"));
        s.log("a", None, LogStream::Stdout, "x".into());
        s.flush();
        s.delete("a").unwrap();
        assert!(matches!(s.function("a"), Err(StoreError::FunctionNotFound(_))));
        assert!(s.call("ca").unwrap().is_none());
        assert!(s.logs("a", 0, 10).unwrap().is_empty());
        assert!(s.call("cb").unwrap().is_some());
        assert_eq!(s.functions().unwrap().len(), 1);
    }

    #[test]
    fn records_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for i in 0..5 {
            s.record(record("f", &format!("c{i}")));
        }
        s.flush();
        let r = s.records("f", 2).unwrap();
        assert_eq!(
            r.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(),
            vec!["c4", "c3"]
        );
    }

    #[test]
    fn every_entry_is_found_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        // Batches of odd sizes and one larger than a chunk, two functions interleaved.
        let n = 3 * chunks::CHUNK_MAX + 17;
        for i in 1..=n {
            s.record(record("f", &format!("f{i}")));
            s.log("f", Some(&format!("f{i}")), LogStream::Stdout, format!("line {i}"));
            if i % 3 == 0 {
                s.record(record("g", &format!("g{i}")));
            }
            if i % 37 == 0 || i == 2 * chunks::CHUNK_MAX + 40 {
                s.flush();
            }
        }
        s.flush();
        for i in [1, 37, 38, chunks::CHUNK_MAX, chunks::CHUNK_MAX + 1, n] {
            let r = s
                .call(&format!("f{i}"))
                .unwrap()
                .expect("every record is found by its id");
            assert_eq!(r.call_id, format!("f{i}"));
        }
        assert_eq!(s.call("g99").unwrap().unwrap().function, "g");
        let all = s.records("f", usize::MAX).unwrap();
        assert_eq!(all.len() as u64, n);
        assert!(all.windows(2).all(|w| w[0].call_id != w[1].call_id));
        assert_eq!(s.records("f", 3).unwrap()[2].call_id, format!("f{}", n - 2));
        for since in [1, 36, 37, 38, chunks::CHUNK_MAX + 1, n] {
            let l = s.logs("f", since, 5).unwrap();
            assert_eq!(l[0].seq, since);
            assert_eq!(l[0].line, format!("line {since}"));
            assert!(l.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        }
        assert!(s.logs("f", n + 1, 5).unwrap().is_empty());
        let tail = s.tail("f", 3).unwrap();
        assert_eq!(tail.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![n - 2, n - 1, n]);
    }

    /// Records `old{seq}` of function `f`, their call ids and log lines `old line {seq}`, one
    /// redb entry each: the layout before chunks.
    fn write_old_layout(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        let db = Database::create(dir.join("state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut records = tx.open_table(OLD_RECORDS).unwrap();
            let mut calls = tx.open_table(CALLS).unwrap();
            let mut logs = tx.open_table(OLD_LOGS).unwrap();
            for seq in seqs {
                let id = format!("old{seq}");
                records
                    .insert(("f", seq), encode(&record("f", &id)).as_slice())
                    .unwrap();
                calls.insert(id.as_str(), ("f", seq)).unwrap();
                let line = LogLine {
                    seq,
                    ts_ms: 1,
                    call_id: Some(id.clone()),
                    stream: LogStream::Stdout,
                    line: format!("old line {seq}"),
                };
                logs.insert(("f", seq), encode(&line).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    #[test]
    fn records_and_logs_stored_one_per_entry_are_moved_into_chunks_at_open() {
        let d = tempfile::tempdir().unwrap();
        // The layout before chunks, as an older Strata left it.
        write_old_layout(d.path(), 5..=300);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.call("old5").unwrap().unwrap().call_id, "old5");
        assert_eq!(s.call("old300").unwrap().unwrap().call_id, "old300");
        assert_eq!(s.records("f", usize::MAX).unwrap().len(), 296);
        assert_eq!(s.logs("f", 290, 100).unwrap().len(), 11);
        s.record(record("f", "new"));
        s.log("f", None, LogStream::Stdout, "new line".into());
        s.flush();
        assert_eq!(s.records("f", 1).unwrap()[0].call_id, "new");
        let last = s.tail("f", 1).unwrap();
        assert_eq!(
            (last[0].seq, last[0].line.as_str()),
            (301, "new line"),
            "numbering continues"
        );
        drop(s);
        let db = Database::create(d.path().join("state.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(OLD_RECORDS).is_err(), "the old tables are gone");
        assert!(tx.open_table(OLD_LOGS).is_err());
    }

    #[test]
    fn old_entries_written_after_chunks_are_numbered_after_them() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            for i in 1..=3 {
                s.record(record("f", &format!("new{i}")));
                s.log("f", None, LogStream::Stdout, format!("new line {i}"));
            }
            s.flush();
        }
        // A Strata from before chunks ran on this store: it numbered from 1 again.
        write_old_layout(d.path(), 1..=2);
        let s = Store::open(d.path()).unwrap();
        let ids: Vec<String> = s.records("f", 10).unwrap().into_iter().map(|r| r.call_id).collect();
        assert_eq!(ids, ["old2", "old1", "new3", "new2", "new1"]);
        for id in ["new1", "new3", "old1", "old2"] {
            assert_eq!(s.call(id).unwrap().unwrap().call_id, id);
        }
        let lines: Vec<(u64, String)> = s
            .logs("f", 0, 10)
            .unwrap()
            .into_iter()
            .map(|l| (l.seq, l.line))
            .collect();
        assert_eq!(lines[3], (4, "old line 1".to_owned()));
        assert_eq!(lines[4], (5, "old line 2".to_owned()));
        s.record(record("f", "after"));
        s.flush();
        assert_eq!(s.records("f", 1).unwrap()[0].call_id, "after");
        assert_eq!(s.records("f", 10).unwrap().len(), 6);
    }

    #[test]
    fn a_damaged_chunk_does_not_stop_the_writer() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.record(record("f", "a"));
            s.record(record("f", "b"));
            s.flush();
        }
        {
            let db = Database::create(d.path().join("state.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(RECORD_CHUNKS).unwrap();
                let cut = t.get(("f", 1)).unwrap().unwrap().value()[..10].to_vec();
                t.insert(("f", 1), cut.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        s.record(record("f", "c"));
        s.record(record("g", "d"));
        s.flush();
        assert_eq!(s.call("c").unwrap().unwrap().call_id, "c", "the writer went on");
        assert_eq!(s.call("d").unwrap().unwrap().call_id, "d");
        let e = s.records("f", 10).unwrap_err().to_string();
        assert!(e.contains("chunk (f, 1)") && e.contains("damaged"), "{e}");
        assert!(
            s.call("a").is_err(),
            "a record in the damaged chunk is an error, not another record"
        );
        // Deleting the function removes the damaged chunk with the rest.
        s.activate_new("v", &spec("f")).unwrap();
        s.delete("f").unwrap();
        assert!(s.records("f", 10).unwrap().is_empty());
    }

    #[test]
    fn only_the_newest_records_and_log_lines_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let keep = Retention {
            records: 2 * Retention::STEP,
            logs: Retention::STEP,
        };
        let s = Store::open_with(d.path(), keep).unwrap();
        let n = 4 * Retention::STEP + 10;
        for i in 1..=n {
            s.record(record("busy", &format!("c{i}")));
            s.log("busy", Some(&format!("c{i}")), LogStream::Stdout, format!("line {i}"));
            if i % 500 == 0 {
                s.flush(); // several batches, as under a steady load
            }
        }
        s.record(record("quiet", "q1"));
        s.flush();
        let records = s.records("busy", usize::MAX).unwrap();
        // At the last step (seq 4 x STEP) everything up to 2 x STEP went: 2 x STEP + 10 are left.
        assert_eq!(records.len() as u64, keep.records + 10);
        assert_eq!(records.last().unwrap().call_id, format!("c{}", 2 * Retention::STEP + 1));
        assert_eq!(records[0].call_id, format!("c{n}"));
        assert!(s.call("c1").unwrap().is_none(), "a removed record's call id goes too");
        assert!(s.call(&format!("c{}", 2 * Retention::STEP)).unwrap().is_none());
        assert!(s.call(&format!("c{}", 2 * Retention::STEP + 1)).unwrap().is_some());
        let logs = s.logs("busy", 0, usize::MAX).unwrap();
        assert_eq!(logs.len() as u64, keep.logs + 10);
        assert_eq!(logs[0].line, format!("line {}", 3 * Retention::STEP + 1));
        // Another function's records are its own.
        assert_eq!(s.records("quiet", 10).unwrap().len(), 1);
    }

    #[test]
    fn removing_old_records_keeps_a_reused_call_ids_newer_entry() {
        let d = tempfile::tempdir().unwrap();
        let keep = Retention {
            records: Retention::STEP,
            logs: Retention::STEP,
        };
        let s = Store::open_with(d.path(), keep).unwrap();
        s.record(record("f", "same"));
        for i in 2..2 * Retention::STEP {
            s.record(record("f", &format!("c{i}")));
        }
        // The caller sends the first call's id again; then the step that removes the first.
        s.record(record("f", "same"));
        s.flush();
        let r = s
            .call("same")
            .unwrap()
            .expect("the newer record is still found by its id");
        assert_eq!(r.call_id, "same");
        assert!(s.call("c2").unwrap().is_none());
    }
}
