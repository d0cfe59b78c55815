//! Packaging a function folder into the deterministic gzip'd tar the daemon accepts.

use std::os::fd::AsFd;
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

/// The `[build]` of the folder's manifest, if it has one; an error when the manifest cannot
/// be read or parsed (naming the field and value, as the daemon would).
pub fn build_of(dir: &Path) -> anyhow::Result<Option<strata_types::Build>> {
    let path = dir.join("strata.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(strata_types::Manifest::parse(&path.display().to_string(), &text)?.build)
}

/// A `[build]` command that ran and failed.
#[derive(Debug, thiserror::Error)]
#[error("build: `{shown}` failed ({status})")]
pub struct BuildFailed {
    /// The command as written.
    pub shown: String,
    /// How it ended.
    pub status: std::process::ExitStatus,
}

/// Run `b` for the function folder `dir`: in the folder (or its `workdir`), stdin closed, its
/// output on stderr.
pub fn run_build(dir: &Path, b: &strata_types::Build) -> anyhow::Result<()> {
    let workdir = b.workdir.as_ref().map_or_else(|| dir.to_path_buf(), |w| dir.join(w));
    if let Some(w) = &b.workdir
        && !workdir.is_dir()
    {
        bail!(
            "{}: build.workdir = {w:?}: no such folder in {}",
            dir.join("strata.toml").display(),
            dir.display()
        );
    }
    let shown = match b.command.as_slice() {
        [sh, c, line] if sh == "sh" && c == "-c" => line.clone(),
        argv => argv.join(" "),
    };
    let (program, args) = b.command.split_first().context("[build] command is empty")?;
    eprintln!("build: {shown} (in {})", workdir.display());
    let started = std::time::Instant::now();
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = std::process::Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .stdin(std::process::Stdio::null())
        .stdout(stderr)
        .status()
        .with_context(|| format!("build: starting `{shown}` in {}", workdir.display()))?;
    if !status.success() {
        return Err(BuildFailed { shown, status }.into());
    }
    eprintln!("build: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What `strata deploy` does first: the manifest's `[build]`, if any. A manifest that cannot
/// be read or parsed runs nothing here: the daemon's answer to the deploy names the field
/// and value.
pub fn build_before_deploy(dir: &Path) -> anyhow::Result<()> {
    match build_of(dir) {
        Ok(Some(b)) => run_build(dir, &b),
        Ok(None) | Err(_) => Ok(()),
    }
}
