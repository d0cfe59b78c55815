//! Code blobs: uploaded archives stored by content hash and unpacked once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A name for a temporary file or folder no other call of this process uses at the same
/// time: the pid tells processes apart, the counter calls within one.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{prefix}.{}.{n}", std::process::id())
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
    /// Storing the same archive twice is a no-op, also when both calls run at once.
    pub fn put(&self, archive: &[u8], max_unpacked: u64) -> Result<(String, String), PackageError> {
        let version = version_of(archive);
        let dir = self.code_dir(&version);
        // A version folder appears only whole (renamed into place once unpacked), so one with
        // its manifest is complete.
        if !dir.join("strata.toml").is_file() {
            // Each call unpacks into its own folder: two deploys of one package at once must
            // not unpack into (or remove) the same one.
            let tmp = self.root.join("code").join(unique(&version));
            std::fs::create_dir(&tmp)?;
            let unpacked = unpack(archive, &tmp, max_unpacked).and_then(|()| {
                if tmp.join("strata.toml").is_file() {
                    Ok(())
                } else {
                    Err(PackageError::NoManifest)
                }
            });
            if let Err(e) = unpacked {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            let archives = self.root.join("archives");
            let tmp_archive = archives.join(unique(&version));
            std::fs::write(&tmp_archive, archive)
                .and_then(|()| std::fs::rename(&tmp_archive, archives.join(format!("{version}.tar.gz"))))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp_archive);
                    let _ = std::fs::remove_dir_all(&tmp);
                })?;
            self.install(&tmp, &dir)?;
        }
        let manifest = std::fs::read_to_string(dir.join("strata.toml"))?;
        Ok((version, manifest))
    }

    /// Move the unpacked folder `tmp` into place as `dir`. When another deploy of the same
    /// package got there first, its folder (the same files) stays and `tmp` goes: a complete
    /// version folder is never removed, as a running version may be using it.
    fn install(&self, tmp: &Path, dir: &Path) -> std::io::Result<()> {
        // Three tries: a folder in the way is moved aside on each, and more than one (another
        // deploy's leftovers appearing meanwhile) is a fault worth reporting.
        let mut last = None;
        for _ in 0..3 {
            // rename(2) fails on a folder that is not empty, so a complete one is never replaced.
            match std::fs::rename(tmp, dir) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            if dir.join("strata.toml").is_file() {
                let _ = std::fs::remove_dir_all(tmp);
                return Ok(());
            }
            // Something without a manifest is in the way: what an interrupted deploy or removal
            // left. It is renamed aside before removing it, so that if another deploy's complete
            // folder took its place meanwhile, that one is put back, not deleted.
            let aside = self.root.join("code").join(unique("stale"));
            if std::fs::rename(dir, &aside).is_ok() {
                if aside.join("strata.toml").is_file() && std::fs::rename(&aside, dir).is_ok() {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&aside);
                let _ = std::fs::remove_file(&aside);
            }
        }
        let _ = std::fs::remove_dir_all(tmp);
        let e = last.expect("the loop ran at least once");
        Err(std::io::Error::new(
            e.kind(),
            format!("moving the unpacked package into {}: {e}", dir.display()),
        ))
    }

    /// Remove a version's code.
    pub fn remove(&self, version: &str) {
        let _ = std::fs::remove_dir_all(self.code_dir(version));
        let _ = std::fs::remove_file(self.root.join("archives").join(format!("{version}.tar.gz")));
    }
}

/// Where an entry named `name` goes under the package folder, as tar places it (leading `/`
/// and `.` parts dropped), or `None` if it would leave the folder (a `..` part).
fn inside(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return None,
            Component::Normal(p) => out.push(p),
        }
    }
    Some(out)
}

/// An error making entry `name`'s file or folder: the package's own fault when its entries
/// clash (a file where a folder is, or the other way), the daemon's otherwise (a full disk).
fn clash(e: std::io::Error, name: &Path) -> PackageError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::IsADirectory | ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            PackageError::Archive(format!("entry {} clashes with another: {e}", name.display()))
        }
        _ => PackageError::Io(e),
    }
}

fn unpack(archive: &[u8], dest: &Path, max_unpacked: u64) -> Result<(), PackageError> {
    let bad = |e: std::io::Error| PackageError::Archive(e.to_string());
    let too_big = || PackageError::TooBig { limit: max_unpacked };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    // Bytes of the files so far, never above `max_unpacked`.
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            // Symlinks and devices could point out of the code folder; they are not needed.
            continue;
        }
        let name = entry.path().map_err(bad)?.into_owned();
        let Some(rel) = inside(&name) else {
            return Err(PackageError::Archive(format!(
                "entry {} escapes the package",
                name.display()
            )));
        };
        // Written here rather than by tar's `unpack_in`, so that the copy below bounds the
        // bytes on disk. `dest` is a fresh folder and no symlink is ever made in it, so a
        // path of normal components stays inside.
        let out = dest.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| clash(e, &name))?;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))?;
            continue;
        }
        // tar reads as many bytes as a PAX `size` record says (`entry.size()`), whatever the
        // header says: a header saying 0 can come with 200 GB of gzip'd zeros. Count the
        // larger of the two and refuse before writing anything.
        let declared = entry.size().max(entry.header().size().map_err(bad)?);
        total = total
            .checked_add(declared)
            .filter(|t| *t <= max_unpacked)
            .ok_or_else(too_big)?;
        let exec = entry.header().mode().map_err(bad)? & 0o111 != 0;
        let mtime = entry.header().mtime().map_err(bad)?;
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| clash(e, &name))?;
        }
        let mut file = std::fs::File::create(&out).map_err(|e| clash(e, &name))?;
        // Whatever the sizes said, what is written is bounded too: the file's share of the
        // budget is what remains after the files before it.
        let budget = max_unpacked - (total - declared);
        let mut data = std::io::Read::take(&mut entry, budget.saturating_add(1));
        let mut written = 0u64;
        loop {
            let n = match std::io::Read::read(&mut data, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad(e)),
            };
            written += n as u64;
            if written > budget {
                return Err(too_big());
            }
            std::io::Write::write_all(&mut file, &buf[..n])?;
        }
        let mode = if exec { 0o755 } else { 0o644 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        // As tar does: the archive's time, but never 0, which some tools take for "unset"
        // (and none past what the clock can hold).
        let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(mtime.max(1)));
        if let Some(at) = at {
            file.set_modified(at)?;
        }
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

    /// A package being built, with its `strata.toml` in it.
    fn with_manifest() -> tar::Builder<flate2::write::GzEncoder<Vec<u8>>> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(8);
        h.set_mode(0o644);
        b.append_data(&mut h, "strata.toml", &b"name='x'"[..]).unwrap();
        b
    }

    /// A package whose `big.bin` has a header saying 0 bytes and a PAX `size` record saying
    /// `len`, followed by `len` zeros: tar reads (and unpacks) as many bytes as the PAX record
    /// says, so a small gzip'd package can claim to be small and unpack to anything.
    fn archive_with_pax_size(len: u64) -> Vec<u8> {
        let mut b = with_manifest();
        // A PAX record is "<length> size=<len>\n", its length counting its own digits.
        let rest = format!(" size={len}\n");
        let mut n = rest.len();
        let record = loop {
            let r = format!("{n}{rest}");
            if r.len() == n {
                break r;
            }
            n = r.len();
        };
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_size(record.len() as u64);
        b.append_data(&mut x, "PaxHeaders/big.bin", record.as_bytes()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        let zeros = std::io::Read::take(std::io::repeat(0), len);
        b.append_data(&mut h, "big.bin", zeros).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    /// A package with one file whose stored name is `name` as is; the builder refuses names
    /// with `..` or a leading `/`, so it is written into the header by hand.
    fn archive_with_raw_name(name: &str) -> Vec<u8> {
        let mut b = with_manifest();
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    /// Every file under `dir`, with its size.
    fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push((e.path(), m.len()));
            }
        }
        out
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

    #[test]
    fn a_pax_size_past_the_limit_is_refused_and_nothing_stays() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(d.path()).unwrap();
        let a = archive_with_pax_size(64 << 10);
        assert!(a.len() < 1024, "the package itself is small: {} bytes", a.len());
        let err = blobs
            .put(&a, 1024)
            .expect_err("a package unpacking past the limit is refused");
        assert!(matches!(err, PackageError::TooBig { limit: 1024 }), "{err}");
        let left = files_under(&d.path().join("code"));
        assert!(left.is_empty(), "nothing of a refused package stays: {left:?}");
        // The same package under a limit it fits is fine: the PAX size is what gets written.
        let (v, _) = blobs.put(&a, 1 << 20).unwrap();
        let big = std::fs::metadata(blobs.code_dir(&v).join("big.bin")).unwrap();
        assert_eq!(big.len(), 64 << 10);
    }

    #[test]
    fn entries_outside_the_package_are_refused_or_kept_inside() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&d.path().join("blobs")).unwrap();
        let up = archive_with_raw_name("../escaped.txt");
        let err = blobs.put(&up, 1 << 20).expect_err("`..` is refused");
        assert!(matches!(err, PackageError::Archive(_)), "{err}");
        assert!(!d.path().join("blobs/code/escaped.txt").exists());
        // A leading `/` is dropped, as tar does: the file lands inside the code folder.
        let outside = d.path().join("abs.txt");
        let abs = archive_with_raw_name(outside.to_str().unwrap());
        let (v, _) = blobs.put(&abs, 1 << 20).unwrap();
        assert!(!outside.exists(), "nothing written outside the code folder");
        let inside = blobs.code_dir(&v).join(outside.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(inside).unwrap(), b"evil");
    }

    #[test]
    fn simultaneous_puts_of_one_package_all_succeed_with_it_complete() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(d.path()).unwrap();
        // Enough files that the unpacks overlap.
        let names: Vec<String> = (0..300).map(|i| format!("lib/f{i}.txt")).collect();
        let data = [b'a'; 2000];
        let mut files: Vec<(&str, &[u8], u32)> = vec![("strata.toml", b"name='x'", 0o644)];
        files.extend(names.iter().map(|n| (n.as_str(), &data[..], 0o644)));
        let a = archive(&files);
        let threads = 8;
        let start = std::sync::Barrier::new(threads);
        let versions: Vec<String> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        blobs.put(&a, 1 << 30)
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|c| {
                    let (v, m) = c.join().unwrap().expect("every simultaneous put succeeds");
                    assert_eq!(m, "name='x'");
                    v
                })
                .collect()
        });
        assert!(versions.iter().all(|v| *v == versions[0]));
        let code = blobs.code_dir(&versions[0]);
        for n in &names {
            assert_eq!(std::fs::read(code.join(n)).unwrap(), data, "{n}");
        }
        assert_eq!(files_under(&code).len(), names.len() + 1);
        let left: Vec<_> = std::fs::read_dir(d.path().join("code"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [versions[0].as_str()], "no temporary folder left behind");
        let archives = std::fs::read_dir(d.path().join("archives")).unwrap().count();
        assert_eq!(archives, 1);
    }

    #[test]
    fn a_version_folder_without_its_manifest_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(d.path()).unwrap();
        let a = archive(&[("strata.toml", b"name='x'", 0o644), ("main.py", b"x", 0o644)]);
        // What an interrupted earlier deploy or removal may leave.
        let dir = blobs.code_dir(&version_of(&a));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("half.py"), b"x").unwrap();
        let (v, m) = blobs.put(&a, 1 << 20).unwrap();
        assert_eq!(m, "name='x'");
        let mut names: Vec<_> = files_under(&blobs.code_dir(&v))
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["main.py", "strata.toml"]);
        assert_eq!(std::fs::read_dir(d.path().join("code")).unwrap().count(), 1);
    }
}
