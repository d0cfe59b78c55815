//! Packaging a function folder into the deterministic gzip'd tar the daemon accepts.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Folders never packaged: VCS data, caches, build output, local daemon state.
const SKIP: &[&str] = &[".git", "__pycache__", "target", ".strata", ".cache"];

/// Every file under `dir` to package, sorted, as paths relative to `dir`.
pub fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.join("strata.toml").is_file() {
        bail!("{}: no strata.toml in this folder", dir.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for entry in std::fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if SKIP.iter().any(|s| name == *s) {
                continue;
            }
            let ft = entry.file_type()?;
            let path = rel.join(&name);
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Package `dir`: a gzip'd tar with sorted entries, zero mtimes and owners, and modes
/// normalised to 0755/0644 by the executable bit, so the same folder always gives the same
/// bytes (and so the same version id).
pub fn package(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for rel in files(dir)? {
        let abs = dir.join(&rel);
        let data = std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?;
        let exec = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&abs)?.permissions()) & 0o111 != 0;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        tar.append_data(&mut h, &rel, data.as_slice())?;
    }
    Ok(tar.into_inner()?.finish()?)
}
