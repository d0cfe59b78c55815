//! The process sandbox against the real kernel (needs root; CI runs as root). Each test
//! asserts from inside the sandbox with a probe program, and from outside through the
//! cgroup accounting.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_sandbox::{
    Backend, BackendConfig, BindMount, Exit, ExitKind, FdMapping, ForkServer, Limits, NetworkMode, SandboxSpec,
    SeccompMode, Template,
};

fn backend() -> &'static Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    B.get_or_init(|| Backend::new(BackendConfig::default()).expect("sandbox backend (run the tests as root)"))
}

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two fresh descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Run a spec to completion, returning its exit and its stdout and stderr.
fn run(spec: SandboxSpec) -> (Exit, String, String) {
    run_via(Via::Scratch, spec)
}

/// How a test starts its sandboxes: the isolation and resource tests run both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `Backend::spawn`: clone and exec.
    Scratch,
    /// `Backend::spawn_from_template`: forked from the Python runtime template.
    Template,
    /// `Backend::spawn_from_fork_server`: forked from a Python function template (itself
    /// forked from the runtime template) started for this sandbox alone.
    FunctionTemplate,
}

/// The Python runtime template of the repository (runtimes/python/zygote.py).
fn template() -> &'static Arc<Template> {
    static T: OnceLock<Arc<Template>> = OnceLock::new();
    T.get_or_init(|| Arc::new(python_template("python")))
}

/// The pid of the spare `t` has announced, waiting up to `limit` for one.
fn wait_for_spare(t: &Template, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(pid) = t.spare() {
            return Some(pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A new Python runtime template named `name`.
fn python_template(name: &str) -> Template {
    let zygote = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtimes/python/zygote.py");
    backend()
        .start_template(
            name,
            Path::new("/usr/bin/python3"),
            &["-I".into(), "-S".into(), zygote.display().to_string()],
            &[],
            Duration::from_secs(30),
        )
        .expect("python runtime template")
}

fn spawn_via(via: Via, spec: SandboxSpec) -> strata_sandbox::Result<strata_sandbox::Sandbox> {
    match via {
        Via::Scratch => backend().spawn(spec),
        Via::Template => {
            // The sandbox under test from the spare the template clones ahead, the path a
            // cold start takes when the template has been idle for a moment (other tests
            // share the template and may take the spare first: then a clone made on demand).
            let _ = wait_for_spare(template(), Duration::from_secs(2));
            backend().spawn_from_template(template(), spec)
        }
        Via::FunctionTemplate => {
            let server = Arc::new(function_template(&spec, "json:dumps"));
            // A first instance, so that the one under test is the instance the template
            // forked ahead of its request (the path every later cold start takes).
            let mut first = python("pass");
            first.limits = spec.limits.clone();
            first.network = spec.network;
            first.hostname = spec.hostname.clone();
            let exit = backend().spawn_from_fork_server(&server, first)?.wait()?;
            assert_eq!(exit.kind, ExitKind::Exited(0));
            // ...and already moved into a cgroup of its own by the backend, as a thread does
            // after every fork.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !server.spare_ready() {
                assert!(Instant::now() < deadline, "no spare prepared after a fork");
                std::thread::sleep(Duration::from_millis(5));
            }
            let used = server.spares_used();
            let sandbox = backend().spawn_from_fork_server(&server, spec);
            if sandbox.is_ok() {
                assert_eq!(
                    server.spares_used(),
                    used + 1,
                    "the sandbox under test is the prepared spare"
                );
            }
            sandbox
        }
    }
}

/// A function template (runtimes/python/fntemplate.py) with the code, mounts, limits, network
/// and hostname of `spec`, importing `handler`.
fn function_template(spec: &SandboxSpec, handler: &str) -> ForkServer {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtimes");
    let mut server = SandboxSpec::new(
        "/usr/bin/python3",
        vec![
            "python3".into(),
            "-I".into(),
            "-S".into(),
            "/strata/runtime/python/fntemplate.py".into(),
        ],
    );
    server.code = spec.code.clone();
    server.mounts = spec.mounts.clone();
    server.mounts.push(BindMount {
        source: runtime,
        target: "/strata/runtime".into(),
    });
    server.env.extend(spec.env.clone());
    server.env.insert("STRATA_HANDLER".into(), handler.into());
    server.limits = spec.limits.clone();
    server.network = spec.network;
    server.hostname = spec.hostname.clone();
    let (server, hello) = backend()
        .start_fork_server("test", Some(template()), server, Duration::from_secs(30))
        .expect("function template");
    assert_eq!(hello["ready"], true, "function template greeting: {hello}");
    server
}

/// Both a scratch and a templated test of one check.
macro_rules! both_ways {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[test]
                fn scratch() {
                    super::$check(super::Via::Scratch)
                }
                #[test]
                fn template() {
                    super::$check(super::Via::Template)
                }
                #[test]
                fn function_template() {
                    super::$check(super::Via::FunctionTemplate)
                }
            }
        )*
    };
}

both_ways!(
    isolation_seen_from_inside,
    host_network_is_an_explicit_opt_in,
    seccomp_kill_mode_kills_the_process,
    sandboxes_cannot_see_each_other,
    memory_hog_is_reported_as_oom,
    fork_bomb_hits_the_pids_wall_and_the_host_stays_responsive,
    cpu_quota_of_half_a_core_gives_about_half_a_core,
    tmp_beyond_its_size_is_enospc,
);

fn run_via(via: Via, mut spec: SandboxSpec) -> (Exit, String, String) {
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    spec.fds.push(FdMapping { fd: out_w, target: 1 });
    spec.fds.push(FdMapping { fd: err_w, target: 2 });
    let mut sb = spawn_via(via, spec).expect("spawn");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_r.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    let exit = sb.wait().unwrap();
    (exit, out, errs.join().unwrap())
}

/// [`python`], run as `uid` (and the same gid).
fn python_as(code: &str, uid: u32) -> SandboxSpec {
    let mut spec = python(code);
    spec.uid = uid;
    spec.gid = uid;
    spec
}

fn python(script: &str) -> SandboxSpec {
    SandboxSpec::new(
        "/usr/bin/python3",
        vec!["python3".into(), "-I".into(), "-c".into(), script.into()],
    )
}

fn code_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, content) in files {
        std::fs::write(d.path().join(name), content).unwrap();
    }
    d
}

const PROBE: &str = r#"
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
def can_write(p):
    try:
        with open(os.path.join(p, ".probe"), "w") as f: f.write("x")
        return True
    except OSError as e:
        return e.errno
out = {}
out["pid"] = os.getpid()
out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["uid"] = os.getuid(); out["gid"] = os.getgid()
out["uid_map"] = " ".join(open("/proc/self/uid_map").read().split())
out["fds"] = sorted(int(f) for f in os.listdir("/proc/self/fd"))
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
out["capeff"] = st["CapEff"].strip(); out["capprm"] = st["CapPrm"].strip(); out["capbnd"] = st["CapBnd"].strip()
out["nnp"] = st["NoNewPrivs"].strip(); out["seccomp"] = st["Seccomp"].strip()
out["write_root"] = can_write("/"); out["write_usr"] = can_write("/usr"); out["write_code"] = can_write("/code")
out["write_tmp"] = can_write("/tmp")
out["sys"] = os.path.exists("/sys"); out["kvm"] = os.path.exists("/dev/kvm")
out["dev"] = sorted(os.listdir("/dev"))
out["hostname"] = socket.gethostname()
out["code"] = sorted(os.listdir("/code"))
nr = dict(mount=165, umount2=166, pivot_root=155, ptrace=101, process_vm_readv=310, process_vm_writev=311,
          kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313, delete_module=176, bpf=321,
          perf_event_open=298, keyctl=250, add_key=248, request_key=249, reboot=169, swapon=167, swapoff=168,
          setns=308, unshare=272, open_by_handle_at=304, userfaultfd=323, ioperm=173, iopl=172, clone3=435)
out["denied"] = {k: errno.errorcode.get(sc(v), str(sc(v))) for k, v in nr.items()}
# clone with a new user namespace (flags 0x10000000 | SIGCHLD)
out["clone_newuser"] = errno.errorcode.get(sc(56, 0x10000000 | 17, 0, 0, 0, 0), "ok")
out["unshare_newuser"] = errno.errorcode.get(sc(272, 0x10000000), "ok")
port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close(); out["connect"] = "ok"
except OSError as e:
    out["connect"] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(out))
"#;

fn probe(via: Via, network: NetworkMode) -> Value {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = code_dir(&[("main.py", "print('hi')\n")]);
    let mut spec = SandboxSpec::new(
        "/usr/bin/python3",
        vec![
            "python3".into(),
            "-I".into(),
            "-c".into(),
            PROBE.into(),
            port.to_string(),
        ],
    );
    spec.code = Some(code.path().to_path_buf());
    spec.network = network;
    let (exit, out, err) = run_via(via, spec);
    assert_eq!(exit.kind, ExitKind::Exited(0), "probe failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}; stderr {err}"))
}

fn isolation_seen_from_inside(via: Via) {
    let p = probe(via, NetworkMode::None);
    assert_eq!(p["pid"], 1, "{p}");
    assert_eq!(p["procs"], serde_json::json!([1]), "only itself in /proc");
    assert_ne!(p["uid"], 0);
    assert_ne!(p["gid"], 0);
    let uid_map = match via {
        // The host's user namespace.
        Via::Scratch | Via::Template => "0 0 4294967295".to_owned(),
        // The function template's: the sandbox's uid, mapped to itself and nothing else.
        Via::FunctionTemplate => format!("{0} {0} 1", p["uid"]),
    };
    assert_eq!(p["uid_map"], uid_map.as_str());
    // stdin, stdout, stderr and the directory being listed: nothing of the daemon's or a
    // template's.
    assert_eq!(p["fds"], serde_json::json!([0, 1, 2, 3]), "open descriptors");
    for cap in ["capeff", "capprm", "capbnd"] {
        assert_eq!(p[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(p["nnp"], "1");
    assert_eq!(p["seccomp"], "2");
    assert_eq!(p["write_root"], libc::EROFS);
    assert_eq!(p["write_usr"], libc::EROFS);
    assert_eq!(p["write_code"], libc::EROFS);
    assert_eq!(p["write_tmp"], true);
    assert_eq!(p["sys"], false);
    assert_eq!(p["kvm"], false);
    assert_eq!(
        p["dev"],
        serde_json::json!([
            "fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"
        ])
    );
    assert_eq!(p["hostname"], "strata");
    assert_eq!(p["code"], serde_json::json!(["main.py"]));
    for (call, errno) in p["denied"].as_object().unwrap() {
        let want = if call == "clone3" { "ENOSYS" } else { "EPERM" };
        assert_eq!(errno, want, "{call}");
    }
    assert_eq!(p["clone_newuser"], "EPERM");
    assert_eq!(p["unshare_newuser"], "EPERM");
    assert_eq!(p["connect"], "ECONNREFUSED", "the host's listener is not reachable");
}

fn host_network_is_an_explicit_opt_in(via: Via) {
    let p = probe(via, NetworkMode::Host);
    assert_eq!(p["connect"], "ok");
}

fn seccomp_kill_mode_kills_the_process(via: Via) {
    let mut spec = python("import ctypes; ctypes.CDLL(None).syscall(165, 0, 0, 0, 0, 0); print('survived')");
    spec.seccomp = SeccompMode::Kill;
    let (exit, out, _) = run_via(via, spec);
    assert_eq!(exit.kind, ExitKind::Signaled(libc::SIGSYS));
    assert_eq!(out, "");
}

fn sandboxes_cannot_see_each_other(via: Via) {
    let a_code = code_dir(&[("secret.txt", "a's secret")]);
    let mut a = python("open('/tmp/a-was-here','w').write('x'); import time; time.sleep(30)");
    a.code = Some(a_code.path().to_path_buf());
    let mut a = spawn_via(via, a).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let script = format!(
        "import os, json; print(json.dumps([os.path.exists('/tmp/a-was-here'), os.path.exists({:?}), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.listdir('/code') if os.path.exists('/code') else []]))",
        a_code.path().join("secret.txt").display().to_string()
    );
    let (exit, out, err) = run_via(via, python(&script));
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen, serde_json::json!([false, false, [1], []]));
    a.terminate().unwrap();
}

fn memory_hog_is_reported_as_oom(via: Via) {
    let mut spec = python("x = []\nwhile True: x.append(bytearray(1 << 20))");
    spec.limits = Limits {
        memory_bytes: 48 << 20,
        ..Limits::default()
    };
    let (exit, _, _) = run_via(via, spec);
    assert_eq!(exit.kind, ExitKind::Oom, "{exit:?}");
    assert!(exit.usage.oom_kills >= 1);
    assert!(exit.usage.memory_peak_bytes >= 40 << 20, "{exit:?}");
}

fn fork_bomb_hits_the_pids_wall_and_the_host_stays_responsive(via: Via) {
    let bomb = "import os, time\nn = 0\nwhile True:\n  try:\n    if os.fork() == 0:\n      time.sleep(30); os._exit(0)\n    n += 1\n  except OSError as e:\n    print(n, e.errno, flush=True); break\ntime.sleep(30)";
    let mut spec = python(bomb);
    spec.limits = Limits {
        pids: 32,
        ..Limits::default()
    };
    let (mut out_r, out_w) = pipe();
    spec.fds.push(FdMapping { fd: out_w, target: 1 });
    let mut sb = spawn_via(via, spec).unwrap();
    let mut line = [0u8; 64];
    let n = out_r.read(&mut line).unwrap();
    let line = String::from_utf8_lossy(&line[..n]).trim().to_owned();
    assert_eq!(line, "31 11", "31 children, then fork fails with EAGAIN");
    let inside = sb.pids().len();
    assert_eq!(inside, 32, "{inside} processes in a sandbox limited to 32");
    // The host still forks and execs promptly.
    let t = Instant::now();
    for _ in 0..20 {
        assert!(std::process::Command::new("/bin/true").status().unwrap().success());
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "host fork+exec ×20 took {:?}",
        t.elapsed()
    );
    sb.terminate().unwrap();
}

fn cpu_quota_of_half_a_core_gives_about_half_a_core(via: Via) {
    let mut spec = python("import time\nend = time.monotonic() + 2\nwhile time.monotonic() < end: pass");
    spec.limits = Limits {
        cpu_millis: Some(500),
        ..Limits::default()
    };
    let t = Instant::now();
    let (exit, _, _) = run_via(via, spec);
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(exit.kind, ExitKind::Exited(0));
    let share = exit.usage.cpu_usec as f64 / 1e6 / wall;
    assert!(
        (0.35..=0.62).contains(&share),
        "cpu share {share:.2} (cpu {} us over {wall:.2} s)",
        exit.usage.cpu_usec
    );
}

fn tmp_beyond_its_size_is_enospc(via: Via) {
    let mut spec = python(
        "import errno\ntry:\n  open('/tmp/big','wb').write(b'x' * (4 << 20))\n  print('fit')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
    );
    spec.limits = Limits {
        tmp_bytes: 1 << 20,
        ..Limits::default()
    };
    let (exit, out, err) = run_via(via, spec);
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    assert_eq!(out.trim(), "ENOSPC");
}

#[test]
fn setup_failure_names_the_step_and_leaves_nothing() {
    let spec = SandboxSpec::new("/usr/bin/does-not-exist", vec![]);
    let err = backend().spawn(spec).unwrap_err();
    assert!(
        err.to_string().contains("`exec`") && err.to_string().contains("No such file"),
        "{err}"
    );
    let spec = SandboxSpec {
        uid: 0,
        ..SandboxSpec::new("/bin/true", vec![])
    };
    assert!(backend().spawn(spec).unwrap_err().to_string().contains("uid"));
}

fn processes_of_uid(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok());
        if real == Some(uid) {
            out.push(pid);
        }
    }
    out
}

fn strata_cgroups(tag_pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for ctrl in ["memory", "cpu", "cpuacct", "pids", "unified"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctrl).join("strata");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{tag_pid}-")) && e.path().is_dir() {
                    out.push(format!("{ctrl}/{name}"));
                }
            }
        }
    }
    out
}

#[test]
fn the_root_template_stays_out_of_the_host_mount_namespace() {
    let _ = backend();
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.lines().any(|l| l.split(' ').nth(4) == Some("/run/strata/root")),
        "the template is mounted only in the spawner's namespace:\n{host}"
    );
    // …and sandboxes start from it: their root is the template's tmpfs, read-only, with the
    // runtime directories and /etc below it, and their own /tmp and /proc.
    let spec = python_as(
        "for l in open('/proc/self/mountinfo'):\n f = l.split()\n print(f[4], f[5].split(',')[0])",
        61_005,
    );
    let (exit, out, err) = run(spec);
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let mounts: std::collections::BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(mounts.get("/"), Some(&"ro"), "{out}");
    assert_eq!(mounts.get("/usr"), Some(&"ro"), "{out}");
    assert_eq!(mounts.get("/etc"), Some(&"ro"), "{out}");
    assert_eq!(mounts.get("/tmp"), Some(&"rw"), "{out}");
    assert!(mounts.contains_key("/proc"), "{out}");
    assert!(!out.contains("strata"), "no host path shows: {out}");
}

#[test]
fn two_hundred_spawn_kill_cycles_leave_nothing_behind() {
    const UID: u32 = 61_001;
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    for i in 0..200 {
        let script = match i % 4 {
            0 => "exit 0",
            1 => "sleep 30 & sleep 30 & sleep 30",
            _ => "(sleep 30 &) ; sleep 30 & sleep 30",
        };
        let mut spec = SandboxSpec::new("/bin/sh", vec!["sh".into(), "-c".into(), script.into()]);
        spec.uid = UID;
        spec.gid = UID;
        let mut sb = backend().spawn(spec).unwrap();
        if i % 2 == 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if i % 4 == 0 {
            sb.wait().unwrap();
        } else {
            sb.terminate().unwrap();
        }
    }
    assert_eq!(
        processes_of_uid(UID),
        Vec::<i32>::new(),
        "no process of the sandbox uid survives"
    );
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(mounts_before, mounts_after, "no mount leaks into the host namespace");
    // Other tests of this binary may be running; only count groups of this test's uid by
    // checking none is left with a uid-61001 process and that the total is bounded.
    let left: Vec<String> = strata_cgroups(std::process::id())
        .into_iter()
        .filter(|g| {
            let procs = Path::new("/sys/fs/cgroup").join(g).join("cgroup.procs");
            std::fs::read_to_string(procs)
                .map(|s| s.trim().is_empty())
                .unwrap_or(false)
        })
        .collect();
    assert!(left.len() <= 24, "empty leftover cgroups: {left:?}");
}

/// Entry used by `a_killed_daemon_takes_its_sandboxes_along`: when run with the env var set,
/// it spawns a sandbox, prints the pid and sleeps until killed.
#[test]
fn holder_entry() {
    if std::env::var_os("STRATA_SANDBOX_HOLDER").is_none() {
        return;
    }
    let mut spec = SandboxSpec::new("/bin/sh", vec!["sh".into(), "-c".into(), "sleep 60 & sleep 60".into()]);
    spec.uid = 61_002;
    spec.gid = 61_002;
    let sb = backend().spawn(spec).unwrap();
    println!("SANDBOX_PID={}", sb.pid());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_daemon_takes_its_sandboxes_along() {
    // This process's backend first: starting it sweeps the groups of dead daemons, which must
    // not happen between the holder's death and the check below that its groups are left.
    let _ = backend();
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "holder_entry", "--nocapture", "--test-threads=1"])
        .env("STRATA_SANDBOX_HOLDER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let holder_pid = holder.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_of_uid(61_002).len() < 2 {
        assert!(Instant::now() < deadline, "holder never started its sandbox");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_of_uid(61_002).is_empty() {
        assert!(Instant::now() < deadline, "sandbox processes outlived their daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its cgroups are left; the next backend start removes them.
    assert!(!strata_cgroups(holder_pid).is_empty());
    Backend::new(BackendConfig::default()).unwrap();
    assert_eq!(strata_cgroups(holder_pid), Vec::<String>::new());
}

#[test]
fn timings_and_usage_are_recorded() {
    let spec = SandboxSpec::new("/bin/true", vec![]);
    let mut sb = backend().spawn(spec).unwrap();
    let t = sb.timings();
    assert!(t.total > Duration::ZERO && t.mounts > Duration::ZERO && t.namespaces > Duration::ZERO);
    assert!(t.total >= t.mounts + t.privileges);
    let exit = sb.wait().unwrap();
    assert_eq!(exit.kind, ExitKind::Exited(0));
    assert!(exit.usage.cpu_usec > 0);
}

#[test]
fn live_usage_reads_the_counters_usage_reads() {
    // Per-call accounting reads kept-open cgroup files; they must be the same counters as a
    // full read: CPU time and peak memory of the sandbox, growing as it works.
    let spec = python(
        "import time\nx = bytearray(24 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nt = time.process_time()\nwhile time.process_time() - t < 0.1: pass\ntime.sleep(30)",
    );
    let mut sb = backend().spawn(spec).unwrap();
    let first = sb.live_usage();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let live = loop {
        let live = sb.live_usage();
        if live.0 >= 100_000 || std::time::Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let full = sb.usage();
    assert!(live.0 >= 100_000, "CPU time seen through the kept-open file: {live:?}");
    assert!(live.0 > first.0, "it grows: {first:?} then {live:?}");
    assert!(
        full.cpu_usec >= live.0 && full.cpu_usec - live.0 < 50_000,
        "{full:?} vs {live:?}"
    );
    assert!(live.1 >= 24 << 20, "peak memory: {live:?}");
    assert!(
        full.memory_peak_bytes >= live.1 && full.memory_peak_bytes - live.1 < 1 << 20,
        "the same peak: {full:?} vs {live:?}"
    );
    sb.terminate().unwrap();
}

/// The inode of the sandbox's network namespace, and whether anything answers on `port`.
fn netns_of(key: Option<&str>, port: u16) -> (String, String) {
    let mut spec = python(&format!(
        "import os, socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port})); r = 'connected'\nexcept OSError as e:\n    r = type(e).__name__\nprint(os.readlink('/proc/self/ns/net'), r)"
    ));
    spec.netns_key = key.map(str::to_owned);
    let (exit, out, err) = run(spec);
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let (ns, r) = out.trim().split_once(' ').expect("two words");
    (ns.to_owned(), r.to_owned())
}

#[test]
fn network_namespaces_are_reused_only_under_the_same_key() {
    // A sandbox listens on a port and exits: its namespace goes back under its key.
    let mut listener = python(
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 47123)); s.listen()\nimport os; print(os.readlink('/proc/self/ns/net'))",
    );
    listener.netns_key = Some("fn-a@v1".into());
    let (exit, out, err) = run(listener);
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let first = out.trim().to_owned();
    // The next sandbox with that key gets that namespace, with nothing left listening in it.
    let (again, connect) = netns_of(Some("fn-a@v1"), 47123);
    assert_eq!(again, first, "same key: the namespace is reused");
    assert_eq!(connect, "ConnectionRefusedError");
    // Another key, or none, never gets it.
    let (other, _) = netns_of(Some("fn-b@v1"), 47123);
    assert_ne!(other, first);
    let (fresh, _) = netns_of(None, 47123);
    assert_ne!(fresh, first);
}

#[test]
fn templated_instances_share_no_state_with_each_other() {
    // A changes the state it inherited from the template (a preloaded module, the main
    // module's globals, sys.modules, /tmp) and stays alive; B, forked after, sees none of it.
    let mut a = python(
        "import json, sys, time\njson.leak = 'a'\nsecret = 'a'\nsys.modules['leak_a'] = json\nopen('/tmp/a', 'w').write('a')\nprint('set', flush=True)\ntime.sleep(30)",
    );
    let (mut a_out, a_w) = pipe();
    a.fds.push(FdMapping { fd: a_w, target: 1 });
    let mut a = spawn_via(Via::Template, a).unwrap();
    let mut buf = [0u8; 16];
    let n = a_out.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"set\n");
    let (exit, out, err) = run_via(
        Via::Template,
        python(
            "import json, os, sys\nprint(json.dumps([hasattr(json, 'leak'), 'secret' in globals(), 'leak_a' in sys.modules, os.path.exists('/tmp/a'), 'urllib.parse' in sys.modules]))",
        ),
    );
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        seen,
        serde_json::json!([false, false, false, false, true]),
        "nothing of A is visible; the template's preloaded modules are"
    );
    a.terminate().unwrap();
}

/// Zombies whose parent is `pid` and whose uid is `uid`.
fn zombies_of(pid: u32, uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let uid_matches = field("Uid:").split_whitespace().next() == Some(&uid.to_string());
        if field("PPid:") == pid.to_string() && field("State:").starts_with('Z') && uid_matches {
            out.push(format!("{} {}", e.file_name().to_string_lossy(), field("Name:")));
        }
    }
    out
}

#[test]
fn templated_spawn_kill_cycles_leave_nothing_behind() {
    const UID: u32 = 61_004;
    let _ = template();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    for i in 0..60 {
        let script = match i % 3 {
            0 => "pass",
            1 => "import os, time\nif os.fork() == 0:\n  time.sleep(30)\ntime.sleep(30)",
            _ => {
                "import os, time\nfor _ in range(3):\n  if os.fork() == 0:\n    os.setsid(); time.sleep(30)\ntime.sleep(30)"
            }
        };
        let spec = python_as(script, UID);
        let mut sb = spawn_via(Via::Template, spec).unwrap();
        if i % 2 == 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        if i % 3 == 0 {
            sb.wait().unwrap();
        } else {
            sb.terminate().unwrap();
        }
    }
    assert_eq!(processes_of_uid(UID), Vec::<i32>::new(), "no sandbox process survives");
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(mounts_before, mounts_after, "no mount leaks into the host namespace");
    assert_eq!(
        zombies_of(std::process::id(), UID),
        Vec::<String>::new(),
        "every sandbox is reaped"
    );
    assert_eq!(
        zombies_of(template().pid(), 0),
        Vec::<String>::new(),
        "the template reaps its helpers"
    );
}

#[test]
fn a_runtime_templates_spare_serves_the_next_spawn_and_goes_with_the_template() {
    // A template of its own: the shared one's spare is taken by whichever test comes first.
    let t = Arc::new(python_template("python-spare-test"));
    let wait_spare = |t: &Template| wait_for_spare(t, Duration::from_secs(10)).expect("no spare announced");
    let spare = wait_spare(&t);
    let (mut out_r, out_w) = pipe();
    let mut spec = python_as("import os; print(os.getpid(), os.getuid())", 61_007);
    spec.fds.push(FdMapping { fd: out_w, target: 1 });
    // The spare gets its request straight from the backend: the spawn does not wait for the
    // template, even a stopped one.
    // SAFETY: signals to the template process this test started.
    unsafe { libc::kill(t.pid() as i32, libc::SIGSTOP) };
    let spawned = backend().spawn_from_template(&t, spec);
    // SAFETY: as above.
    unsafe { libc::kill(t.pid() as i32, libc::SIGCONT) };
    let mut sb = spawned.expect("spawn while the template is stopped");
    assert_eq!(t.spares_used(), 1, "served by the spare");
    assert_eq!(sb.pid(), spare, "the sandbox is the spare's process");
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    assert_eq!(sb.wait().unwrap().kind, ExitKind::Exited(0));
    assert_eq!(out, "1 61007\n", "pid 1 of its own namespace, the function's uid");
    // The template clones the next one; dropping the template takes it along, reaped.
    let next = wait_spare(&t);
    assert_ne!(next, spare);
    assert!(std::path::Path::new(&format!("/proc/{next}")).exists());
    drop(t);
    assert!(
        !std::path::Path::new(&format!("/proc/{next}")).exists(),
        "the unused spare is killed and reaped with its template"
    );
}

#[test]
fn a_spare_killed_before_its_request_is_reaped_and_the_spawn_goes_on() {
    const UID: u32 = 61_011;
    let t = Arc::new(python_template("python-killed-spare-test"));
    let spare = wait_for_spare(&t, Duration::from_secs(10)).expect("no spare announced");
    // SAFETY: SIGKILL to the spare this test's template made; it is the backend's child.
    unsafe { libc::kill(spare, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(50));
    let spec = python_as("pass", UID);
    let mut sb = backend().spawn_from_template(&t, spec).expect("a clone made on demand");
    assert_ne!(sb.pid(), spare);
    assert_eq!(sb.wait().unwrap().kind, ExitKind::Exited(0));
    assert!(
        !std::path::Path::new(&format!("/proc/{spare}")).exists(),
        "the killed spare is reaped"
    );
}

#[test]
fn a_templated_sandboxs_failed_setup_names_the_step_and_is_reaped() {
    // The sandbox reports its setup to the backend itself (the template answers as soon as
    // the process exists): a failed step must still come back by name, for a spare and for a
    // clone made on demand, and the failed process must be reaped with nothing left behind.
    const UID: u32 = 61_009;
    let t = Arc::new(python_template("python-setup-failure-test"));
    wait_for_spare(&t, Duration::from_secs(10)).expect("no spare announced");
    let failing = || {
        let mut spec = python_as("print('never')", UID);
        spec.cwd = "/no-such-directory".into();
        spec
    };
    let first = backend().spawn_from_template(&t, failing()).unwrap_err();
    assert_eq!(t.spares_used(), 1, "the first from the spare");
    // Back to back: the template clones its next spare only 15 ms after answering, so this
    // one is (almost always) a clone made on demand; both must fail the same way.
    let second = backend().spawn_from_template(&t, failing()).unwrap_err();
    for err in [first, second] {
        let text = err.to_string();
        assert!(text.contains("`chdir`") && text.contains("No such file"), "{text}");
    }
    assert_eq!(processes_of_uid(UID), Vec::<i32>::new(), "nothing runs on");
    assert_eq!(zombies_of(std::process::id(), UID), Vec::<String>::new(), "reaped");
    assert_eq!(zombies_of(std::process::id(), 0), Vec::<String>::new(), "reaped");
    // The template survives the failed sandboxes and is good for the next one.
    assert!(t.is_alive(), "the template survives a failed sandbox");
    let ok = python_as("pass", UID);
    let mut sb = backend().spawn_from_template(&t, ok).expect("spawn after failures");
    assert_eq!(sb.wait().unwrap().kind, ExitKind::Exited(0));
}

#[test]
fn a_templated_sandbox_finds_no_other_sandboxs_environment_in_its_memory() {
    // A gets a secret in its environment; B, forked later from the same template, scans its
    // own memory for it. B knows only the secret's prefix and SHA-256, so the secret itself is
    // in B's memory only if it leaked through the template.
    let secret = format!("S3CR3T-{:016x}", std::process::id() as u64 * 0x9e37_79b9 + 12345);
    let digest = {
        use std::process::Command;
        let out = Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
                &secret,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mut a = python("import time; time.sleep(30)");
    a.env.insert("API_KEY".into(), secret.clone());
    let mut a = spawn_via(Via::Template, a).unwrap();
    let scan = format!(
        r#"
import hashlib, re
prefix = b"S3CR3T" + b"-"
found = 0
maps = open('/proc/self/maps').read().splitlines()
with open('/proc/self/mem', 'rb', 0) as mem:
    for line in maps:
        addr, perms = line.split()[:2]
        if not perms.startswith('rw'):
            continue
        lo, hi = (int(x, 16) for x in addr.split('-'))
        try:
            mem.seek(lo)
            data = mem.read(hi - lo)
        except OSError:
            continue
        for m in re.finditer(re.escape(prefix), data):
            cand = data[m.start():m.start() + {len}]
            if hashlib.sha256(cand).hexdigest() == '{digest}':
                found += 1
print(found)
"#,
        len = secret.len(),
        digest = digest
    );
    let (exit, out, err) = run_via(Via::Template, python(&scan));
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    assert_eq!(out.trim(), "0", "another sandbox's environment is in this one's memory");
    // The scan does find the secret where it is: in the memory of a sandbox that has it.
    let mut own = python(&scan);
    own.env.insert("API_KEY".into(), secret.clone());
    let (exit, out, err) = run_via(Via::Template, own);
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    assert_ne!(out.trim(), "0", "the scan finds a sandbox's own environment");
    a.terminate().unwrap();
}

/// `/proc/<pid>/task/<pid>/children`: the children a process has (zombies included).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_else(|e| panic!("children of {pid}: {e}"))
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn function_template_instances_share_the_import_and_nothing_else() {
    let code = code_dir(&[(
        "mod.py",
        "open('/tmp/from-template', 'w').write('x')\nSECRET = 'imported once'\ndef handle(event):\n    return SECRET\n",
    )]);
    let mut spec = python("");
    spec.code = Some(code.path().to_path_buf());
    let server = Arc::new(function_template(&spec, "mod:handle"));
    let server_pid = server.pid();

    let mut a = python(
        "import os, sys, time\nopen('/tmp/a-was-here', 'w').write('x')\nprint(sys.modules['mod'].SECRET, flush=True)\ntime.sleep(60)",
    );
    a.code = spec.code.clone();
    let (mut a_out, a_w) = pipe();
    a.fds.push(FdMapping { fd: a_w, target: 1 });
    let mut a = backend().spawn_from_fork_server(&server, a).unwrap();
    let mut line = [0u8; 64];
    let n = a_out.read(&mut line).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&line[..n]).trim(),
        "imported once",
        "the module is there, not imported again"
    );

    let b_pid;
    let (exit, out, err) = {
        let b = python(
            "import json, os, sys\nprint(json.dumps([sys.modules['mod'].SECRET, os.path.exists('/tmp/from-template'), os.path.exists('/tmp/a-was-here'), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))",
        );
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        let mut b = b;
        b.fds.push(FdMapping { fd: out_w, target: 1 });
        b.fds.push(FdMapping { fd: err_w, target: 2 });
        let mut b = backend().spawn_from_fork_server(&server, b).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        out_r.read_to_string(&mut out).unwrap();
        err_r.read_to_string(&mut err).unwrap();
        b_pid = b.pid();
        (b.wait().unwrap(), out, err)
    };
    assert_eq!(exit.kind, ExitKind::Exited(0), "{err}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        seen,
        serde_json::json!(["imported once", false, false, [1]]),
        "the import is shared; the template's /tmp, a's /tmp and a's processes are not"
    );

    // The template reaps what it forked: no zombie is left under it.
    assert!(!children_of(server_pid).contains(&b_pid), "b is reaped");
    assert!(children_of(server_pid).contains(&a.pid()), "a lives on");

    // When the template goes, the kernel takes its instances along, and their exit says so.
    server.kill();
    let t = Instant::now();
    let exit = a.wait().unwrap();
    assert_eq!(exit.kind, ExitKind::Signaled(libc::SIGKILL));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn function_template_spawn_kill_cycles_leave_nothing_behind() {
    let spec = python("");
    let server = Arc::new(function_template(&spec, "json:dumps"));
    let server_pid = server.pid();
    let mut pids = Vec::new();
    for i in 0..30 {
        let mut sb = backend()
            .spawn_from_fork_server(
                &server,
                python("import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)"),
            )
            .unwrap();
        pids.push(sb.pid());
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let exit = sb.terminate().unwrap();
        assert_eq!(exit.kind, ExitKind::Signaled(libc::SIGKILL), "cycle {i}");
    }
    // Every instance is reaped (what is left under the template is at most the instance it
    // forks ahead for the next request and the one the backend has prepared).
    let left = children_of(server_pid);
    assert!(pids.iter().all(|p| !left.contains(p)), "{left:?}");
    assert!(left.len() <= 2, "{left:?}");
    assert!(server.is_alive());
    // A failed setup names its step, and the template serves the next one.
    let mut bad = python("print('never')");
    bad.cwd = "/does/not/exist".into();
    let err = backend().spawn_from_fork_server(&server, bad).unwrap_err();
    assert!(err.to_string().contains("chdir"), "{err}");
    let mut ok = python("print('after')");
    let (out_r, out_w) = pipe();
    ok.fds.push(FdMapping { fd: out_w, target: 1 });
    let mut sb = backend().spawn_from_fork_server(&server, ok).unwrap();
    let mut out = String::new();
    { out_r }.read_to_string(&mut out).unwrap();
    assert_eq!(sb.wait().unwrap().kind, ExitKind::Exited(0));
    assert_eq!(out.trim(), "after");
}

/// Whether process `pid` is gone (or a zombie waiting for its reaper).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_prepared_spare_serves_the_next_fork_and_goes_when_it_cannot() {
    let spec = python("");
    let server = Arc::new(function_template(&spec, "json:dumps"));
    let server_pid = server.pid();
    assert_eq!(run_on(&server, python("pass")), ExitKind::Exited(0));
    wait_until("a spare is prepared", || server.spare_ready());
    // The template keeps only the prepared spare: no second one forked ahead beside it.
    let spare = children_of(server_pid);
    assert_eq!(spare.len(), 1, "{spare:?}");
    let spare = spare[0];
    // Its cgroup is the sandbox's own (the server's is not): the next fork is that process,
    // with the limits it was prepared for.
    let cgroup_of = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_ne!(cgroup_of(spare), cgroup_of(server_pid));
    let used = server.spares_used();
    let (mut out_r, out_w) = pipe();
    let mut next = python("import os\nprint(os.getpid())");
    next.fds.push(FdMapping { fd: out_w, target: 1 });
    let mut sb = backend().spawn_from_fork_server(&server, next).unwrap();
    assert_eq!(sb.pid(), spare, "the prepared process");
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    assert_eq!(sb.wait().unwrap().kind, ExitKind::Exited(0));
    assert_eq!(out.trim(), "1", "pid 1 of its own namespace");
    assert_eq!(server.spares_used(), used + 1);
    // A sandbox with other limits cannot have the next one: it is killed (its cgroup given
    // back) and the sandbox is forked and moved as usual.
    wait_until("the next spare is prepared", || server.spare_ready());
    let spare = children_of(server_pid)[0];
    let mut bigger = python("pass");
    bigger.limits.memory_bytes *= 2;
    assert_eq!(run_on(&server, bigger), ExitKind::Exited(0));
    assert_eq!(server.spares_used(), used + 1, "not used");
    wait_until("the unfitting spare is gone", || gone(spare));
    // Dropping the server with a spare prepared takes the spare along.
    wait_until("a spare is prepared again", || server.spare_ready());
    let spare = children_of(server_pid)[0];
    drop(server);
    wait_until("the prepared spare is gone with its server", || gone(spare));
}

fn run_on(server: &Arc<ForkServer>, spec: SandboxSpec) -> ExitKind {
    backend()
        .spawn_from_fork_server(server, spec)
        .unwrap()
        .wait()
        .unwrap()
        .kind
}
