//! The root-filesystem plan: a pure function from a spec and the host's layout to the list
//! of mount steps the child performs before exec.
//!
//! Building the plan allocates (paths become `CString`s); it happens in the parent. The child
//! only walks the finished list through [`crate::kernel::Kernel`], which does not allocate.
//! Because the plan is data, unit tests check what a sandbox's filesystem will look like
//! without root.

use std::ffi::{CString, c_ulong};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, SandboxError};
use crate::spec::{CODE_DIR, SandboxSpec};

/// One step of filesystem setup inside the new mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make every mount private so nothing propagates back to the host.
    MakePrivate,
    /// Mount a tmpfs.
    Tmpfs {
        /// Where.
        target: CString,
        /// Mount flags (`MS_NOSUID` …).
        flags: c_ulong,
        /// tmpfs options (`size=…,mode=…`).
        options: CString,
    },
    /// Create a directory.
    Mkdir {
        /// Path.
        path: CString,
    },
    /// Create an empty file (a mount point for a file bind mount).
    Touch {
        /// Path.
        path: CString,
    },
    /// Create a symbolic link `link` → `target`.
    Symlink {
        /// What the link points to.
        target: CString,
        /// The link itself.
        link: CString,
    },
    /// Bind-mount `source` on `target`, then remount it read-only, nosuid and nodev.
    BindReadOnly {
        /// Host path.
        source: CString,
        /// Path under the new root.
        target: CString,
    },
    /// Create a character device node (mode 0666).
    CharDevice {
        /// Path.
        path: CString,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// Mount a fresh procfs (it shows only the new pid namespace).
    Proc {
        /// Where.
        target: CString,
    },
    /// Make `new_root` the root and detach the old one.
    PivotRoot {
        /// The assembled root.
        new_root: CString,
    },
    /// Remount the (already pivoted) root read-only.
    RootReadOnly,
}

impl Step {
    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Step::MakePrivate => "make-private",
            Step::Tmpfs { .. } => "tmpfs",
            Step::Mkdir { .. } => "mkdir",
            Step::Touch { .. } => "touch",
            Step::Symlink { .. } => "symlink",
            Step::BindReadOnly { .. } => "bind-ro",
            Step::CharDevice { .. } => "mknod",
            Step::Proc { .. } => "proc",
            Step::PivotRoot { .. } => "pivot-root",
            Step::RootReadOnly => "root-ro",
        }
    }
}

/// What a host directory of the base root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    /// A real directory: bind-mounted read-only.
    Dir(PathBuf),
    /// A symlink (Debian's merged /usr: `/bin -> usr/bin`): recreated as the same symlink.
    Link(PathBuf, PathBuf),
}

/// The host side of every sandbox's root filesystem, inspected once.
#[derive(Debug, Clone)]
pub struct HostLayout {
    /// Empty host directory each child mounts its private root tmpfs on.
    pub root_dir: PathBuf,
    /// A prepared minimal /etc (passwd, group, hosts, …) bound read-only at /etc.
    pub etc_dir: PathBuf,
    /// The runtime directories of the host (/usr, /lib, /lib64, /bin, /sbin).
    pub base: Vec<HostEntry>,
    /// Host /etc entries bound into the sandbox's /etc when they exist (TLS roots).
    pub etc_extra: Vec<PathBuf>,
}

/// The base directories of a root filesystem and whether the host has them.
pub fn inspect_base(dirs: &[&str]) -> Vec<HostEntry> {
    dirs.iter()
        .filter_map(|d| {
            let p = Path::new(d);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    std::fs::read_link(p).ok().map(|t| HostEntry::Link(p.to_path_buf(), t))
                }
                Ok(m) if m.is_dir() => Some(HostEntry::Dir(p.to_path_buf())),
                _ => None,
            }
        })
        .collect()
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::InvalidSpec(format!("path {} contains a NUL byte", p.display())))
}

fn under(root: &Path, inside: &Path) -> Result<PathBuf> {
    if !inside.is_absolute() {
        return Err(SandboxError::InvalidSpec(format!(
            "sandbox path {} is not absolute",
            inside.display()
        )));
    }
    if inside
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(SandboxError::InvalidSpec(format!(
            "sandbox path {} contains `..`",
            inside.display()
        )));
    }
    Ok(root.join(inside.strip_prefix("/").unwrap_or(inside)))
}

/// Directories to create on the way to `target` (relative to the new root), outermost first,
/// skipping those already created.
fn mkdir_all(root: &Path, inside: &Path, made: &mut Vec<PathBuf>, steps: &mut Vec<Step>) -> Result<()> {
    let mut acc = PathBuf::from("/");
    for comp in inside.components().skip(1) {
        acc.push(comp);
        if !made.contains(&acc) {
            made.push(acc.clone());
            steps.push(Step::Mkdir {
                path: cstr(&under(root, &acc)?)?,
            });
        }
    }
    Ok(())
}

/// The skeleton of every root: a tiny tmpfs that only holds mount points (remounted read-only
/// at the end), the host's runtime directories bound read-only, the minimal /etc, the five
/// device nodes, and empty mount points for the code, /tmp and /proc.
///
/// It holds nothing of any one sandbox, which is what lets [`template`] build it once and
/// every sandbox start from a copy.
fn skeleton(host: &HostLayout, made: &mut Vec<PathBuf>) -> Result<Vec<Step>> {
    let root = host.root_dir.as_path();
    let mut steps = vec![Step::Tmpfs {
        target: cstr(root)?,
        flags: libc::MS_NOSUID,
        options: c"size=1m,mode=0755".to_owned(),
    }];
    for entry in &host.base {
        match entry {
            HostEntry::Dir(d) => {
                mkdir_all(root, d, made, &mut steps)?;
                steps.push(Step::BindReadOnly {
                    source: cstr(d)?,
                    target: cstr(&under(root, d)?)?,
                });
            }
            HostEntry::Link(l, t) => steps.push(Step::Symlink {
                target: cstr(t)?,
                link: cstr(&under(root, l)?)?,
            }),
        }
    }
    // /etc: the prepared minimal one, plus selected host entries on top.
    mkdir_all(root, Path::new("/etc"), made, &mut steps)?;
    steps.push(Step::BindReadOnly {
        source: cstr(&host.etc_dir)?,
        target: cstr(&under(root, Path::new("/etc"))?)?,
    });
    for extra in &host.etc_extra {
        // The prepared /etc already holds an empty directory for each extra entry.
        steps.push(Step::BindReadOnly {
            source: cstr(extra)?,
            target: cstr(&under(root, extra)?)?,
        });
    }
    mkdir_all(root, Path::new("/dev"), made, &mut steps)?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
    ] {
        steps.push(Step::CharDevice {
            path: cstr(&root.join("dev").join(name))?,
            major,
            minor,
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: CString::new(target).expect("literal"),
            link: cstr(&root.join("dev").join(link))?,
        });
    }
    for dir in [CODE_DIR, "/tmp", "/proc"] {
        mkdir_all(root, Path::new(dir), made, &mut steps)?;
    }
    Ok(steps)
}

/// Mount points of the spec's extra bind mounts that the skeleton does not have.
fn mount_points(spec: &SandboxSpec, host: &HostLayout, made: &mut Vec<PathBuf>) -> Result<Vec<Step>> {
    let root = host.root_dir.as_path();
    let mut steps = Vec::new();
    for m in &spec.mounts {
        if m.source.is_dir() {
            mkdir_all(root, &m.target, made, &mut steps)?;
        } else {
            if let Some(parent) = m.target.parent() {
                mkdir_all(root, parent, made, &mut steps)?;
            }
            steps.push(Step::Touch {
                path: cstr(&under(root, &m.target)?)?,
            });
        }
    }
    Ok(steps)
}

/// The tmpfs options of a sandbox's /tmp.
pub(crate) fn tmp_options(spec: &SandboxSpec) -> String {
    format!("size={},mode=1777", spec.limits.tmp_bytes)
}

/// What is this sandbox's own, done in its mount namespace on top of a skeleton: the code and
/// extra binds, its own /tmp and /proc, the pivot and the read-only remount of the root.
fn own_mounts(spec: &SandboxSpec, host: &HostLayout) -> Result<Vec<Step>> {
    let root = host.root_dir.as_path();
    let mut steps = Vec::new();
    if let Some(code) = &spec.code {
        steps.push(Step::BindReadOnly {
            source: cstr(code)?,
            target: cstr(&under(root, Path::new(CODE_DIR))?)?,
        });
    }
    for m in &spec.mounts {
        steps.push(Step::BindReadOnly {
            source: cstr(&m.source)?,
            target: cstr(&under(root, &m.target)?)?,
        });
    }
    steps.push(Step::Tmpfs {
        target: cstr(&under(root, Path::new("/tmp"))?)?,
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        options: CString::new(tmp_options(spec)).expect("a formatted number has no NUL byte"),
    });
    steps.push(Step::Proc {
        target: cstr(&root.join("proc"))?,
    });
    steps.push(Step::PivotRoot { new_root: cstr(root)? });
    steps.push(Step::RootReadOnly);
    Ok(steps)
}

/// Build the whole filesystem plan of a sandbox, from scratch: every mount of the root is
/// made in the child's own mount namespace.
pub fn build(spec: &SandboxSpec, host: &HostLayout) -> Result<Vec<Step>> {
    let mut made = Vec::new();
    let mut steps = vec![Step::MakePrivate];
    steps.extend(skeleton(host, &mut made)?);
    steps.extend(mount_points(spec, host, &mut made)?);
    steps.extend(own_mounts(spec, host)?);
    Ok(steps)
}

/// The root template: the skeleton, built once at `host.root_dir` in the spawner's private
/// mount namespace. Returns the steps and the directories they create.
pub fn template(host: &HostLayout) -> Result<(Vec<Step>, Vec<PathBuf>)> {
    let mut made = Vec::new();
    let steps = skeleton(host, &mut made)?;
    Ok((steps, made))
}

/// A sandbox's plan on top of the root template. `made` is what [`template`] returned.
///
/// Returns the steps the spawner runs in the template before the clone (mount points for the
/// spec's extra binds; creating one that exists is not an error) and the child's steps. The
/// child gets a copy of the template's mounts with its new mount namespace, so it only makes
/// its own mounts: for a sandbox with code and no extra binds that is 5 mount calls, against
/// about 25 calls from scratch.
///
/// `MakePrivate` comes after the pivot, where it only has the sandbox's own few mounts to
/// walk: the binds of host folders (code, extra mounts) are slaves of the host's mounts until
/// then, and the host's later mount events must not reach a running sandbox. (Nothing flows
/// the other way: the spawner's namespace holds only slave copies of the host's mounts.)
pub fn on_template(spec: &SandboxSpec, host: &HostLayout, made: &[PathBuf]) -> Result<(Vec<Step>, Vec<Step>)> {
    let prepare = if spec.mounts.is_empty() {
        Vec::new()
    } else {
        mount_points(spec, host, &mut made.to_vec())?
    };
    let mut child = own_mounts(spec, host)?;
    let ro = child.pop();
    child.push(Step::MakePrivate);
    child.extend(ro);
    Ok((prepare, child))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::BindMount;

    fn layout() -> HostLayout {
        HostLayout {
            root_dir: PathBuf::from("/run/strata/root"),
            etc_dir: PathBuf::from("/run/strata/etc"),
            base: vec![
                HostEntry::Dir(PathBuf::from("/usr")),
                HostEntry::Link(PathBuf::from("/bin"), PathBuf::from("usr/bin")),
                HostEntry::Dir(PathBuf::from("/lib")),
            ],
            etc_extra: vec![PathBuf::from("/etc/ssl")],
        }
    }

    fn s(c: &CString) -> String {
        c.to_string_lossy().into_owned()
    }

    #[test]
    fn every_bind_is_read_only_and_nothing_from_sys_or_dev_of_host() {
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.code = Some(PathBuf::from("/srv/fn/code"));
        let steps = build(&spec, &layout()).unwrap();
        let binds: Vec<(String, String)> = steps
            .iter()
            .filter_map(|st| match st {
                Step::BindReadOnly { source, target } => Some((s(source), s(target))),
                _ => None,
            })
            .collect();
        assert_eq!(
            binds,
            vec![
                ("/usr".into(), "/run/strata/root/usr".into()),
                ("/lib".into(), "/run/strata/root/lib".into()),
                ("/run/strata/etc".into(), "/run/strata/root/etc".into()),
                ("/etc/ssl".into(), "/run/strata/root/etc/ssl".into()),
                ("/srv/fn/code".into(), "/run/strata/root/code".into()),
            ]
        );
        assert!(
            binds
                .iter()
                .all(|(src, _)| !src.starts_with("/sys") && !src.starts_with("/dev"))
        );
    }

    #[test]
    fn order_is_private_root_then_pivot_then_read_only() {
        let spec = SandboxSpec::new("/usr/bin/true", vec![]);
        let steps = build(&spec, &layout()).unwrap();
        assert_eq!(steps.first(), Some(&Step::MakePrivate));
        assert!(matches!(steps.get(1), Some(Step::Tmpfs { .. })));
        let n = steps.len();
        assert!(matches!(steps[n - 2], Step::PivotRoot { .. }));
        assert_eq!(steps[n - 1], Step::RootReadOnly);
        let proc_at = steps.iter().position(|s| matches!(s, Step::Proc { .. })).unwrap();
        assert!(proc_at < n - 2, "proc is mounted before the pivot");
    }

    #[test]
    fn on_the_template_a_sandbox_makes_only_its_own_mounts() {
        let (template_steps, made) = template(&layout()).unwrap();
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.code = Some(PathBuf::from("/srv/fn/code"));
        spec.limits.tmp_bytes = 1 << 20;
        let (prepare, child) = on_template(&spec, &layout(), &made).unwrap();
        assert!(
            prepare.is_empty(),
            "code, /tmp and /proc have mount points in the template"
        );
        let names: Vec<&str> = child.iter().map(Step::name).collect();
        assert_eq!(
            names,
            ["bind-ro", "tmpfs", "proc", "pivot-root", "make-private", "root-ro"]
        );
        assert_eq!(
            child[0],
            Step::BindReadOnly {
                source: c"/srv/fn/code".to_owned(),
                target: c"/run/strata/root/code".to_owned()
            }
        );
        // The template is the scratch plan minus what is the sandbox's own (which makes its
        // mounts private after the pivot rather than before the skeleton).
        let scratch = build(&spec, &layout()).unwrap();
        assert_eq!(scratch[0], Step::MakePrivate);
        let mut joined = vec![Step::MakePrivate];
        joined.extend(template_steps.iter().cloned());
        joined.extend(child.iter().filter(|s| **s != Step::MakePrivate).cloned());
        assert_eq!(scratch, joined);
        assert!(
            !template_steps
                .iter()
                .any(|st| matches!(st, Step::Proc { .. } | Step::PivotRoot { .. }))
        );
    }

    #[test]
    fn extra_mount_points_are_made_in_the_template_before_the_clone() {
        let (_, made) = template(&layout()).unwrap();
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.mounts.push(BindMount {
            source: "/nonexistent/file.py".into(),
            target: "/strata/bootstrap.py".into(),
        });
        let (prepare, child) = on_template(&spec, &layout(), &made).unwrap();
        assert_eq!(
            prepare,
            vec![
                Step::Mkdir {
                    path: c"/run/strata/root/strata".to_owned()
                },
                Step::Touch {
                    path: c"/run/strata/root/strata/bootstrap.py".to_owned()
                },
            ]
        );
        assert!(child.contains(&Step::BindReadOnly {
            source: c"/nonexistent/file.py".to_owned(),
            target: c"/run/strata/root/strata/bootstrap.py".to_owned()
        }));
    }

    #[test]
    fn merged_usr_symlinks_are_recreated_not_bound() {
        let spec = SandboxSpec::new("/usr/bin/true", vec![]);
        let steps = build(&spec, &layout()).unwrap();
        assert!(steps.contains(&Step::Symlink {
            target: c"usr/bin".to_owned(),
            link: c"/run/strata/root/bin".to_owned()
        }));
    }

    #[test]
    fn tmp_is_size_limited_and_dev_has_only_the_five_nodes() {
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.limits.tmp_bytes = 1 << 20;
        let steps = build(&spec, &layout()).unwrap();
        assert!(steps.iter().any(|st| matches!(st, Step::Tmpfs { target, options, .. }
            if s(target) == "/run/strata/root/tmp" && s(options) == "size=1048576,mode=1777")));
        let devs: Vec<String> = steps
            .iter()
            .filter_map(|st| match st {
                Step::CharDevice { path, .. } => Some(s(path)),
                _ => None,
            })
            .collect();
        assert_eq!(devs.len(), 5);
        assert!(devs.iter().all(|d| d.starts_with("/run/strata/root/dev/")));
    }

    #[test]
    fn mount_targets_must_be_absolute_and_stay_inside() {
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.mounts.push(BindMount {
            source: "/tmp".into(),
            target: "/a/../../etc".into(),
        });
        assert!(matches!(build(&spec, &layout()), Err(SandboxError::InvalidSpec(m)) if m.contains("..")));
        spec.mounts[0].target = "relative".into();
        assert!(matches!(build(&spec, &layout()), Err(SandboxError::InvalidSpec(m)) if m.contains("not absolute")));
    }

    #[test]
    fn each_directory_is_created_once() {
        let mut spec = SandboxSpec::new("/usr/bin/true", vec![]);
        spec.mounts.push(BindMount {
            source: "/tmp".into(),
            target: "/strata/runtime".into(),
        });
        spec.mounts.push(BindMount {
            source: "/tmp".into(),
            target: "/strata/other".into(),
        });
        let steps = build(&spec, &layout()).unwrap();
        let strata = steps
            .iter()
            .filter(|st| matches!(st, Step::Mkdir { path } if s(path) == "/run/strata/root/strata"))
            .count();
        assert_eq!(strata, 1);
    }
}
