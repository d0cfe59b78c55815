//! Invocation records and log lines, stored in chunks: one redb entry holds a run of a
//! function's consecutive entries, keyed by the function and the first one's sequence number.
//!
//! Why: every call writes a record and a log line, and at the retention limit removes as many.
//! With one B-tree entry each, that was four to six B-tree changes per call, most of the store
//! writer's time (about 10 µs of CPU per call under load, `cargo bench -p strata-store --bench
//! records`). A batch's entries of one function now go into one chunk: one insert per function
//! per batch, and retention drops whole chunks (the one chunk straddling the limit is rewritten
//! without its expired head, so exactly the newest N are kept, as before). The call-id index
//! stays one entry per call: a lookup by id needs it.
//!
//! A chunk's value is its entries one after another, each a little-endian `u32` length and
//! that many bytes of JSON; entry `i` has sequence number `first + i`.

use redb::{ReadableTable, TableDefinition};

use crate::db::{Result, StoreError};

/// (name, first seq) → a chunk of InvocationRecords (JSON each).
pub(crate) const RECORD_CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("record_chunks");
/// (name, first seq) → a chunk of LogLines (JSON each).
pub(crate) const LOG_CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log_chunks");

/// The most entries one chunk holds: reading one record by id decodes at most this many
/// lengths, and rewriting the chunk at the retention limit copies at most this many entries.
pub(crate) const CHUNK_MAX: u64 = 256;

/// A chunk is stored once it holds this many bytes, whatever its count (redb's values are
/// limited, and a chunk is read whole).
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// The entries of a chunk's bytes, in order. A damaged tail (a length past the end) ends the
/// iteration, and [`Entries::damaged`] says so.
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
    damaged: bool,
}

impl<'a> Entries<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Entries {
            rest: bytes,
            damaged: false,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((len, tail)) = self.rest.split_first_chunk::<4>() else {
            self.damaged = true;
            self.rest = &[];
            return None;
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            self.damaged = true;
            self.rest = &[];
            return None;
        }
        let (entry, rest) = tail.split_at(len);
        self.rest = rest;
        Some(entry)
    }
}

/// Append one entry to a chunk's bytes.
pub(crate) fn push(bytes: &mut Vec<u8>, entry: &[u8]) -> Result<()> {
    let len = u32::try_from(entry.len())
        .map_err(|_| StoreError::Damaged(format!("entry of {} bytes (too large to store)", entry.len())))?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(entry);
    Ok(())
}

/// Entries of a chunk, checked whole: a damaged chunk is an error naming its key.
pub(crate) fn entries<'a>(name: &str, first: u64, bytes: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    let mut it = Entries::new(bytes);
    let out: Vec<&[u8]> = it.by_ref().collect();
    if it.damaged {
        return Err(StoreError::Damaged(format!("chunk ({name}, {first})")));
    }
    Ok(out)
}

/// A chunk being filled in the writer's batch.
pub(crate) struct Open {
    pub(crate) first: u64,
    pub(crate) n: u64,
    pub(crate) bytes: Vec<u8>,
}

/// The sequence number after the last entry stored for `name`, or 1 for none. The writer
/// calls it: after a damaged last chunk, numbering goes on past any number it could hold (and
/// it is logged), so one bad value does not stop every later batch.
pub(crate) fn next_seq(table: &impl ReadableTable<(&'static str, u64), &'static [u8]>, name: &str) -> Result<u64> {
    let last = table.range((name, 0)..=(name, u64::MAX))?.next_back().transpose()?;
    Ok(match last {
        Some((k, v)) => {
            let first = k.value().1;
            let mut it = Entries::new(v.value());
            let n = it.by_ref().count() as u64;
            if it.damaged {
                // It held at most CHUNK_MAX entries: numbering past that reuses none of them.
                tracing::error!(
                    function = name,
                    first,
                    "a stored chunk is damaged; numbering goes on after it"
                );
                return Ok(first + CHUNK_MAX);
            }
            first + n
        }
        None => 1,
    })
}

/// Remove `name`'s entries with sequence numbers up to `upto` from `table`: whole chunks, and
/// the head of the chunk straddling `upto` (it is stored again from `upto + 1`). `gone` is
/// told each removed entry with its sequence number. One chunk is held at a time; a damaged
/// chunk goes with the entries it still holds whole (and is logged).
pub(crate) fn remove_upto(
    table: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    name: &str,
    upto: u64,
    mut gone: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut firsts = Vec::new();
    for entry in table.range((name, 0)..=(name, upto))? {
        firsts.push(entry?.0.value().1);
    }
    for first in firsts {
        let Some(bytes) = table.remove((name, first))?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let mut it = Entries::new(&bytes);
        let mut kept = Vec::new();
        for (i, e) in it.by_ref().enumerate() {
            let seq = first + i as u64;
            if seq <= upto {
                gone(seq, e)?;
            } else {
                push(&mut kept, e)?;
            }
        }
        if it.damaged {
            tracing::error!(function = name, first, "a damaged chunk was removed");
        }
        if !kept.is_empty() {
            table.insert((name, upto + 1), kept.as_slice())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_order_and_a_cut_chunk_is_damaged() {
        let mut b = Vec::new();
        push(&mut b, b"{\"a\":1}").unwrap();
        push(&mut b, b"").unwrap();
        push(&mut b, b"xyz").unwrap();
        let all = entries("f", 1, &b).unwrap();
        assert_eq!(all, vec![&b"{\"a\":1}"[..], b"", b"xyz"]);
        for cut in [1, 5, b.len() - 1] {
            let e = entries("f", 7, &b[..cut]).unwrap_err();
            assert!(e.to_string().contains("chunk (f, 7)"), "{e}");
        }
        assert!(entries("f", 1, &[]).unwrap().is_empty());
    }
}
