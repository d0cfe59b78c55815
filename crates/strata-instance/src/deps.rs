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
    fn declared(self, code_dir: &Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(code_dir.join(self.manifest()))?;
        Ok(match self {
            Ecosystem::Python => normalize(&text),
            Ecosystem::Node => {
                let lock = std::fs::read_to_string(code_dir.join("package-lock.json")).unwrap_or_default();
                format!("{text}\n\0{lock}")
            }
        })
    }

    /// The installer's command, to run in `into` (an empty folder); Node's manifest and lock
    /// are copied there first.
    fn installer(self, code_dir: &Path, into: &Path) -> std::io::Result<Command> {
        Ok(match self {
            Ecosystem::Python => {
                let mut cmd = Command::new(PYTHON);
                cmd.args([
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
                .arg(code_dir.join("requirements.txt"))
                .current_dir(code_dir);
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
                cmd.args(["--omit=dev", "--no-audit", "--no-fund", "--loglevel=http"])
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
fn run_streaming(mut cmd: Command, progress: &(dyn Fn(&str) + Sync)) -> std::io::Result<(bool, Vec<String>)> {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let lines = Mutex::new(Vec::new());
    let pump = |r: Box<dyn std::io::Read + Send>| {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            progress(&line);
            lines.lock().expect("lines lock").push(line);
        }
    };
    std::thread::scope(|s| {
        if let Some(e) = stderr {
            s.spawn(|| pump(Box::new(e)));
        }
        if let Some(o) = stdout {
            pump(Box::new(o));
        }
    });
    let status = child.wait()?;
    Ok((status.success(), lines.into_inner().expect("lines lock")))
}

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

/// The requirement lines that matter: no blank lines, comments or trailing spaces.
pub fn normalize(requirements: &str) -> String {
    requirements
        .lines()
        .map(|l| l.split_once(" #").map_or(l, |(a, _)| a).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
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

    fn key(eco: Ecosystem, code_dir: &Path) -> std::io::Result<String> {
        let mut h = Sha256::new();
        h.update(eco.prefix().as_bytes());
        h.update(b"\n");
        h.update(eco.runtime_version()?);
        h.update(eco.declared(code_dir)?.as_bytes());
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
        let key = Self::key(eco, code_dir)?;
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
            let (ok, output) = run_streaming(eco.installer(code_dir, &tmp)?, progress)?;
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
            let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(&tmp).status();
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
