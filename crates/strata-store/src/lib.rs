//! Control-plane state of one Strata node: the function registry (names, immutable versions,
//! the active version), code blobs, invocation records and function logs.
//!
//! The embedded backend keeps metadata in redb under the data directory and code as files
//! (the uploaded archive, content-addressed, and its unpacked tree, which sandboxes mount
//! read-only). Records and logs arrive on the invocation hot path, so they are written by a
//! background thread in batches, one durable commit per batch. This crate knows nothing of
//! sandboxes, instances or HTTP.

mod blobs;
mod chunks;
mod db;
mod queue;

pub use blobs::{Blobs, PackageError};
pub use db::{Ack, FunctionMeta, Retention, Store, StoreError, VersionMeta};
pub use queue::{AsyncCall, AttemptError, CallResult, CallState};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
