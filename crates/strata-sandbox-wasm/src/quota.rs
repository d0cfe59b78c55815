//! The CPU quota of the process's cgroup, for the spare-core reading (`recycle.rs`): a daemon
//! held to, say, one core's worth of time on a machine of many (a container's CPU limit,
//! Kubernetes' `limits.cpu`) has no core to spare while the quota throttles it, however idle
//! the machine's cores are.
//!
//! The quota is `cpu.max` ("QUOTA PERIOD" or "max PERIOD", cgroup v2) or
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none, v1), of the process's cgroup or an
//! ancestor (the tightest binds), found once at start; the signal is that cgroup's
//! `nr_throttled` in `cpu.stat` (both versions), read at every sample: it grows only while
//! the quota is used up. (Its share used was the first reading tried: one client calling back
//! to back used 0.83 of a one-core quota and counted as busy, where moving work off the
//! calls' path still paid; docs/benchmarks.md, "Under a CPU quota".)

use std::path::{Path, PathBuf};

/// The binding quota and where its cgroup counts throttling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quota {
    /// Cores' worth of CPU time the cgroup may use.
    pub(crate) cores: f64,
    /// Its `cpu.stat`.
    stat: PathBuf,
}

impl Quota {
    /// The process's binding quota, if it has one (none outside Linux, or without cgroups).
    pub(crate) fn find() -> Option<Quota> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let root = Path::new("/sys/fs/cgroup");
        let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let mut found: Vec<Quota> = Vec::new();
        // v2: the unified hierarchy, mounted at the root or (hybrid) at `unified`.
        if let Some(path) = cgroup_path(&cgroup, None) {
            for base in [root.to_path_buf(), root.join("unified")] {
                found.extend(quotas(&base, &path, |dir| parse_cpu_max(&read(dir, "cpu.max")?)));
            }
        }
        // v1: the cpu controller's hierarchy, alone or mounted with cpuacct.
        if let Some(path) = cgroup_path(&cgroup, Some("cpu")) {
            for base in ["cpu", "cpu,cpuacct", "cpuacct,cpu"].map(|d| root.join(d)) {
                found.extend(quotas(&base, &path, |dir| {
                    parse_cfs(&read(dir, "cpu.cfs_quota_us")?, &read(dir, "cpu.cfs_period_us")?)
                }));
            }
        }
        found.into_iter().min_by(|a, b| a.cores.total_cmp(&b.cores))
    }

    /// How many periods the quota has throttled the cgroup so far.
    pub(crate) fn throttled(&self) -> Option<u64> {
        parse_throttled(&std::fs::read_to_string(&self.stat).ok()?)
    }
}

/// The quotas `cores_of` finds on the cgroup at `path` under `base` and on its ancestors.
fn quotas(base: &Path, path: &str, cores_of: impl Fn(&Path) -> Option<f64>) -> Vec<Quota> {
    ancestors(base, path)
        .into_iter()
        .filter_map(|dir| {
            Some(Quota {
                cores: cores_of(&dir)?,
                stat: dir.join("cpu.stat"),
            })
        })
        .collect()
}

/// `dir` for the cgroup at `path` under `base`, then each of its parents up to `base`.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut out = vec![base.join(path.trim_start_matches('/'))];
    let mut p = Path::new(path);
    while let Some(parent) = p.parent() {
        out.push(base.join(parent.to_str().unwrap_or("").trim_start_matches('/')));
        p = parent;
    }
    out.dedup();
    out
}

/// The process's cgroup path from `/proc/self/cgroup`: the v2 entry (`0::/path`) when
/// `controller` is `None`, else the v1 hierarchy listing it (`4:cpu,cpuacct:/path`).
pub(crate) fn cgroup_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        (hit && path.starts_with('/')).then(|| path.to_owned())
    })
}

/// v2 `cpu.max`: "150000 100000" is 1.5 cores; "max 100000" is no quota.
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_whitespace();
    let (quota, period) = (f.next()?, f.next()?);
    ratio(quota.parse().ok()?, period.parse().ok()?)
}

/// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: -1 is no quota.
pub(crate) fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    ratio(u64::try_from(quota).ok()?, period.trim().parse().ok()?)
}

fn ratio(quota: u64, period: u64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `nr_throttled` of a `cpu.stat` (v1 and v2 alike).
pub(crate) fn parse_throttled(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_for_v2_and_for_a_v1_controller() {
        let hybrid = "9:name=systemd:/\n4:memory:/api/x\n2:cpuacct:/\n1:cpu:/pod/a\n0::/pod/a\n";
        assert_eq!(cgroup_path(hybrid, None).as_deref(), Some("/pod/a"));
        assert_eq!(cgroup_path(hybrid, Some("cpu")).as_deref(), Some("/pod/a"));
        assert_eq!(cgroup_path(hybrid, Some("cpuacct")).as_deref(), Some("/"));
        let joint = "3:cpu,cpuacct:/k/p\n";
        assert_eq!(cgroup_path(joint, Some("cpu")).as_deref(), Some("/k/p"));
        assert_eq!(cgroup_path(joint, None), None);
        assert_eq!(cgroup_path("garbage", Some("cpu")), None);
    }

    #[test]
    fn quotas_in_both_formats_and_the_throttling_count() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("0 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("x", "100000"), None);
        let v1 = "nr_periods 312\nnr_throttled 59\nthrottled_time 2500000000\n";
        assert_eq!(parse_throttled(v1), Some(59));
        let v2 = "usage_usec 1234\nnr_periods 3\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(parse_throttled(v2), Some(0));
        assert_eq!(parse_throttled("usage_usec 1\n"), None);
    }

    #[test]
    fn ancestors_go_up_to_the_hierarchy_root() {
        let a = ancestors(Path::new("/sys/fs/cgroup/cpu"), "/pod/a");
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/cpu/pod/a",
            "/sys/fs/cgroup/cpu/pod",
            "/sys/fs/cgroup/cpu/",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(a, want);
        assert_eq!(ancestors(Path::new("/c"), "/"), vec![PathBuf::from("/c/")]);
    }
}
