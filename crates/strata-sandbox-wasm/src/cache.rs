//! The compiled-artifact cache: components compiled ahead of time, on disk, keyed by the
//! component's content hash and the engine's configuration.
//!
//! Loading a compiled artifact maps machine code into the process, so a file that is not
//! exactly what this engine wrote must never be loaded. Each file carries a header: a magic
//! tag, the key it was written under, and the SHA-256 of the artifact that follows. A file
//! whose header, key or checksum does not match is reported as [`Lookup::Invalid`] and the
//! caller compiles again and overwrites it. wasmtime's own compatibility check (version,
//! target, flags) stays as a second line behind ours.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"STRATAW1";
/// Magic, key (64 hex), checksum (32 bytes).
const HEADER_LEN: usize = 8 + 64 + 32;

/// What the cache holds for a key.
#[derive(Debug)]
pub enum Lookup {
    /// A verified artifact.
    Hit(Vec<u8>),
    /// No file.
    Miss,
    /// A file that is not ours or is damaged; why.
    Invalid(String),
}

/// A directory of compiled artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// A cache in `dir` (created when missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ArtifactCache { dir: dir.to_owned() })
    }

    /// The key of a component's bytes under an engine whose configuration hashes to
    /// `engine_key`.
    pub fn key(wasm: &[u8], engine_key: &str) -> String {
        let mut h = Sha256::new();
        h.update(wasm);
        h.update(b"\0");
        h.update(engine_key.as_bytes());
        hex::encode(h.finalize())
    }

    /// Where the artifact for `key` lives.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// Read and verify the artifact for `key`.
    pub fn get(&self, key: &str) -> Lookup {
        let bytes = match std::fs::read(self.path(key)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Invalid(format!("unreadable: {e}")),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Lookup::Invalid("not a Strata artifact (bad header)".into());
        }
        if &bytes[8..72] != key.as_bytes() {
            return Lookup::Invalid("written for another component or engine".into());
        }
        let sum = Sha256::digest(&bytes[HEADER_LEN..]);
        if sum.as_slice() != &bytes[72..HEADER_LEN] {
            return Lookup::Invalid("checksum mismatch (damaged)".into());
        }
        let mut bytes = bytes;
        bytes.drain(..HEADER_LEN);
        Lookup::Hit(bytes)
    }

    /// Store `artifact` under `key`, atomically (a reader sees the old file or the new one).
    pub fn put(&self, key: &str, artifact: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(key.as_bytes())?;
            f.write_all(&Sha256::digest(artifact))?;
            f.write_all(artifact)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789012345678901234567890123456789012345678901234567890123";

    #[test]
    fn round_trip_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(dir.path()).unwrap();
        assert!(matches!(c.get(KEY), Lookup::Miss));
        c.put(KEY, b"machine code").unwrap();
        match c.get(KEY) {
            Lookup::Hit(b) => assert_eq!(b, b"machine code"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(dir.path()).unwrap();
        c.put(KEY, b"machine code").unwrap();
        let mut bytes = std::fs::read(c.path(KEY)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(c.path(KEY), &bytes).unwrap();
        assert!(matches!(c.get(KEY), Lookup::Invalid(m) if m.contains("checksum")));
    }

    #[test]
    fn foreign_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(dir.path()).unwrap();
        std::fs::write(
            c.path(KEY),
            b"\x7fELF not ours at all, just some bytes long enough to pass the length check...........",
        )
        .unwrap();
        assert!(matches!(c.get(KEY), Lookup::Invalid(m) if m.contains("header")));
        // A valid file for another key, renamed into place.
        let other = "f".repeat(64);
        c.put(&other, b"x").unwrap();
        std::fs::rename(c.path(&other), c.path(KEY)).unwrap();
        assert!(matches!(c.get(KEY), Lookup::Invalid(m) if m.contains("another")));
    }

    #[test]
    fn keys_depend_on_bytes_and_engine() {
        assert_ne!(ArtifactCache::key(b"a", "e1"), ArtifactCache::key(b"b", "e1"));
        assert_ne!(ArtifactCache::key(b"a", "e1"), ArtifactCache::key(b"a", "e2"));
        assert_eq!(ArtifactCache::key(b"a", "e1").len(), 64);
    }
}
