//! Limits and accounting through cgroups, v1 and v2.
//!
//! [`Hierarchy::detect`] reads the mount table and picks v2 when a unified hierarchy with
//! the memory, cpu and pids controllers is available, else the v1 controllers. Each sandbox
//! gets its own group under `strata/`; the file operations go through [`CgroupFs`], so both
//! drivers are unit-tested against an in-memory fake and the v1 driver against the real
//! kernel as well.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Result, SandboxError};
use crate::spec::{Limits, Usage};

/// File operations on a cgroup filesystem.
pub trait CgroupFs: Send + Sync {
    /// Create a directory (a cgroup); an existing one is fine.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Remove a cgroup directory.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Write a control file.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Read a control file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Sub-directories of a directory.
    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real cgroup filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

/// Which cgroup hierarchy this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy mounted at this path, with memory, cpu and pids enabled.
    V2 {
        /// Mount point.
        root: PathBuf,
    },
    /// One mount per controller (or shared, like `cpu,cpuacct`).
    V1 {
        /// memory controller mount.
        memory: PathBuf,
        /// cpu controller mount (CFS quota).
        cpu: PathBuf,
        /// cpuacct controller mount (CPU accounting).
        cpuacct: PathBuf,
        /// pids controller mount.
        pids: PathBuf,
    },
}

/// Name of the parent group every sandbox group lives under.
pub const PARENT: &str = "strata";

const CFS_PERIOD_US: u64 = 100_000;

impl Hierarchy {
    /// Pick a hierarchy from `/proc/self/mountinfo` text; `controllers_of` returns the
    /// content of a v2 mount's `cgroup.controllers`.
    pub fn from_mountinfo(mountinfo: &str, controllers_of: impl Fn(&Path) -> Option<String>) -> Result<Self> {
        let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let mut v2_missing = String::from("no cgroup2 mount");
        for line in mountinfo.lines() {
            // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4);
            let mut r = right.split(' ');
            let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
            let Some(mp) = mount_point else { continue };
            match fstype {
                Some("cgroup2") => {
                    let ctrls = controllers_of(Path::new(mp)).unwrap_or_default();
                    let have: Vec<&str> = ctrls.split_whitespace().collect();
                    let missing: Vec<&str> = ["memory", "cpu", "pids"]
                        .into_iter()
                        .filter(|c| !have.contains(c))
                        .collect();
                    if missing.is_empty() {
                        return Ok(Hierarchy::V2 {
                            root: PathBuf::from(mp),
                        });
                    }
                    v2_missing = format!("cgroup2 at {mp} lacks {}", missing.join(","));
                }
                Some("cgroup") => {
                    v1.push((PathBuf::from(mp), opts.split(',').map(str::to_owned).collect()));
                }
                _ => {}
            }
        }
        let find = |c: &str| {
            v1.iter()
                .find(|(_, o)| o.iter().any(|x| x == c))
                .map(|(p, _)| p.clone())
        };
        match (find("memory"), find("cpu"), find("cpuacct"), find("pids")) {
            (Some(memory), Some(cpu), Some(cpuacct), Some(pids)) => Ok(Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            }),
            _ => Err(SandboxError::NoCgroups(format!(
                "{v2_missing}; v1 lacks one of memory, cpu, cpuacct, pids"
            ))),
        }
    }

    /// Detect the hierarchy of this host.
    pub fn detect() -> Result<Self> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| SandboxError::NoCgroups(e.to_string()))?;
        Self::from_mountinfo(&mi, |p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())
    }

    /// "v1" or "v2".
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }

    /// The parent directories (one per distinct v1 mount).
    fn parents(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match self {
            Hierarchy::V2 { root } => vec![root.join(PARENT)],
            Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => [memory, cpu, cpuacct, pids].iter().map(|p| p.join(PARENT)).collect(),
        };
        out.dedup();
        out
    }

    /// Create the parent group(s) once: v2 needs the controllers enabled for children.
    pub fn prepare(&self, fs: &dyn CgroupFs) -> Result<()> {
        for p in self.parents() {
            fs.mkdir(&p).map_err(|source| SandboxError::Cgroup {
                op: "mkdir",
                path: p.clone(),
                source,
            })?;
        }
        if let Hierarchy::V2 { root } = self {
            let ctl = root.join("cgroup.subtree_control");
            // The root's subtree_control may already have them; writing is idempotent.
            fs.write(&ctl, "+memory +cpu +pids")
                .map_err(|source| SandboxError::Cgroup {
                    op: "write",
                    path: ctl,
                    source,
                })?;
            let ctl = root.join(PARENT).join("cgroup.subtree_control");
            fs.write(&ctl, "+memory +cpu +pids")
                .map_err(|source| SandboxError::Cgroup {
                    op: "write",
                    path: ctl,
                    source,
                })?;
        }
        Ok(())
    }

    /// Create the group `name` with `limits`.
    pub fn create(&self, fs: &dyn CgroupFs, name: &str, limits: &Limits) -> Result<Cgroup> {
        let dirs: Vec<PathBuf> = match self {
            Hierarchy::V2 { root } => vec![root.join(PARENT).join(name)],
            Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => {
                let mut d: Vec<PathBuf> = [memory, cpu, cpuacct, pids]
                    .iter()
                    .map(|p| p.join(PARENT).join(name))
                    .collect();
                d.dedup();
                d
            }
        };
        let cg = Cgroup {
            hierarchy: self.clone(),
            name: name.to_owned(),
            dirs,
        };
        for d in &cg.dirs {
            fs.mkdir(d).map_err(|source| SandboxError::Cgroup {
                op: "mkdir",
                path: d.clone(),
                source,
            })?;
        }
        let writes = self.limit_writes(&cg, limits);
        for (path, value, required) in writes {
            if let Err(source) = fs.write(&path, &value)
                && required
            {
                {
                    let _ = cg.remove(fs);
                    return Err(SandboxError::Cgroup {
                        op: "write",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(cg)
    }

    /// The control-file writes that set `limits` on `cg`: (file, value, required).
    fn limit_writes(&self, cg: &Cgroup, limits: &Limits) -> Vec<(PathBuf, String, bool)> {
        match self {
            Hierarchy::V2 { .. } => {
                let d = &cg.dirs[0];
                let cpu = match limits.cpu_millis {
                    Some(m) => format!("{} {CFS_PERIOD_US}", u64::from(m) * CFS_PERIOD_US / 1000),
                    None => format!("max {CFS_PERIOD_US}"),
                };
                vec![
                    (d.join("memory.max"), limits.memory_bytes.to_string(), true),
                    (d.join("memory.swap.max"), "0".into(), false),
                    (d.join("cpu.max"), cpu, true),
                    (d.join("pids.max"), limits.pids.to_string(), true),
                ]
            }
            Hierarchy::V1 { memory, cpu, pids, .. } => {
                let m = memory.join(PARENT).join(&cg.name);
                let c = cpu.join(PARENT).join(&cg.name);
                let p = pids.join(PARENT).join(&cg.name);
                let quota = limits
                    .cpu_millis
                    .map_or("-1".to_owned(), |m| (u64::from(m) * CFS_PERIOD_US / 1000).to_string());
                vec![
                    (m.join("memory.limit_in_bytes"), limits.memory_bytes.to_string(), true),
                    // memsw exists only with swap accounting; where it does, no swap on top.
                    (
                        m.join("memory.memsw.limit_in_bytes"),
                        limits.memory_bytes.to_string(),
                        false,
                    ),
                    (c.join("cpu.cfs_period_us"), CFS_PERIOD_US.to_string(), true),
                    (c.join("cpu.cfs_quota_us"), quota, true),
                    (p.join("pids.max"), limits.pids.to_string(), true),
                ]
            }
        }
    }

    /// Change a group's limits from `from` to `to`, writing only what differs (for groups
    /// created ahead of time with default limits).
    pub fn apply_limits(&self, fs: &dyn CgroupFs, cg: &Cgroup, from: &Limits, to: &Limits) -> Result<()> {
        let old = self.limit_writes(cg, from);
        let mut writes: Vec<(PathBuf, String, bool)> = self
            .limit_writes(cg, to)
            .into_iter()
            .filter(|w| !old.iter().any(|o| o.0 == w.0 && o.1 == w.1))
            .collect();
        if to.memory_bytes > from.memory_bytes {
            // v1: memory+swap may never be below memory, so raise it first.
            writes.sort_by_key(|(p, _, _)| !p.ends_with("memory.memsw.limit_in_bytes"));
        }
        for (path, value, required) in writes {
            if let Err(source) = fs.write(&path, &value)
                && required
            {
                return Err(SandboxError::Cgroup {
                    op: "write",
                    path,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Remove every group under the parent (their processes are killed first).
    pub fn sweep(&self, fs: &dyn CgroupFs) -> usize {
        self.sweep_where(fs, |_| true)
    }

    /// Remove the groups under the parent whose name passes `pick`.
    pub fn sweep_where(&self, fs: &dyn CgroupFs, pick: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for parent in self.parents() {
            let Ok(children) = fs.subdirs(&parent) else { continue };
            for child in children {
                let Some(name) = child.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !pick(name) {
                    continue;
                }
                let cg = match self.create_handle(name) {
                    Some(cg) => cg,
                    None => continue,
                };
                cg.kill_all(fs);
                if cg.remove(fs).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn create_handle(&self, name: &str) -> Option<Cgroup> {
        let dirs: Vec<PathBuf> = self.parents().into_iter().map(|p| p.join(name)).collect();
        Some(Cgroup {
            hierarchy: self.clone(),
            name: name.to_owned(),
            dirs,
        })
    }
}

/// One sandbox's cgroup (one directory per v1 controller mount, or one v2 directory).
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    name: String,
    dirs: Vec<PathBuf>,
}

pub(crate) fn first_number(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

impl Cgroup {
    /// The group's name under `strata/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every `cgroup.procs` file a process must join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Read the usage counters.
    pub fn usage(&self, fs: &dyn CgroupFs) -> Usage {
        let read = |p: PathBuf| fs.read(&p).unwrap_or_default();
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let d = &self.dirs[0];
                Usage {
                    cpu_usec: first_number(&read(d.join("cpu.stat")), "usage_usec").unwrap_or(0),
                    memory_peak_bytes: read(d.join("memory.peak")).trim().parse().unwrap_or(0),
                    oom_kills: first_number(&read(d.join("memory.events")), "oom_kill").unwrap_or(0),
                }
            }
            Hierarchy::V1 { memory, cpuacct, .. } => {
                let m = memory.join(PARENT).join(&self.name);
                let a = cpuacct.join(PARENT).join(&self.name);
                Usage {
                    cpu_usec: read(a.join("cpuacct.usage")).trim().parse::<u64>().unwrap_or(0) / 1000,
                    memory_peak_bytes: read(m.join("memory.max_usage_in_bytes")).trim().parse().unwrap_or(0),
                    oom_kills: first_number(&read(m.join("memory.oom_control")), "oom_kill").unwrap_or(0),
                }
            }
        }
    }

    /// The files live CPU and peak-memory figures are read from: (cpu file, whether it is
    /// v2's `cpu.stat` rather than v1's `cpuacct.usage` in ns, peak memory file).
    pub fn live_usage_files(&self) -> (PathBuf, bool, PathBuf) {
        match &self.hierarchy {
            Hierarchy::V2 { .. } => (self.dirs[0].join("cpu.stat"), true, self.dirs[0].join("memory.peak")),
            Hierarchy::V1 { memory, cpuacct, .. } => (
                cpuacct.join(PARENT).join(&self.name).join("cpuacct.usage"),
                false,
                memory.join(PARENT).join(&self.name).join("memory.max_usage_in_bytes"),
            ),
        }
    }

    /// Pids of every process in the group.
    pub fn pids(&self, fs: &dyn CgroupFs) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for f in self.procs_files() {
            for l in fs.read(&f).unwrap_or_default().lines() {
                if let Ok(p) = l.trim().parse::<i32>()
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    /// SIGKILL every process in the group (v2: `cgroup.kill`; v1: one by one, repeated
    /// until the group is empty, since a fork can race the listing).
    pub fn kill_all(&self, fs: &dyn CgroupFs) {
        if let Hierarchy::V2 { .. } = self.hierarchy
            && fs.write(&self.dirs[0].join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for _ in 0..10 {
            let pids = self.pids(fs);
            if pids.is_empty() {
                return;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid read from the group; no memory is involved.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }

    /// Remove the group's directories. Fails while processes remain.
    pub fn remove(&self, fs: &dyn CgroupFs) -> Result<()> {
        let mut first_err = None;
        for d in &self.dirs {
            if let Err(source) = fs.rmdir(d)
                && source.kind() != io::ErrorKind::NotFound
                && first_err.is_none()
            {
                {
                    first_err = Some(SandboxError::Cgroup {
                        op: "rmdir",
                        path: d.clone(),
                        source,
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory cgroup filesystem.
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct MemFs {
        pub files: Mutex<BTreeMap<PathBuf, String>>,
        pub dirs: Mutex<Vec<PathBuf>>,
        /// Writes to paths ending with this fail with ENOENT (a missing control file).
        pub missing: Vec<&'static str>,
    }

    impl CgroupFs for MemFs {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            self.dirs.lock().unwrap().push(path.to_path_buf());
            Ok(())
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            let mut d = self.dirs.lock().unwrap();
            let before = d.len();
            d.retain(|x| x != path);
            if d.len() == before {
                Err(io::ErrorKind::NotFound.into())
            } else {
                Ok(())
            }
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            if self.missing.iter().any(|m| path.to_string_lossy().ends_with(m)) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.files.lock().unwrap().insert(path.to_path_buf(), value.to_owned());
            Ok(())
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.files
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.lock().unwrap().contains_key(path) || self.dirs.lock().unwrap().iter().any(|d| d == path)
        }
        fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
            Ok(self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.parent() == Some(path))
                .cloned()
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::MemFs;
    use super::*;

    const V1_HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 35 0:32 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
38 35 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 35 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2: &str =
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_host_with_empty_unified_hierarchy_uses_v1() {
        let h = Hierarchy::from_mountinfo(V1_HYBRID, |_| Some(String::new())).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct".into(),
                pids: "/sys/fs/cgroup/pids".into(),
            }
        );
    }

    #[test]
    fn unified_hierarchy_with_controllers_uses_v2() {
        let h = Hierarchy::from_mountinfo(V2, |_| Some("cpuset cpu io memory hugetlb pids rdma misc".into())).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn neither_hierarchy_is_a_clear_error() {
        let err = Hierarchy::from_mountinfo(V2, |_| Some("cpu io".into())).unwrap_err();
        assert!(err.to_string().contains("lacks memory,pids"), "{err}");
    }

    #[test]
    fn combined_cpu_cpuacct_mount_is_one_directory() {
        let mi = "1 0 0:1 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n2 0 0:2 / /c/memory rw - cgroup cgroup rw,memory\n3 0 0:3 / /c/pids rw - cgroup cgroup rw,pids\n";
        let h = Hierarchy::from_mountinfo(mi, |_| None).unwrap();
        let fs = MemFs::default();
        let cg = h.create(&fs, "s1", &Limits::default()).unwrap();
        assert_eq!(cg.procs_files().len(), 3);
    }

    #[test]
    fn v2_limits_and_usage() {
        let h = Hierarchy::V2 { root: "/cg".into() };
        let fs = MemFs::default();
        h.prepare(&fs).unwrap();
        assert_eq!(
            fs.read(Path::new("/cg/strata/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let limits = Limits {
            memory_bytes: 64 << 20,
            cpu_millis: Some(500),
            pids: 32,
            ..Limits::default()
        };
        let cg = h.create(&fs, "s1", &limits).unwrap();
        assert_eq!(fs.read(Path::new("/cg/strata/s1/memory.max")).unwrap(), "67108864");
        assert_eq!(fs.read(Path::new("/cg/strata/s1/memory.swap.max")).unwrap(), "0");
        assert_eq!(fs.read(Path::new("/cg/strata/s1/cpu.max")).unwrap(), "50000 100000");
        assert_eq!(fs.read(Path::new("/cg/strata/s1/pids.max")).unwrap(), "32");
        assert_eq!(cg.procs_files(), vec![PathBuf::from("/cg/strata/s1/cgroup.procs")]);

        fs.write(Path::new("/cg/strata/s1/cpu.stat"), "usage_usec 1500\nuser_usec 1000\n")
            .unwrap();
        fs.write(Path::new("/cg/strata/s1/memory.peak"), "4096\n").unwrap();
        fs.write(
            Path::new("/cg/strata/s1/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cg.usage(&fs),
            Usage {
                cpu_usec: 1500,
                memory_peak_bytes: 4096,
                oom_kills: 1
            }
        );

        cg.kill_all(&fs);
        assert_eq!(fs.read(Path::new("/cg/strata/s1/cgroup.kill")).unwrap(), "1");
        cg.remove(&fs).unwrap();
        assert!(!fs.exists(Path::new("/cg/strata/s1")));
    }

    #[test]
    fn v2_unlimited_cpu_is_max() {
        let h = Hierarchy::V2 { root: "/cg".into() };
        let fs = MemFs::default();
        h.create(&fs, "s", &Limits::default()).unwrap();
        assert_eq!(fs.read(Path::new("/cg/strata/s/cpu.max")).unwrap(), "max 100000");
    }

    #[test]
    fn v2_without_swap_accounting_still_works_but_a_missing_memory_max_fails() {
        let h = Hierarchy::V2 { root: "/cg".into() };
        let fs = MemFs {
            missing: vec!["memory.swap.max"],
            ..Default::default()
        };
        assert!(h.create(&fs, "s", &Limits::default()).is_ok());
        let fs = MemFs {
            missing: vec!["memory.max"],
            ..Default::default()
        };
        let err = h.create(&fs, "s", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("memory.max"), "{err}");
        assert!(
            fs.dirs.lock().unwrap().iter().all(|d| !d.ends_with("s")),
            "a failed create leaves no group"
        );
    }

    #[test]
    fn v1_limits_and_usage() {
        let h = Hierarchy::from_mountinfo(V1_HYBRID, |_| None).unwrap();
        let fs = MemFs::default();
        let limits = Limits {
            memory_bytes: 1 << 20,
            cpu_millis: Some(250),
            pids: 8,
            ..Limits::default()
        };
        let cg = h.create(&fs, "x", &limits).unwrap();
        assert_eq!(
            fs.read(Path::new("/sys/fs/cgroup/memory/strata/x/memory.limit_in_bytes"))
                .unwrap(),
            "1048576"
        );
        assert_eq!(
            fs.read(Path::new("/sys/fs/cgroup/cpu/strata/x/cpu.cfs_quota_us"))
                .unwrap(),
            "25000"
        );
        assert_eq!(
            fs.read(Path::new("/sys/fs/cgroup/pids/strata/x/pids.max")).unwrap(),
            "8"
        );
        assert_eq!(cg.procs_files().len(), 4);
        fs.write(Path::new("/sys/fs/cgroup/cpuacct/strata/x/cpuacct.usage"), "2000000\n")
            .unwrap();
        fs.write(
            Path::new("/sys/fs/cgroup/memory/strata/x/memory.max_usage_in_bytes"),
            "9000\n",
        )
        .unwrap();
        fs.write(
            Path::new("/sys/fs/cgroup/memory/strata/x/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(
            cg.usage(&fs),
            Usage {
                cpu_usec: 2000,
                memory_peak_bytes: 9000,
                oom_kills: 2
            }
        );
    }

    #[test]
    fn pooled_groups_get_only_the_limits_that_differ() {
        let h = Hierarchy::from_mountinfo(V1_HYBRID, |_| None).unwrap();
        let fs = MemFs::default();
        let cg = h.create(&fs, "p", &Limits::default()).unwrap();
        fs.files.lock().unwrap().clear();
        let bigger = Limits {
            memory_bytes: 512 << 20,
            ..Limits::default()
        };
        h.apply_limits(&fs, &cg, &Limits::default(), &bigger).unwrap();
        let files = fs.files.lock().unwrap();
        let names: Vec<String> = files
            .keys()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            "only memory changed"
        );
        assert_eq!(
            files[Path::new("/sys/fs/cgroup/memory/strata/p/memory.limit_in_bytes")],
            (512u64 << 20).to_string()
        );
    }

    #[test]
    fn sweep_removes_leftover_groups() {
        let h = Hierarchy::V2 { root: "/cg".into() };
        let fs = MemFs::default();
        h.prepare(&fs).unwrap();
        h.create(&fs, "old1", &Limits::default()).unwrap();
        h.create(&fs, "old2", &Limits::default()).unwrap();
        assert_eq!(h.sweep(&fs), 2);
        assert!(fs.subdirs(Path::new("/cg/strata")).unwrap().is_empty());
    }
}
