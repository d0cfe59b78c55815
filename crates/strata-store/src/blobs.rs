//! Code blobs: uploaded archives stored by content hash and unpacked once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A function package that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Not a gzip'd tar, or it holds something it may not (links out, devices, `..`).
    #[error("package is not a usable gzip'd tar: {0}")]
    Archive(String),
    /// No manifest in the package.
    #[error("package has no strata.toml at its top level")]
    NoManifest,
    /// The package is bigger than allowed once unpacked.
    #[error("package unpacks to more than {limit} bytes")]
    TooBig {
        /// The limit.
        limit: u64,
    },
    /// Disk trouble.
    #[error("storing the package: {0}")]
    Io(#[from] std::io::Error),
}

/// Content-addressed code storage under a directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

/// The version id of a package: the first 12 hex digits of its SHA-256.
pub fn version_of(archive: &[u8]) -> String {
    hex::encode(Sha256::digest(archive))[..12].to_owned()
}

impl Blobs {
    /// Storage under `root` (created if needed).
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("archives"))?;
        std::fs::create_dir_all(root.join("code"))?;
        // Sandboxes run as an unprivileged uid and must traverse to their code.
        for d in [root, &root.join("code")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Blobs {
            root: root.to_path_buf(),
        })
    }

    /// The unpacked code folder of a version.
    pub fn code_dir(&self, version: &str) -> PathBuf {
        self.root.join("code").join(version)
    }

    /// Store `archive` (gzip'd tar), unpack it, and return (version, manifest text).
    /// Storing the same archive twice is a no-op.
    pub fn put(&self, archive: &[u8], max_unpacked: u64) -> Result<(String, String), PackageError> {
        let version = version_of(archive);
        let dir = self.code_dir(&version);
        if !dir.join("strata.toml").is_file() {
            let tmp = self
                .root
                .join("code")
                .join(format!(".{version}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            if let Err(e) = unpack(archive, &tmp, max_unpacked) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            if !tmp.join("strata.toml").is_file() {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(PackageError::NoManifest);
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir)?;
            std::fs::write(self.root.join("archives").join(format!("{version}.tar.gz")), archive)?;
        }
        let manifest = std::fs::read_to_string(dir.join("strata.toml"))?;
        Ok((version, manifest))
    }

    /// Remove a version's code.
    pub fn remove(&self, version: &str) {
        let _ = std::fs::remove_dir_all(self.code_dir(version));
        let _ = std::fs::remove_file(self.root.join("archives").join(format!("{version}.tar.gz")));
    }
}

fn unpack(archive: &[u8], dest: &Path, max_unpacked: u64) -> Result<(), PackageError> {
    let bad = |e: std::io::Error| PackageError::Archive(e.to_string());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.set_preserve_permissions(false);
    tar.set_overwrite(true);
    let mut total = 0u64;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            // Symlinks and devices could point out of the code folder; they are not needed.
            continue;
        }
        total += entry.header().size().map_err(bad)?;
        if total > max_unpacked {
            return Err(PackageError::TooBig { limit: max_unpacked });
        }
        let exec = entry.header().mode().map_err(bad)? & 0o111 != 0;
        let path = entry.path().map_err(bad)?.into_owned();
        // unpack_in refuses paths that escape `dest`.
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(PackageError::Archive(format!(
                "entry {} escapes the package",
                path.display()
            )));
        }
        let out = dest.join(&path);
        let mode = if kind.is_dir() || exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn put_is_content_addressed_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(d.path()).unwrap();
        let a = archive(&[("strata.toml", b"name='x'", 0o600), ("run.sh", b"#!/bin/sh\n", 0o700)]);
        let (v1, m) = blobs.put(&a, 1 << 20).unwrap();
        assert_eq!(m, "name='x'");
        let (v2, _) = blobs.put(&a, 1 << 20).unwrap();
        assert_eq!(v1, v2);
        let mode = |p: &str| {
            std::fs::metadata(blobs.code_dir(&v1).join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("strata.toml"), 0o644, "readable by the sandbox user");
        assert_eq!(mode("run.sh"), 0o755);
    }

    #[test]
    fn bad_packages_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(d.path()).unwrap();
        assert!(matches!(blobs.put(b"not gzip", 1 << 20), Err(PackageError::Archive(_))));
        let no_manifest = archive(&[("main.py", b"x", 0o644)]);
        assert!(matches!(
            blobs.put(&no_manifest, 1 << 20),
            Err(PackageError::NoManifest)
        ));
        let big = archive(&[("strata.toml", &[b'x'; 2048], 0o644)]);
        assert!(matches!(blobs.put(&big, 1024), Err(PackageError::TooBig { .. })));
    }
}
