//! Dependency layers: a Python function's `requirements.txt` or a Node function's
//! `package.json` (with its `package-lock.json`, if any), resolved and installed once on the
//! host (sandboxes have no network) into a folder keyed by the content of the dependency set
//! and the runtime's version, shared by every function and version with the same set, and
//! mounted read-only at [`IN_SANDBOX`] in the function's sandboxes.
//!
//! Layout under the layers folder: `py-<key>/` (the installed packages, `pip install
//! --target`) or `node-<key>/` (`node_modules/`, from `npm ci` or `npm install`),
//! `<name>.json` (what is in it: packages, size), `versions/<version>` (the layer a function
//! version uses). A layer is built in a temporary folder and renamed into place, so a
//! failed or interrupted install never leaves a layer that looks complete.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Where a layer appears inside a sandbox (on the runtime's import path).
pub const IN_SANDBOX: &str = "/strata/deps";

/// The interpreter sandboxes run, and so the one layers are built for.
const PYTHON: &str = "/usr/bin/python3";

/// The Node.js sandboxes run.
const NODE: &str = "/usr/bin/node";

/// Whose packages a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecosystem {
    /// `requirements.txt`, installed with pip.
    Python,
    /// `package.json` (and `package-lock.json`), installed with npm.
    Node,
}

impl Ecosystem {
    /// The file that declares a function's dependencies.
    pub fn manifest(self) -> &'static str {
        match self {
            Ecosystem::Python => "requirements.txt",
            Ecosystem::Node => "package.json",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Ecosystem::Python => "py",
            Ecosystem::Node => "node",
        }
    }

    /// What else goes into the key besides the declared set: the runtime's version.
    fn runtime_version(self) -> std::io::Result<Vec<u8>> {
        let out = match self {
            Ecosystem::Python => Command::new(PYTHON)
                .args([
                    "-I",
                    "-S",
                    "-c",
                    "import sys, platform; print(sys.version, platform.machine())",
                ])
                .output()?,
            Ecosystem::Node => Command::new(NODE)
                .args(["-p", "process.version + ' ' + process.arch"])
                .output()?,
        };
        Ok(out.stdout)
    }

    /// The declared set as it is keyed: the manifest (normalized for Python) and, for Node,
    /// the lock file.
    ///
    /// Only plain registry dependencies are accepted (see [`check_requirements`] and
    /// [`check_package_json`]): the installer runs on the host, so nothing in these files may
    /// point it at a local path, another file, a URL or a different index.
    fn declared(self, code_dir: &Path) -> Result<String, DepsError> {
        let text = std::fs::read_to_string(code_dir.join(self.manifest()))?;
        Ok(match self {
            Ecosystem::Python => check_requirements(&text).map_err(DepsError::Invalid)?,
            Ecosystem::Node => {
                let lock = match std::fs::read_to_string(code_dir.join("package-lock.json")) {
                    Ok(l) => Some(l),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                };
                check_package_json(&text, lock.as_deref()).map_err(DepsError::Invalid)?;
                format!("{text}\n\0{}", lock.as_deref().unwrap_or("no lock"))
            }
        })
    }

    /// The installer's version (part of a layer's key).
    fn installer_version(self) -> std::io::Result<Vec<u8>> {
        let out = match self {
            Ecosystem::Python => Command::new(PYTHON).args(["-I", "-m", "pip", "--version"]).output()?,
            Ecosystem::Node => Command::new("npm").arg("--version").output()?,
        };
        Ok(out.stdout)
    }

    /// The installer's command, to run in `into` (an empty folder); Node's manifest and lock
    /// are copied there first. `declared` is what [`Ecosystem::declared`] checked.
    fn installer(self, code_dir: &Path, into: &Path, declared: &Path) -> std::io::Result<Command> {
        Ok(match self {
            Ecosystem::Python => {
                let mut cmd = Command::new(PYTHON);
                // -I: not even the working folder goes on the path, so nothing can stand in
                // for pip.
                cmd.args([
                    "-I",
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--no-warn-script-location",
                    "--root-user-action=ignore",
                    "--progress-bar=off",
                    // Wheels only: building a source distribution runs its setup.py, as the
                    // daemon's user, on the host.
                    "--only-binary=:all:",
                    "--target",
                ])
                .arg(into)
                .arg("-r")
                .arg(declared)
                .current_dir(into);
                cmd
            }
            Ecosystem::Node => {
                std::fs::copy(code_dir.join("package.json"), into.join("package.json"))?;
                let locked = code_dir.join("package-lock.json").is_file();
                if locked {
                    std::fs::copy(code_dir.join("package-lock.json"), into.join("package-lock.json"))?;
                }
                let mut cmd = Command::new("npm");
                if locked {
                    cmd.arg("ci");
                } else {
                    cmd.args(["install", "--no-package-lock"]);
                }
                // No install scripts: they would run on the host, as the daemon's user. (Native
                // addons that build or fetch themselves in a script do not work for that.)
                cmd.args([
                    "--omit=dev",
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    "--loglevel=http",
                ])
                .current_dir(into);
                cmd
            }
        })
    }

    /// `name==version` of what a layer holds, sorted.
    fn packages(self, dir: &Path) -> Vec<String> {
        match self {
            Ecosystem::Python => packages(dir),
            Ecosystem::Node => node_packages(&dir.join("node_modules")),
        }
    }

    /// The environment that puts a layer mounted at [`IN_SANDBOX`] on the runtime's path.
    pub fn env(self) -> (&'static str, String) {
        match self {
            Ecosystem::Python => ("STRATA_DEPS", IN_SANDBOX.to_owned()),
            Ecosystem::Node => ("NODE_PATH", format!("{IN_SANDBOX}/node_modules")),
        }
    }
}

/// Run `cmd`, handing each line of its stdout and stderr to `progress` as it comes. Returns
/// whether it succeeded and every line.
///
/// The installer gets [`INSTALL_TIME_LIMIT`]: then its whole process group is killed and the
/// last line says so.
fn run_streaming(mut cmd: Command, progress: &(dyn Fn(&str) + Sync)) -> std::io::Result<(bool, Vec<String>)> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pgid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let timed_out = std::sync::atomic::AtomicBool::new(false);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let lines = Mutex::new(Vec::new());
    let pump = |r: Box<dyn std::io::Read + Send>| {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            progress(&line);
            lines.lock().expect("lines lock").push(line);
        }
    };
    let flag = &timed_out;
    std::thread::scope(|s| {
        s.spawn(move || {
            if done_rx.recv_timeout(INSTALL_TIME_LIMIT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                // SAFETY: kill(2) of the installer's own process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        });
        let err = stderr.map(|e| s.spawn(|| pump(Box::new(e))));
        if let Some(o) = stdout {
            pump(Box::new(o));
        }
        if let Some(e) = err {
            let _ = e.join();
        }
        drop(done_tx);
    });
    let status = child.wait()?;
    let mut lines = lines.into_inner().expect("lines lock");
    if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
        lines.push(format!(
            "strata: the installer did not finish within {} s and was stopped",
            INSTALL_TIME_LIMIT.as_secs()
        ));
        return Ok((false, lines));
    }
    Ok((status.success(), lines))
}

/// How long an installer may run.
const INSTALL_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `name==version` of the packages in a `node_modules` folder (top level and scoped).
fn node_packages(dir: &Path) -> Vec<String> {
    let version_of = |p: &Path| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("package.json")).ok()?).ok()?;
        Some(format!("{}=={}", v["name"].as_str()?, v["version"].as_str()?))
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        if n.starts_with('@') {
            for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                out.extend(version_of(&s.path()));
            }
        } else {
            out.extend(version_of(&e.path()));
        }
    }
    out.sort();
    out
}

/// A layer and what is in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    /// `py-<first 16 hex of the key>`.
    pub name: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// `name==version` of every installed distribution, sorted.
    pub packages: Vec<String>,
}

/// How a layer came to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Built {
    /// Installed now.
    Installed {
        /// Seconds the install took.
        secs: f64,
    },
    /// Already there: nothing installed.
    Cached,
}

/// Installing a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    /// The declared dependencies are not allowed (names the line or entry).
    #[error("{0}")]
    Invalid(String),
    /// The installer failed: its message.
    #[error("installing the dependencies failed:\n{0}")]
    Install(String),
    /// The layer is bigger than allowed.
    #[error("the installed requirements take {size} bytes, over the limit of {limit} bytes")]
    TooBig {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Host I/O.
    #[error("dependency layer: {0}")]
    Io(#[from] std::io::Error),
}

/// The layers of one daemon.
#[derive(Debug)]
pub struct Layers {
    dir: PathBuf,
    max_bytes: u64,
    /// One install at a time: two deploys of the same set wait for one install.
    building: Mutex<()>,
}

/// `requirements.txt` as it may be installed on the host: one requirement per line (a name,
/// extras, version specifiers, an environment marker, `--hash=` options), normalized. Every
/// other line is refused, named: options (`-r`, `-c`, `-e`, `-i`, `-f`, `--no-binary`, ...),
/// URLs, direct references (`name @ url`) and local paths.
pub fn check_requirements(text: &str) -> Result<String, String> {
    let lines = normalize(text);
    for (n, line) in lines.lines().enumerate() {
        let bad = |why: &str| Err(format!("line {} {line:?}: {why}", n + 1));
        if line.ends_with('\\') {
            return bad("continuation lines are not supported");
        }
        let mut parts = line.split(" --hash=");
        let req = parts.next().unwrap_or("").trim();
        let hash_ok = |h: &str| {
            h.trim().split_once(':').is_some_and(|(alg, hex)| {
                alg.chars().all(|c| c.is_ascii_alphanumeric()) && hex.chars().all(|c| c.is_ascii_hexdigit())
            })
        };
        if !parts.all(hash_ok) {
            return bad("a --hash must be ALGORITHM:HEX");
        }
        if req.starts_with('-') {
            return bad("installer options are not allowed, only requirements");
        }
        let (spec, marker) = req.split_once(';').unwrap_or((req, ""));
        if !spec.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return bad("a requirement starts with a package name");
        }
        if spec.contains(['/', '\\', '@', ':']) || marker.contains("://") {
            return bad("URLs, direct references and paths are not allowed, only packages from the index");
        }
    }
    Ok(lines)
}

/// `package.json` (and its lock) as they may be installed on the host: dependencies from the
/// registry only, no `file:`, `link:`, git, URL, GitHub or alias specifications, and every
/// locked package resolved from `https://registry.npmjs.org/`.
pub fn check_package_json(text: &str, lock: Option<&str>) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("package.json is not valid JSON: {e}"))?;
    for field in ["dependencies", "optionalDependencies", "peerDependencies"] {
        let Some(deps) = v.get(field).and_then(|d| d.as_object()) else {
            continue;
        };
        for (name, spec) in deps {
            let spec = spec.as_str().unwrap_or("");
            if spec.contains([':', '/', '\\']) {
                return Err(format!(
                    "package.json {field}.{name} = {spec:?}: only registry versions are allowed (no file:, git, URL or alias)"
                ));
            }
        }
    }
    if let Some(lock) = lock {
        let l: serde_json::Value =
            serde_json::from_str(lock).map_err(|e| format!("package-lock.json is not valid JSON: {e}"))?;
        for (path, entry) in l.get("packages").and_then(|p| p.as_object()).into_iter().flatten() {
            if path.is_empty() {
                continue;
            }
            let resolved = entry.get("resolved").and_then(|r| r.as_str()).unwrap_or("");
            if entry.get("link").is_some() || !resolved.starts_with("https://registry.npmjs.org/") {
                return Err(format!(
                    "package-lock.json {path}: resolved {resolved:?}: only packages from https://registry.npmjs.org/ are allowed"
                ));
            }
        }
    }
    Ok(())
}

/// The requirement lines that matter: no blank lines, comments or trailing spaces.
pub fn normalize(requirements: &str) -> String {
    requirements
        .lines()
        .map(|l| l.split_once(" #").map_or(l, |(a, _)| a).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `chmod -R a+rX`: every file readable by all, folders and executables traversable/runnable.
fn readable_by_all(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = std::fs::symlink_metadata(e.path())?;
        if m.file_type().is_symlink() {
            continue;
        }
        let mode = m.permissions().mode();
        let add = if m.is_dir() || mode & 0o111 != 0 { 0o555 } else { 0o444 };
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode | add))?;
        if m.is_dir() {
            readable_by_all(&e.path())?;
        }
    }
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `name==version` of the distributions in a `--target` folder (their `.dist-info`).
fn packages(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let stem = n.strip_suffix(".dist-info")?;
            let (name, version) = stem.rsplit_once('-')?;
            Some(format!("{}=={version}", name.replace('_', "-").to_lowercase()))
        })
        .collect();
    out.sort();
    out
}

impl Layers {
    /// Layers under `dir`, each at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<Layers> {
        std::fs::create_dir_all(dir.join("versions"))?;
        // Sandboxes run as an unprivileged uid and must traverse to their layer.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Layers {
            dir,
            max_bytes,
            building: Mutex::new(()),
        })
    }

    /// The key of a declared set: the ecosystem, the runtime's and the installer's versions,
    /// and the checked declaration.
    fn key(eco: Ecosystem, declared: &str) -> std::io::Result<String> {
        let mut h = Sha256::new();
        h.update(eco.prefix().as_bytes());
        h.update(b"\n");
        h.update(eco.runtime_version()?);
        h.update(eco.installer_version()?);
        h.update(declared.as_bytes());
        Ok(hex::encode(h.finalize()))
    }

    /// The installed packages folder of the layer a version uses, and what is in it.
    pub fn of_version(&self, version: &str) -> Option<(PathBuf, LayerInfo)> {
        let name = std::fs::read_to_string(self.dir.join("versions").join(version)).ok()?;
        let name = name.trim();
        let info: LayerInfo =
            serde_json::from_slice(&std::fs::read(self.dir.join(format!("{name}.json"))).ok()?).ok()?;
        Some((self.dir.join(name), info))
    }

    /// Make sure the layer of the dependencies `code_dir` declares exists (installing it if
    /// not) and record that `version` uses it. Blocks for the install; call it off the async
    /// runtime.
    ///
    /// `progress` gets each line the installer prints, as it prints it.
    pub fn ensure(
        &self,
        eco: Ecosystem,
        version: &str,
        code_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(LayerInfo, Built), DepsError> {
        let declared = eco.declared(code_dir)?;
        let key = Self::key(eco, &declared)?;
        let name = format!("{}-{}", eco.prefix(), &key[..16]);
        let _one = self.building.lock().expect("layer build lock");
        let path = self.dir.join(&name);
        let meta = self.dir.join(format!("{name}.json"));
        let built = if path.is_dir() && meta.is_file() {
            Built::Cached
        } else {
            let t0 = Instant::now();
            let tmp = self.dir.join(format!(".{name}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let declared_file = self.dir.join(format!(".{name}.{}.txt", std::process::id()));
            std::fs::write(&declared_file, format!("{declared}\n"))?;
            let result = eco
                .installer(code_dir, &tmp, &declared_file)
                .and_then(|cmd| run_streaming(cmd, progress));
            let _ = std::fs::remove_file(&declared_file);
            let (ok, output) = result?;
            if !ok {
                let _ = std::fs::remove_dir_all(&tmp);
                let tail: Vec<&str> = output.iter().rev().take(20).map(String::as_str).collect();
                return Err(DepsError::Install(
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                ));
            }
            let size = dir_size(&tmp);
            if size > self.max_bytes {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(DepsError::TooBig {
                    size,
                    limit: self.max_bytes,
                });
            }
            // Readable and traversable by the sandbox's unprivileged uid.
            if let Err(e) = readable_by_all(&tmp) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
            let info = LayerInfo {
                name: name.clone(),
                size_bytes: size,
                packages: eco.packages(&tmp),
            };
            let _ = std::fs::remove_dir_all(&path);
            std::fs::rename(&tmp, &path)?;
            std::fs::write(&meta, serde_json::to_vec(&info).expect("plain data"))?;
            Built::Installed {
                secs: t0.elapsed().as_secs_f64(),
            }
        };
        std::fs::write(self.dir.join("versions").join(version), &name)?;
        let info: LayerInfo = serde_json::from_slice(&std::fs::read(&meta)?).map_err(std::io::Error::other)?;
        Ok((info, built))
    }

    /// Remove layers no version in `live` uses (and the records of versions not in it).
    /// Returns the names of the removed layers.
    pub fn collect_garbage(&self, live: &[String]) -> Vec<String> {
        let _one = self.building.lock().expect("layer build lock");
        let mut used = std::collections::HashSet::new();
        for e in std::fs::read_dir(self.dir.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let version = e.file_name().to_string_lossy().into_owned();
            if live.contains(&version) {
                if let Ok(n) = std::fs::read_to_string(e.path()) {
                    used.insert(n.trim().to_owned());
                }
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let layer = n.starts_with("py-") || n.starts_with("node-");
            if layer && e.path().is_dir() && !used.contains(&n) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(self.dir.join(format!("{n}.json")));
                removed.push(n);
            } else if n.starts_with(".py-") || n.starts_with(".node-") {
                // An install a dead daemon left half done.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_do_not_change_the_set() {
        assert_eq!(
            normalize("# deps\njinja2==3.1.4  # templates\n\n  networkx\n"),
            "jinja2==3.1.4\nnetworkx"
        );
        assert_ne!(normalize("a==1\nb==2"), normalize("a==1\nb==3"));
    }

    #[test]
    fn garbage_collection_keeps_the_layers_of_live_versions_only() {
        let d = tempfile::tempdir().unwrap();
        let layers = Layers::new(d.path().to_path_buf(), 1 << 30).unwrap();
        for (name, version) in [("py-aaaa", "v1"), ("py-bbbb", "v2"), ("node-cccc", "v3")] {
            std::fs::create_dir_all(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(format!("{name}.json")), "{}").unwrap();
            std::fs::write(d.path().join("versions").join(version), name).unwrap();
        }
        std::fs::create_dir_all(d.path().join(".py-dddd.123")).unwrap();
        let mut removed = layers.collect_garbage(&["v1".into(), "v3".into()]);
        removed.sort();
        assert_eq!(removed, ["py-bbbb"]);
        assert!(d.path().join("py-aaaa").is_dir() && d.path().join("node-cccc").is_dir());
        assert!(!d.path().join("py-bbbb.json").exists());
        assert!(
            !d.path().join("versions/v2").exists(),
            "the dead version's record goes too"
        );
        assert!(!d.path().join(".py-dddd.123").exists(), "a half-done install goes");
    }

    #[test]
    fn only_plain_requirements_get_to_the_installer() {
        assert_eq!(
            check_requirements("jinja2==3.1.4 --hash=sha256:abc123\nrequests[socks]>=2 ; python_version >= \"3.8\"\n"),
            Ok("jinja2==3.1.4 --hash=sha256:abc123\nrequests[socks]>=2 ; python_version >= \"3.8\"".to_owned())
        );
        for bad in [
            "-r /etc/shadow",
            "--index-url https://evil.example/simple",
            "--no-binary :all:",
            "-e ./pkg",
            "./vendor/x.whl",
            "pkg @ https://evil.example/pkg.whl",
            "git+https://github.com/x/y",
            "six --hash=sha256:zz",
        ] {
            assert!(check_requirements(bad).is_err(), "{bad}");
        }
        assert!(check_requirements("-c c.txt").unwrap_err().contains("line 1"));
    }

    #[test]
    fn only_registry_packages_get_to_npm() {
        assert_eq!(
            check_package_json(r#"{"dependencies": {"uuid": "^9.0.1"}}"#, None),
            Ok(())
        );
        for spec in [
            "file:../x",
            "git+ssh://git@github.com/a/b",
            "user/repo",
            "npm:other@1",
            "https://x/y.tgz",
        ] {
            let pj = format!(r#"{{"dependencies": {{"x": "{spec}"}}}}"#);
            assert!(check_package_json(&pj, None).is_err(), "{spec}");
        }
        let lock = r#"{"packages": {"": {}, "node_modules/x": {"resolved": "https://evil.example/x.tgz"}}}"#;
        assert!(check_package_json(r#"{"dependencies": {"x": "1"}}"#, Some(lock)).is_err());
    }

    #[test]
    fn installer_output_streams_and_a_failure_keeps_it() {
        let seen = Mutex::new(Vec::new());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 3"]);
        let (ok, lines) = run_streaming(cmd, &|l: &str| seen.lock().unwrap().push(l.to_owned())).unwrap();
        assert!(!ok);
        let mut lines = lines;
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn dist_info_folders_name_the_packages() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "Jinja2-3.1.4.dist-info",
            "markupsafe-2.1.5.dist-info",
            "jinja2",
            "six.py",
        ] {
            std::fs::create_dir_all(d.path().join(n)).unwrap();
        }
        assert_eq!(packages(d.path()), ["jinja2==3.1.4", "markupsafe==2.1.5"]);
    }
}
