//! Spawn-to-exit latency of a process sandbox against plain fork+exec and `crun run`
//! (issue 2, point 5).
//!
//! Run as root: `cargo bench -p strata-sandbox --bench spawn`.
//!
//! One run measures three ways of starting a tiny static binary that returns 0 at once,
//! interleaved round-robin (the order rotates every round, so noise and background load hit
//! all three alike), after a warm-up:
//! - `strata sandbox`: `Backend::spawn` of a spec whose code folder holds the binary, default
//!   limits, `NetworkMode::None`; from before `spawn` to after `wait()` returned (which
//!   reads the usage and tears the cgroup down, or hands it to the backend's remover). The per-phase `SpawnTimings` are recorded too, and the
//!   time after `spawn` is split into run-until-exit (the pidfd turns readable) and teardown
//!   (`wait()`).
//! - `fork+exec`: `std::process::Command::new(binary).status()`.
//! - `crun run`: `crun run --bundle DIR <unique id>` of an OCI bundle with the binary as its
//!   rootfs, crun's default namespaces (pid, ipc, uts, mount, network) and a read-only root.
//!   Skipped, with a line saying so, when `crun` is not installed.
//!
//! Environment:
//! - `SPAWN_BENCH_N`: rounds (default 1000); `SPAWN_BENCH_WARMUP`: warm-up rounds (default 50).
//! - `SPAWN_BENCH_NETNS_POOL`: `BackendConfig::netns_pool` (default: the backend's default).
//! - `SPAWN_BENCH_NETWORK=host`: spawn with `NetworkMode::Host` (diagnostics only).
//! - `SPAWN_BENCH_NETNS_REUSE=0`: spawn without a `netns_key`, so every sandbox takes a fresh
//!   namespace from the pool. By default the sandboxes share one key, as the instances of
//!   one function version do in the platform, and reuse the namespaces of exited ones.
//! - `SPAWN_BENCH_TEMPLATE=0`: `BackendConfig::root_template` off, so every sandbox assembles
//!   its whole root instead of starting from a copy of the root template.
//! - `SPAWN_BENCH_NETNS_SCHED=idle|other`: put the backend's `strata-netns` refill thread
//!   under `SCHED_IDLE` or back under `SCHED_OTHER` (diagnostics only: an A/B of the refill
//!   thread's priority).
//! - `SPAWN_BENCH_ONLY=sandbox,fork,crun`: measure only these (diagnostics only).
//!
//! Prints a table (ms) and writes every figure to `target/bench/sandbox-spawn.json`.
//!
//! crun refuses to run on a hybrid cgroup host whose cgroup2 hierarchy has any controller
//! enabled ("cgroups in hybrid mode not supported"). On such a host, and only when crun is
//! measured, the bench first moves itself into a private mount namespace and, once the
//! backend has started (and remounted cgroup2 with `favordynmods`), detaches
//! `/sys/fs/cgroup/unified` there (the host keeps it); the sandbox uses the v1 controllers
//! either way.

use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strata_sandbox::{Backend, BackendConfig, ExitKind, NetworkMode, SandboxSpec, SpawnTimings};

const TARGET_P50_MS: f64 = 2.0;
const TARGET_P99_MS: f64 = 8.0;
const TARGET_VS_CRUN: f64 = 3.0;
const TARGET_VS_FORK: f64 = 4.0;

const UNIFIED: &str = "/sys/fs/cgroup/unified";

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn hist() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn ms(v: u64) -> f64 {
    v as f64 / 1e6
}

/// Summary of one histogram, in milliseconds.
#[derive(Clone, Copy)]
struct Stats {
    n: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(h: &Histogram<u64>) -> Self {
        Stats {
            n: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": round(self.p50),
            "p90_ms": round(self.p90),
            "p99_ms": round(self.p99),
            "max_ms": round(self.max),
            "mean_ms": round(self.mean),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Does this host have a hybrid cgroup layout whose cgroup2 part has controllers (which
/// crun rejects)?
fn hybrid_with_v2_controllers() -> bool {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|mi| {
            mi.lines()
                .any(|l| l.split(' ').nth(4) == Some(UNIFIED) && l.contains(" - cgroup2 "))
        })
        .unwrap_or(false);
    mounted
        && std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
}

/// Move this (still single-threaded) process into a private mount namespace in which the
/// cgroup2 mount of the hybrid layout is private, so it can later be detached there alone.
fn private_mount_namespace() -> Result<()> {
    let target = CString::new(UNIFIED).expect("no NUL");
    // SAFETY: unshare(2) with a flag constant; the process has no other thread yet, so the
    // whole process moves into the new mount namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
    }
    // SAFETY: mount(2) changing the propagation of one mount point to private (so the
    // detach below cannot propagate to the host); all pointers are valid C strings or null.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("make /sys/fs/cgroup/unified private");
    }
    Ok(())
}

/// Detach the cgroup2 mount in this process's private mount namespace (after the backend
/// has started: it remounts cgroup2 with `favordynmods`, a host-wide option), so crun sees a
/// pure v1 host.
fn hide_unified_hierarchy() -> Result<()> {
    let target = CString::new(UNIFIED).expect("no NUL");
    // SAFETY: umount2(2) of a valid C string path, in our private mount namespace.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error()).context("detach /sys/fs/cgroup/unified");
    }
    Ok(())
}

/// Whether every cgroup2 mount carries `favordynmods` (`None`: no cgroup2 mount).
fn cgroup2_favordynmods() -> Option<bool> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let v2: Vec<&str> = mi.lines().filter(|l| l.contains(" - cgroup2 ")).collect();
    (!v2.is_empty()).then(|| v2.iter().all(|l| l.contains("favordynmods")))
}

/// Compile `int main(void){return 0;}` statically into a fresh directory readable by all.
fn build_true_static() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("strata-spawn-bench-")
        .tempdir()
        .context("temp dir")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let src = dir.path().join("true.c");
    std::fs::write(&src, "int main(void){return 0;}\n")?;
    let bin = dir.path().join("true-static");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => bail!("cannot run gcc ({e}): install it with `apt-get install -y gcc libc6-dev`"),
    };
    if !out.status.success() {
        bail!(
            "gcc -static failed ({}): a static libc (libc.a, package libc6-dev) is needed.\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::remove_file(&src)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Ok((dir, bin))
}

/// An OCI bundle running `/true-static`: `crun spec`, then args, no terminal, read-only root.
fn crun_bundle(crun: &Path, bin: &Path, parent: &Path) -> Result<PathBuf> {
    let bundle = parent.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(bin, rootfs.join("true-static"))?;
    let out = Command::new(crun)
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .context("crun spec")?;
    ensure!(
        out.status.success(),
        "crun spec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?).context("crun's config.json")?;
    config["process"]["args"] = json!(["/true-static"]);
    config["process"]["terminal"] = json!(false);
    config["root"]["readonly"] = json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}

fn crun_namespaces(bundle: &Path) -> Vec<String> {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| {
            c["linux"]["namespaces"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n["type"].as_str().map(str::to_owned)).collect())
        })
        .unwrap_or_default()
}

/// Put this process's threads named `name` under `policy`; returns how many.
fn set_thread_policy(name: &str, policy: libc::c_int) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let Ok(tid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(2) on a thread of this process with a valid param.
        if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setscheduler");
        }
        n += 1;
    }
    Ok(n)
}

/// Block until the pidfd is readable (the process has exited).
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) on one valid pollfd on our stack.
        let rc = unsafe { libc::poll(&mut p, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("poll pidfd");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sandbox,
    Fork,
    Crun,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sandbox => "strata sandbox",
            Kind::Fork => "fork+exec",
            Kind::Crun => "crun run",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::Sandbox => "strata_sandbox",
            Kind::Fork => "fork_exec",
            Kind::Crun => "crun_run",
        }
    }
}

/// `SpawnTimings` fields, then `spawn_other` (`total` minus the named phases: plan, argv,
/// pipe, stack), `handoff` (the `spawn` call minus `SpawnTimings::total`: the hop to the
/// spawner thread and back), `spawn_call`, then after `spawn` returned: `run_until_exit`
/// (until the pidfd is readable) and `teardown` (`wait()`: usage, cgroup teardown).
const PHASES: [&str; 13] = [
    "cgroup",
    "netns",
    "namespaces",
    "mounts",
    "privileges",
    "exec",
    "spawn_other",
    "spawn_total",
    "handoff",
    "spawn_call",
    "run_until_exit",
    "teardown",
    "total",
];

struct Recorder {
    total: [Histogram<u64>; 3],
    phases: Vec<Histogram<u64>>,
    pool_empty: u64,
    netns_slow: u64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            total: [hist(), hist(), hist()],
            phases: PHASES.iter().map(|_| hist()).collect(),
            pool_empty: 0,
            netns_slow: 0,
        }
    }
}

struct Ctx<'a> {
    backend: &'a Backend,
    code_dir: &'a Path,
    bin: &'a Path,
    network: NetworkMode,
    netns_key: Option<String>,
    crun: Option<(&'a Path, &'a Path)>,
    ids: u64,
}

fn once(ctx: &mut Ctx<'_>, kind: Kind, rec: Option<&mut Recorder>) -> Result<()> {
    match kind {
        Kind::Sandbox => {
            let mut spec = SandboxSpec::new("/code/true-static", vec![]);
            spec.code = Some(ctx.code_dir.to_path_buf());
            spec.network = ctx.network;
            spec.netns_key = ctx.netns_key.clone();
            let pool_empty = ctx.backend.netns_ready() == 0;
            let t0 = Instant::now();
            let mut sb = ctx.backend.spawn(spec).context("sandbox spawn")?;
            let t_spawned = Instant::now();
            wait_readable(sb.pidfd())?;
            let t_exited = Instant::now();
            let exit = sb.wait().context("sandbox wait")?;
            let t_end = Instant::now();
            ensure!(exit.kind == ExitKind::Exited(0), "sandbox exited with {:?}", exit.kind);
            if let Some(rec) = rec {
                let t: SpawnTimings = sb.timings();
                let known = t.cgroup + t.netns + t.namespaces + t.mounts + t.privileges + t.exec;
                let values = [
                    t.cgroup,
                    t.netns,
                    t.namespaces,
                    t.mounts,
                    t.privileges,
                    t.exec,
                    t.total.saturating_sub(known),
                    t.total,
                    (t_spawned - t0).saturating_sub(t.total),
                    t_spawned - t0,
                    t_exited - t_spawned,
                    t_end - t_exited,
                    t_end - t0,
                ];
                for (h, v) in rec.phases.iter_mut().zip(values) {
                    h.saturating_record(ns(v));
                }
                rec.total[0].saturating_record(ns(t_end - t0));
                rec.pool_empty += u64::from(pool_empty);
                // Taking a ready namespace is a mutex pop; creating one costs ~1 ms.
                rec.netns_slow += u64::from(t.netns > Duration::from_micros(200));
            }
        }
        Kind::Fork => {
            let t0 = Instant::now();
            let status = Command::new(ctx.bin).status().context("fork+exec")?;
            let d = t0.elapsed();
            ensure!(status.success(), "fork+exec: {status}");
            if let Some(rec) = rec {
                rec.total[1].saturating_record(ns(d));
            }
        }
        Kind::Crun => {
            let (crun, bundle) = ctx.crun.expect("crun measured only when present");
            ctx.ids += 1;
            let id = format!("strata-bench-{}-{}", std::process::id(), ctx.ids);
            let t0 = Instant::now();
            let status = Command::new(crun)
                .args(["run", "--bundle"])
                .arg(bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .status()
                .context("crun run")?;
            let d = t0.elapsed();
            if !status.success() {
                let _ = Command::new(crun).args(["delete", "-f", &id]).status();
                bail!("crun run {id}: {status}");
            }
            if let Some(rec) = rec {
                rec.total[2].saturating_record(ns(d));
            }
        }
    }
    Ok(())
}

fn first_line_with(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// "YYYY-MM-DDTHH:MM:SSZ" for a Unix time.
fn utc(secs: u64) -> String {
    let iso = strata_types::units::format_rfc3339_ms(secs * 1000);
    format!("{}Z", &iso[..19])
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "the spawn bench needs root (cgroups, namespaces)");
    let n = env_usize("SPAWN_BENCH_N", 1000)?;
    let warmup = env_usize("SPAWN_BENCH_WARMUP", 50)?;
    ensure!(n > 0, "SPAWN_BENCH_N must be positive");
    let only: Option<Vec<String>> = std::env::var("SPAWN_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
    let wanted = |k: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == k));
    let network = match std::env::var("SPAWN_BENCH_NETWORK").as_deref() {
        Ok("host") => NetworkMode::Host,
        _ => NetworkMode::None,
    };
    let netns_key = match std::env::var("SPAWN_BENCH_NETNS_REUSE").as_deref() {
        Ok("0") => None,
        _ => Some("bench@v1".to_owned()),
    };

    // Before any thread exists: the mount-namespace move must cover the whole process. The
    // cgroup2 mount is detached only once the backend has started (see below).
    let crun = if wanted("crun") { which("crun") } else { None };
    let hide_unified = crun.is_some() && hybrid_with_v2_controllers();
    if hide_unified {
        private_mount_namespace()?;
    }

    let (bin_dir, bin) = build_true_static()?;
    let crun_dir = tempfile::Builder::new().prefix("strata-spawn-bench-oci-").tempdir()?;
    let bundle = match &crun {
        Some(c) => Some(crun_bundle(c, &bin, crun_dir.path())?),
        None => None,
    };
    let crun_version = crun
        .as_ref()
        .and_then(|c| Command::new(c).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();

    let mut config = BackendConfig::default();
    if let Ok(v) = std::env::var("SPAWN_BENCH_NETNS_POOL") {
        config.netns_pool = v.trim().parse().context("SPAWN_BENCH_NETNS_POOL")?;
    }
    if std::env::var("SPAWN_BENCH_TEMPLATE").as_deref() == Ok("0") {
        config.root_template = false;
    }
    let netns_pool = config.netns_pool;
    let root_template = config.root_template;
    let backend = Backend::new(config).context("sandbox backend")?;
    // Let the pool fill before the warm-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.netns_ready() < netns_pool && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let favordynmods = cgroup2_favordynmods();
    if hide_unified {
        hide_unified_hierarchy()?;
    }
    let unified_hidden = hide_unified;
    let netns_sched = std::env::var("SPAWN_BENCH_NETNS_SCHED").ok();
    let policy = match netns_sched.as_deref() {
        None => None,
        Some("idle") => Some(libc::SCHED_IDLE),
        Some("other") => Some(libc::SCHED_OTHER),
        Some(v) => bail!("SPAWN_BENCH_NETNS_SCHED={v:?}: use idle or other"),
    };
    if let Some(policy) = policy {
        // A new thread names itself once it runs, so look again for a little while.
        while set_thread_policy("strata-netns", policy)? == 0 {
            ensure!(Instant::now() < deadline, "no strata-netns thread to reschedule");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let mut kinds = Vec::new();
    if wanted("sandbox") {
        kinds.push(Kind::Sandbox);
    }
    if wanted("fork") {
        kinds.push(Kind::Fork);
    }
    if bundle.is_some() {
        kinds.push(Kind::Crun);
    }
    ensure!(!kinds.is_empty(), "nothing to measure");

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu = first_line_with("/proc/cpuinfo", "model name");
    let load_start = loadavg();
    println!("spawn-to-exit bench: n={n} per variant, warm-up {warmup}, interleaved round-robin");
    println!(
        "host: {nproc} cpus ({cpu}), kernel {kernel}, cgroup {} (cgroup2 favordynmods: {}), load {load_start}",
        backend.cgroup_version(),
        match favordynmods {
            Some(true) => "on",
            Some(false) => "off",
            None => "no cgroup2 mount",
        }
    );
    println!(
        "sandbox: network {network:?}, netns pool {netns_pool}, netns reuse key {netns_key:?}, root template {root_template}{}; binary {}",
        if let Some(p) = &netns_sched {
            format!(" (refill thread set to SCHED_{})", p.to_uppercase())
        } else {
            String::new()
        },
        bin.display()
    );
    match (&crun, &bundle) {
        (Some(_), Some(b)) => println!(
            "crun: {crun_version}; namespaces {:?} (a fresh netns every run){}",
            crun_namespaces(b),
            if unified_hidden {
                "; cgroup2 mount hidden in this process's mount namespace"
            } else {
                ""
            }
        ),
        _ if wanted("crun") => println!("crun: SKIPPED: `crun` is not installed (apt-get install -y crun)"),
        _ => println!("crun: not measured (SPAWN_BENCH_ONLY)"),
    }

    let mut ctx = Ctx {
        backend: &backend,
        code_dir: bin_dir.path(),
        bin: &bin,
        network,
        netns_key: netns_key.clone(),
        crun: crun.as_deref().zip(bundle.as_deref()),
        ids: 0,
    };
    for i in 0..warmup {
        for j in 0..kinds.len() {
            once(&mut ctx, kinds[(i + j) % kinds.len()], None)?;
        }
    }
    let mut rec = Recorder::new();
    let started = Instant::now();
    for i in 0..n {
        for j in 0..kinds.len() {
            once(&mut ctx, kinds[(i + j) % kinds.len()], Some(&mut rec))?;
        }
        if (i + 1) % 250 == 0 {
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    let wall = started.elapsed();
    let load_end = loadavg();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();

    let stats: Vec<(Kind, Stats)> = kinds
        .iter()
        .map(|&k| {
            let idx = match k {
                Kind::Sandbox => 0,
                Kind::Fork => 1,
                Kind::Crun => 2,
            };
            (k, Stats::of(&rec.total[idx]))
        })
        .collect();
    let get = |k: Kind| stats.iter().find(|(x, _)| *x == k).map(|(_, s)| *s);

    println!();
    println!(
        "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "spawn-to-exit", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"
    );
    for (k, s) in &stats {
        println!(
            "{:<16} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            k.label(),
            s.n,
            s.p50,
            s.p90,
            s.p99,
            s.max,
            s.mean
        );
    }

    let mut phases_json = serde_json::Map::new();
    if let Some(sb) = get(Kind::Sandbox) {
        println!();
        println!("strata sandbox phases (SpawnTimings, then after spawn returned):");
        println!("{:<16} {:>9} {:>9} {:>9}", "phase", "p50 ms", "p90 ms", "p99 ms");
        for (name, h) in PHASES.iter().zip(&rec.phases) {
            let s = Stats::of(h);
            println!("{name:<16} {:>9.3} {:>9.3} {:>9.3}", s.p50, s.p90, s.p99);
            phases_json.insert((*name).to_owned(), s.json());
        }
        println!(
            "netns pool empty before spawn: {} of {}; netns phase > 0.2 ms: {}",
            rec.pool_empty, sb.n, rec.netns_slow
        );
    }

    let mut ratios = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    println!();
    if let Some(sb) = get(Kind::Sandbox) {
        let ok50 = sb.p50 <= TARGET_P50_MS;
        let ok99 = sb.p99 <= TARGET_P99_MS;
        println!(
            "target sandbox p50 <= {TARGET_P50_MS} ms: {:.3} ms, {}",
            sb.p50,
            verdict(ok50)
        );
        println!(
            "target sandbox p99 <= {TARGET_P99_MS} ms: {:.3} ms, {}",
            sb.p99,
            verdict(ok99)
        );
        targets.insert("sandbox_p50_le_2ms".into(), json!(ok50));
        targets.insert("sandbox_p99_le_8ms".into(), json!(ok99));
        if let Some(c) = get(Kind::Crun) {
            let (r50, r99) = (c.p50 / sb.p50, c.p99 / sb.p99);
            println!(
                "crun/sandbox: p50 {r50:.2}x, p99 {r99:.2}x (target >= {TARGET_VS_CRUN}x: p50 {}, p99 {})",
                verdict(r50 >= TARGET_VS_CRUN),
                verdict(r99 >= TARGET_VS_CRUN)
            );
            ratios.insert("crun_over_sandbox_p50".into(), json!(round(r50)));
            ratios.insert("crun_over_sandbox_p99".into(), json!(round(r99)));
            targets.insert("crun_over_sandbox_p50_ge_3".into(), json!(r50 >= TARGET_VS_CRUN));
            targets.insert("crun_over_sandbox_p99_ge_3".into(), json!(r99 >= TARGET_VS_CRUN));
        }
        if let Some(f) = get(Kind::Fork) {
            let (r50, r99) = (sb.p50 / f.p50, sb.p99 / f.p99);
            println!(
                "sandbox/fork+exec: p50 {r50:.2}x, p99 {r99:.2}x (target <= {TARGET_VS_FORK}x: p50 {}, p99 {})",
                verdict(r50 <= TARGET_VS_FORK),
                verdict(r99 <= TARGET_VS_FORK)
            );
            ratios.insert("sandbox_over_fork_exec_p50".into(), json!(round(r50)));
            ratios.insert("sandbox_over_fork_exec_p99".into(), json!(round(r99)));
            targets.insert("sandbox_over_fork_exec_p50_le_4".into(), json!(r50 <= TARGET_VS_FORK));
            targets.insert("sandbox_over_fork_exec_p99_le_4".into(), json!(r99 <= TARGET_VS_FORK));
        }
    }
    println!(
        "wall {:.1} s; load average before {load_start}, after {load_end}",
        wall.as_secs_f64()
    );

    let results: serde_json::Map<String, Value> = [Kind::Sandbox, Kind::Fork, Kind::Crun]
        .iter()
        .map(|&k| {
            let v = match get(k) {
                Some(s) => s.json(),
                None if k == Kind::Crun && crun.is_none() && wanted("crun") => {
                    json!({"skipped": "crun is not installed"})
                }
                None => Value::Null,
            };
            (k.key().to_owned(), v)
        })
        .collect();
    let report = json!({
        "bench": "sandbox spawn-to-exit",
        "date_utc": utc(now),
        "unix_time": now,
        "n": n,
        "warmup": warmup,
        "order": "interleaved round-robin, rotating start",
        "machine": {
            "nproc": nproc,
            "kernel": kernel,
            "cpu": cpu,
            "cgroup": backend.cgroup_version(),
            "cgroup2_favordynmods": favordynmods,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "sandbox": {
            "network": format!("{network:?}"),
            "netns_pool": netns_pool,
            "netns_key": netns_key,
            "root_template": root_template,
            "netns_refill_sched_override": netns_sched,
            "netns_pool_empty_before_spawn": rec.pool_empty,
            "netns_phase_over_200us": rec.netns_slow,
        },
        "crun": {
            "version": crun_version,
            "namespaces": bundle.as_deref().map(crun_namespaces),
            "cgroup2_mount_hidden": unified_hidden,
        },
        "results": results,
        "sandbox_phases": phases_json,
        "ratios": ratios,
        "targets": {
            "spec": {
                "sandbox_p50_ms_max": TARGET_P50_MS,
                "sandbox_p99_ms_max": TARGET_P99_MS,
                "crun_over_sandbox_min": TARGET_VS_CRUN,
                "sandbox_over_fork_exec_max": TARGET_VS_FORK,
            },
            "met": targets,
        },
        "wall_s": round(wall.as_secs_f64()),
    });
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let out = out_dir.join("sandbox-spawn.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
