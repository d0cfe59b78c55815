//! `cargo xtask bench-wasm [--quick] [--no-build]`: the WebAssembly tier's benchmark.
//!
//! Same run, same component (`guests/hello`, the `hello-wasm` example):
//! - instantiate + call inside the process: the criterion bench of `strata-sandbox-wasm`
//!   (pooled: all in the call, made ahead, and the daemon's adaptive default; the on-demand
//!   allocator as their baseline);
//! - one client, sequential calls: a bare loopback HTTP server (the floor), Strata's gateway,
//!   `wasmtime serve` (wasmtime-cli 48), and the tier alone (the `serve` example of
//!   `strata-sandbox-wasm`: the same engine behind a minimal HTTP server, none of the
//!   platform: the ceiling for the gateway here) — interleaved in rounds so drift hits all;
//! - 32 keep-alive clients (wrk -c32, with two client threads and with one): the same four,
//!   in rounds;
//! - a guest that spins forever under a 100 ms timeout (`guests/probe`), idle and under the
//!   32 clients' load: how late past the timeout its 504 comes, and that the next call works.
//!
//! Prints, writes `target/bench/wasm.json` and the "WebAssembly tier" section of
//! `docs/benchmarks.md`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{
    Daemon, Machine, Sample, Stats, Wrk, bare_server, dur, replace_section_under, sequential, utc_now, wrk_threads,
};

const HEADING: &str = "## WebAssembly tier (cargo xtask bench-wasm)";
const INSTANTIATE_MAX_US: f64 = 20.0;
const OVERHEAD_MAX_US: f64 = 40.0;
const THROUGHPUT_MIN: f64 = 40_000.0;
const VS_WASMTIME_MIN: f64 = 1.2;

struct Config {
    quick: bool,
    build: bool,
    rounds: usize,
    per_round: u64,
    warmup: u64,
    load_secs: u64,
    load_rounds: usize,
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let (mut quick, mut build) = (false, true);
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-build" => build = false,
            other => bail!("unknown argument {other:?} (usage: cargo xtask bench-wasm [--quick] [--no-build])"),
        }
    }
    let cfg = Config {
        quick,
        build,
        rounds: 5,
        per_round: if quick { 200 } else { 1000 },
        warmup: 200,
        load_secs: if quick { 3 } else { 10 },
        load_rounds: if quick { 1 } else { 3 },
    };
    if cfg.build {
        crate::bench::build_release(repo)?;
    }
    let wasmtime = wasmtime_cli(repo)?;
    let component = repo.join("examples/hello-wasm/hello.wasm");
    let probe = repo.join("guests/target/wasm32-wasip2/release/probe.wasm");
    for guest in [&component, &probe] {
        if !guest.is_file() {
            bail!("{} is missing: `cargo xtask examples` builds it", guest.display());
        }
    }
    let bin = repo.join("target/release/strata");
    let (date, machine) = (utc_now(), Machine::probe()?);

    eprintln!("bench-wasm: instantiate + call (criterion)");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo)
        .args(["bench", "-j2", "-p", "strata-sandbox-wasm", "--bench", "instantiate"]);
    if cfg.quick {
        cargo.args(["--", "--warm-up-time", "1", "--measurement-time", "2"]);
    }
    crate::run(&mut cargo)?;
    // The bench profile, as `cargo bench` above: same profile and features, nothing rebuilt.
    crate::run(Command::new("cargo").current_dir(repo).args([
        "build",
        "--profile",
        "bench",
        "-j2",
        "-p",
        "strata-sandbox-wasm",
        "--example",
        "serve",
    ]))?;
    let tier_alone = repo.join("target/release/examples/serve");
    let criterion: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("target/bench/wasm-instantiate.json"))
            .context("the instantiate bench wrote no results")?,
    )?;

    let tmp = tempfile::tempdir()?;
    let mut daemon = Daemon::start(&bin, tmp.path())?;
    let measured = measure(
        &cfg,
        &bin,
        &daemon,
        [&wasmtime, &tier_alone],
        [&component, &probe],
        tmp.path(),
    );
    daemon.stop()?;
    let m = measured?;
    let report = render(&cfg, &date, &machine, &criterion, &m, &wasmtime_version(&wasmtime));
    println!("{report}");
    let dir = repo.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("wasm.json"),
        serde_json::to_string_pretty(&m.json(&criterion))? + "\n",
    )?;
    let doc_path = repo.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&doc_path, replace_section_under(&doc, HEADING, &report))?;
    eprintln!("bench-wasm: wrote target/bench/wasm.json and {}", doc_path.display());
    Ok(())
}

/// `wasmtime` 48 from PATH or `target/bench-tools`, installed there with cargo when missing.
fn wasmtime_cli(repo: &Path) -> anyhow::Result<PathBuf> {
    let local = repo.join("target/bench-tools/bin/wasmtime");
    let candidates = crate::on_path("wasmtime")
        .into_iter()
        .chain([PathBuf::from("/opt/wasmtime48/bin/wasmtime"), local.clone()]);
    for c in candidates {
        if c.is_file() && wasmtime_version(&c).starts_with("wasmtime 48.") {
            return Ok(c);
        }
    }
    eprintln!("bench-wasm: installing wasmtime-cli 48 into target/bench-tools (slow: it compiles wasmtime)");
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "wasmtime-cli",
                "--version",
                "~48",
                "--locked",
                "-j2",
                "--root",
            ])
            .arg(repo.join("target/bench-tools")),
    )?;
    Ok(local)
}

fn wasmtime_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A server serving the component, run for the bench: `wasmtime serve`, or the tier alone.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// `wasmtime serve` with its defaults, plus stdout for the guest's println (Strata
    /// captures it too).
    fn wasmtime(bin: &Path, component: &Path) -> anyhow::Result<Server> {
        Self::start("wasmtime serve", |addr| {
            let mut c = Command::new(bin);
            c.args(["serve", "-Scli=y", "--addr", &addr.to_string()]).arg(component);
            c
        })
    }

    /// The `serve` example: the tier alone behind a minimal HTTP server.
    fn tier_alone(bin: &Path, component: &Path) -> anyhow::Result<Server> {
        Self::start("the tier alone", |addr| {
            let mut c = Command::new(bin);
            c.arg(addr.to_string()).arg(component);
            c
        })
    }

    fn start(what: &str, command: impl FnOnce(SocketAddr) -> Command) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = command(addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("{what} did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three servers, by name, with the path each serves the component at.
const TARGETS: [&str; 4] = [
    "bare loopback server",
    "strata gateway",
    "wasmtime serve",
    "the tier alone (no gateway)",
];

/// Where the one-client rounds run: the client thread on core `client`, every thread of the
/// server under test on core `server`.
///
/// Left to the scheduler, whether the client and the server shared a core was a coin tossed
/// per run: on one core a round trip is a direct switch (the bare floor 5 µs), on two each
/// wake-up crosses cores and, in a VM, wakes a halted vCPU (47–62 µs), and the overhead verdict
/// moved with the coin (stop 19's runs). Now both placements are measured, each pinned, in the
/// same rounds; the threads go back to every core before the load rounds.
#[derive(Clone, Copy)]
struct Placement {
    name: &'static str,
    client: usize,
    server: usize,
}

/// The placements on the cores the bench may use (`allowed`, sorted): one core, and two
/// when it has two.
fn placements(allowed: &[usize]) -> Vec<Placement> {
    let (first, second) = (allowed.first().copied().unwrap_or(0), allowed.get(1).copied());
    let one = Placement {
        name: "one core",
        client: first,
        server: first,
    };
    match second {
        Some(second) => vec![
            one,
            Placement {
                name: "two cores",
                client: first,
                server: second,
            },
        ],
        None => vec![one],
    }
}

/// The cores the calling thread may run on, ascending.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data (all zeroes is the empty set), filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a set of the size given; 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: CPU_ISSET reads one bit of the set; every index is below its size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("sched_getaffinity: no core allowed");
    }
    Ok(cpus)
}

/// Pin thread `tid` (0: the calling thread) to `cpus`.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    if let Some(c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(std::io::Error::other(format!("core {c} is beyond the affinity mask")));
    }
    // SAFETY: `cpu_set_t` is plain data and all zeroes is the empty set; every index given to
    // CPU_SET is below CPU_SETSIZE (checked above), so each writes one bit inside it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    // SAFETY: a valid set of the size given; `tid` is a thread id or 0.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pin every thread of process `pid` to `cpus`; threads it starts later inherit the pinning of
/// the thread that starts them. A thread that exits meanwhile is skipped; one started during a
/// pass by a thread not yet pinned is caught by the next (passes repeat until no new thread
/// shows up, at most five).
fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let mut done = std::collections::HashSet::new();
    for _ in 0..5 {
        let mut new = false;
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            if !done.insert(tid) {
                continue;
            }
            new = true;
            match set_affinity(tid, cpus) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    return Err(e).with_context(|| format!("pinning thread {tid} of {pid}"));
                }
                _ => {}
            }
        }
        if !new {
            break;
        }
    }
    Ok(())
}

struct Measured {
    placements: Vec<Placement>,
    /// [placement][target]
    latency: Vec<Vec<Sample>>,
    /// [client][target][round], the clients as in [`CLIENTS`].
    load: Vec<Vec<Vec<Option<Wrk>>>>,
    stops: Vec<Stops>,
}

/// The load's clients: wrk's threads for the 32 connections. Two (one per core) was the bench's
/// only client until stop 20; one takes less of the two cores the servers share (wrk's own
/// time a request 9–10 µs against 15 µs with two, measured per thread), so the servers get
/// more of the machine. Both in the same rounds.
const CLIENTS: [u32; 2] = [2, 1];

impl Measured {
    fn json(&self, criterion: &Value) -> Value {
        let mut targets = serde_json::Map::new();
        for (i, name) in TARGETS.iter().enumerate() {
            let rounds: serde_json::Map<String, Value> = CLIENTS
                .iter()
                .zip(&self.load)
                .map(|(t, l)| {
                    let rounds = l[i].iter().map(|w| w.as_ref().map_or(Value::Null, Wrk::json)).collect();
                    (format!("wrk -t{t} -c32"), Value::Array(rounds))
                })
                .collect();
            let latency: serde_json::Map<String, Value> = self
                .placements
                .iter()
                .zip(&self.latency)
                .map(|(p, l)| {
                    let placed = json!({"client_cpu": p.client, "server_cpu": p.server, "stats": l[i].stats().json(), "errors": l[i].errors.count});
                    (p.name.to_owned(), placed)
                })
                .collect();
            targets.insert((*name).into(), json!({"latency": latency, "wrk_rounds": rounds}));
        }
        let stops: Vec<Value> = self.stops.iter().map(Stops::json).collect();
        json!({"instantiate_and_call": criterion, "targets": targets, "timeouts": stops})
    }

    /// Median over rounds of a wrk figure, for client `c` and target `i`.
    fn wrk_median(&self, c: usize, i: usize, f: impl Fn(&Wrk) -> f64) -> f64 {
        let mut v: Vec<f64> = self.load[c][i].iter().flatten().map(f).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
    }
}

/// Deploy `wasm` as function `name` (manifest lines `extra` besides the tier's).
fn deploy(bin: &Path, daemon: &Daemon, tmp: &Path, name: &str, wasm: &Path, extra: &str) -> anyhow::Result<()> {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(wasm, dir.join("guest.wasm"))?;
    std::fs::write(
        dir.join("strata.toml"),
        format!("name = \"{name}\"\nruntime = \"wasm\"\nhandler = \"guest.wasm\"\n{extra}"),
    )?;
    let out = Command::new(bin)
        .arg("deploy")
        .arg(&dir)
        .env("STRATA_GATEWAY", &daemon.url)
        .output()?;
    if !out.status.success() {
        bail!("deploying {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The timeout of the calls to the spinning guest.
const LOOP_TIMEOUT_MS: u64 = 100;
/// How late past its timeout a spinning guest may be answered (the target).
const TIMEOUT_SLACK_MAX_MS: f64 = 50.0;

/// Calls to a guest that spins forever, under a 100 ms timeout: how long past the timeout
/// each was answered, how many were answered 504, and whether the call after each (to the same
/// function) was served.
struct Stops {
    condition: &'static str,
    /// How long each call answered took, as the client saw it.
    took: Sample,
    calls: usize,
    answered_504: usize,
    next_served: usize,
}

impl Stops {
    fn measure(condition: &'static str, addr: SocketAddr, n: usize) -> anyhow::Result<Stops> {
        let spin = crate::bench::request("GET", "/function/probe-loop/loop", b"");
        let counter = crate::bench::request("GET", "/function/probe-loop/counter", b"");
        let mut client = crate::bench::Client::new(addr);
        let mut s = Stops {
            condition,
            took: Sample::new()?,
            calls: n,
            answered_504: 0,
            next_served: 0,
        };
        // A call that fails outright (the connection dropped) counts as not answered 504 or
        // not served: what this measures, not a reason to stop.
        for _ in 0..n {
            let t = Instant::now();
            if let Ok(r) = client.call(&spin) {
                s.took.lat.saturating_record(t.elapsed().as_nanos() as u64);
                s.answered_504 += usize::from(r.status == 504);
            }
            if let Ok(next) = client.call(&counter) {
                s.next_served += usize::from(next.status == 200 && next.body == b"1");
            }
        }
        Ok(s)
    }

    /// Milliseconds past the timeout: the median, the 99th percentile and the most.
    fn late_ms(&self) -> [f64; 3] {
        let st = self.took.stats();
        [st.p50, st.p99, st.max].map(|us| us / 1000.0 - LOOP_TIMEOUT_MS as f64)
    }

    fn met(&self) -> bool {
        self.late_ms()[2] <= TIMEOUT_SLACK_MAX_MS && self.answered_504 == self.calls && self.next_served == self.calls
    }

    fn json(&self) -> Value {
        let [p50, p99, max] = self.late_ms();
        json!({"condition": self.condition, "calls": self.calls, "answered_504": self.answered_504,
               "next_served": self.next_served, "late_p50_ms": p50, "late_p99_ms": p99, "late_max_ms": max})
    }
}

/// `Stops` idle, then while wrk's 32 clients call hello-wasm on the same daemon.
fn stops(cfg: &Config, bin: &Path, daemon: &Daemon, tmp: &Path, probe: &Path) -> anyhow::Result<Vec<Stops>> {
    deploy(
        bin,
        daemon,
        tmp,
        "probe-loop",
        probe,
        &format!("timeout = \"{LOOP_TIMEOUT_MS}ms\"\nmemory = \"64MiB\"\n"),
    )?;
    let n = if cfg.quick { 10 } else { 40 };
    eprintln!("bench-wasm: {n} calls to a spinning guest ({LOOP_TIMEOUT_MS} ms timeout), idle and under load");
    let mut out = vec![Stops::measure("idle", daemon.addr, n)?];
    let url = format!("{}/function/hello-wasm", daemon.url);
    // Far longer than the calls below take; stopped once they are done, so the load lasts as
    // long as they do however late they come.
    let secs = 60 + n as u64 * (LOOP_TIMEOUT_MS + 1000) / 1000;
    if let Some(mut wrk) = crate::bench::wrk_command(&url, tmp, secs)? {
        let mut load = wrk.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        std::thread::sleep(Duration::from_secs(1));
        let measured = Stops::measure("under load (wrk -t2 -c32 calling hello-wasm)", daemon.addr, n);
        let running = load.try_wait()?.is_none();
        let _ = load.kill();
        let _ = load.wait();
        if !running {
            bail!("wrk stopped before the calls under load were done");
        }
        out.push(measured?);
    }
    Ok(out)
}

fn measure(
    cfg: &Config,
    bin: &Path,
    daemon: &Daemon,
    [wasmtime, tier_alone]: [&Path; 2],
    [component, probe]: [&Path; 2],
    tmp: &Path,
) -> anyhow::Result<Measured> {
    deploy(bin, daemon, tmp, "hello-wasm", component, "")?;
    let serve = Server::wasmtime(wasmtime, component)?;
    let alone = Server::tier_alone(tier_alone, component)?;
    let bare = bare_server()?;
    // The bare server's threads are the bench's own.
    let addrs = [
        (bare, "/", std::process::id()),
        (daemon.addr, "/function/hello-wasm", daemon.pid()? as u32),
        (serve.addr, "/", serve.child.id()),
        (alone.addr, "/", alone.child.id()),
    ];

    // The cores the bench was given (and the servers, started by it, with it): where the
    // placements are chosen, and what every thread gets back after them.
    let every_cpu = allowed_cpus()?;
    let placed = placements(&every_cpu);
    eprintln!(
        "bench-wasm: sequential latency, {} rounds of {}, pinned: {}",
        cfg.rounds,
        cfg.per_round,
        placed.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
    );
    let mut latency: Vec<Vec<Sample>> = placed
        .iter()
        .map(|_| TARGETS.iter().map(|_| Sample::new()).collect())
        .collect::<anyhow::Result<_>>()?;
    let rounds = (|| -> anyhow::Result<()> {
        for _ in 0..cfg.rounds {
            for (p, place) in placed.iter().enumerate() {
                for (i, (addr, path, pid)) in addrs.iter().enumerate() {
                    pin_process(*pid, &[place.server])?;
                    set_affinity(0, &[place.client])?;
                    let s = sequential(*addr, path, cfg.warmup, cfg.per_round, Duration::ZERO)?;
                    latency[p][i].add(&s)?;
                    pin_process(*pid, &every_cpu)?;
                }
            }
        }
        Ok(())
    })();
    // Every thread back on every core (wrk, started from this thread, inherits its pinning),
    // whether the rounds finished or not.
    for (_, _, pid) in addrs {
        if let Err(e) = pin_process(pid, &every_cpu) {
            eprintln!("bench-wasm: warning: process {pid} not given back every core: {e:#}");
        }
    }
    rounds?;
    eprintln!(
        "bench-wasm: throughput, wrk -t2 -c32 and wrk -t1 -c32, {} rounds of {} s",
        cfg.load_rounds, cfg.load_secs
    );
    let mut load: Vec<Vec<Vec<Option<Wrk>>>> = CLIENTS
        .iter()
        .map(|_| TARGETS.iter().map(|_| Vec::new()).collect())
        .collect();
    for _ in 0..cfg.load_rounds {
        for (c, threads) in CLIENTS.iter().enumerate() {
            for (i, (addr, path, _)) in addrs.iter().enumerate() {
                let url = format!("http://{addr}{path}");
                load[c][i].push(wrk_threads(&url, tmp, cfg.load_secs, *threads)?);
            }
        }
    }
    drop((serve, alone));
    let stops = stops(cfg, bin, daemon, tmp, probe)?;
    Ok(Measured {
        placements: placed,
        latency,
        load,
        stops,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn render(cfg: &Config, date: &str, machine: &Machine, criterion: &Value, m: &Measured, wasmtime: &str) -> String {
    let mut s = String::new();
    let push = |s: &mut String, line: &str| {
        s.push_str(line);
        s.push('\n');
    };
    push(&mut s, HEADING);
    push(&mut s, "");
    push(
        &mut s,
        &format!(
            "{date}; {} × {}, kernel {}, load {} ({:.1} cores busy before the run){}. Component: \
             `guests/hello` (Rust, wasm32-wasip2), POST `world`. Compared with {wasmtime} (`wasmtime serve -Scli=y`, \
             its defaults), a bare loopback HTTP server, and the tier alone (the `serve` example of \
             `strata-sandbox-wasm`: the same engine and component behind a minimal HTTP/1 server, one \
             single-threaded runtime per core, nothing of the platform: no gateway, records, logs or \
             metrics), in the same run.",
            machine.nproc,
            machine.cpu,
            machine.kernel,
            machine.load,
            machine.busy,
            if cfg.quick { ", **--quick**" } else { "" }
        ),
    );
    push(&mut s, "");
    push(
        &mut s,
        "Instantiate + call inside the daemon's process (criterion, `cargo bench -p strata-sandbox-wasm --bench instantiate`; every iteration in a histogram):",
    );
    push(&mut s, "");
    push(
        &mut s,
        "| series | calls | p50 | p99 | of which instantiate p50 | p99 | instance made ahead | their p50 | with its drop p50 | p99 |",
    );
    push(&mut s, "|---|---|---|---|---|---|---|---|---|---|");
    for (k, what) in [
        (
            "pooled",
            "pooled: instantiate and call in the call, the drop in a task right after it",
        ),
        (
            "ahead",
            "pooled, made ahead and dropped after on the recycler's thread (`when-idle`)",
        ),
        (
            "adaptive",
            "pooled, the daemon's default: whichever of the two the engine measures faster",
        ),
        (
            "after",
            "pooled, the next call's instance made right after the call, on its thread (`after-response`)",
        ),
        ("on_demand", "on demand (mmap per instance), all in the call"),
    ] {
        let c = &criterion[k];
        let f = |key: &str| format!("{:.1} µs", c[key].as_f64().unwrap_or(f64::NAN));
        push(
            &mut s,
            &format!(
                "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c["n"],
                f("p50_us"),
                f("p99_us"),
                f("instantiate_p50_us"),
                f("instantiate_p99_us"),
                c["ahead"].as_u64().unwrap_or(0),
                f("made_ahead_p50_us"),
                f("with_drop_p50_us"),
                f("with_drop_p99_us"),
            ),
        );
    }
    push(&mut s, "");
    push(
        &mut s,
        "Instantiate p50/p99 are over the calls that instantiated their own instance; \"their p50\" over the calls that found theirs made ahead. \"With its drop\": the call plus the tasks it left behind (its store's drop, the pool slot's reset), which the daemon runs after the response while a core is spare and inside the call when none is; the bench runs them after each call, outside its time. The target below is judged on the daemon's default (the `adaptive` row): what a call costs the way the daemon makes it.",
    );
    push(&mut s, "");
    push(
        &mut s,
        &format!(
            "One client, sequential, {} rounds × {} calls, interleaved, with the client's thread and every thread of the server under test pinned (`sched_setaffinity`): on one core (a round trip is a direct switch between them) and on two (each wake-up crosses cores: in this VM it wakes a halted vCPU). Left to the scheduler, the placement was a coin tossed per run, and the bare floor with it (5 µs or ~50 µs):",
            cfg.rounds, cfg.per_round
        ),
    );
    push(&mut s, "");
    push(
        &mut s,
        "| server | placement | calls | p50 | p90 | p99 | max | errors |",
    );
    push(&mut s, "|---|---|---|---|---|---|---|---|");
    let st: Vec<Vec<Stats>> = m
        .latency
        .iter()
        .map(|l| l.iter().map(Sample::stats).collect())
        .collect();
    for (i, name) in TARGETS.iter().enumerate() {
        for (p, place) in m.placements.iter().enumerate() {
            let st = &st[p][i];
            push(
                &mut s,
                &format!(
                    "| {name} | {} (client CPU {}, server CPU {}) | {} | {} | {} | {} | {} | {} |",
                    place.name,
                    place.client,
                    place.server,
                    st.n,
                    dur(st.p50),
                    dur(st.p90),
                    dur(st.p99),
                    dur(st.max),
                    m.latency[p][i].errors.count
                ),
            );
        }
    }
    push(&mut s, "");
    push(
        &mut s,
        &format!(
            "32 keep-alive clients (`wrk -c32 -d{}s`, with two client threads and with one), median of {} rounds, interleaved:",
            cfg.load_secs, cfg.load_rounds
        ),
    );
    push(&mut s, "");
    push(
        &mut s,
        "| server | client | requests/s | p50 | p90 | p99 | errors (last round) |",
    );
    push(&mut s, "|---|---|---|---|---|---|---|");
    for (i, name) in TARGETS.iter().enumerate() {
        for (c, threads) in CLIENTS.iter().enumerate() {
            let errors = m.load[c][i]
                .last()
                .and_then(|w| w.as_ref())
                .map_or("n/a".into(), |w| w.errors.clone());
            push(
                &mut s,
                &format!(
                    "| {name} | wrk -t{threads} | {:.0} | {} | {} | {} | {errors} |",
                    m.wrk_median(c, i, |w| w.rate),
                    dur(m.wrk_median(c, i, |w| w.p50_us)),
                    dur(m.wrk_median(c, i, |w| w.p90_us)),
                    dur(m.wrk_median(c, i, |w| w.p99_us)),
                ),
            );
        }
    }
    push(&mut s, "");
    push(
        &mut s,
        &format!(
            "A guest that spins forever (`guests/probe`, `/loop`) under `timeout = \"{LOOP_TIMEOUT_MS}ms\"`, {} sequential calls each, every one followed by a call to the same function's `/counter` (a fresh instance answers `1`); how long past the timeout each 504 came, as the client saw it:",
            m.stops.first().map_or(0, |x| x.calls)
        ),
    );
    push(&mut s, "");
    push(
        &mut s,
        "| condition | calls | answered 504 | next call served | late p50 | p99 | max |",
    );
    push(&mut s, "|---|---|---|---|---|---|---|");
    for x in &m.stops {
        let [p50, p99, max] = x.late_ms();
        push(
            &mut s,
            &format!(
                "| {} | {} | {} | {} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |",
                x.condition, x.calls, x.answered_504, x.next_served,
            ),
        );
    }
    let inst = criterion["adaptive"]["p50_us"].as_f64().unwrap_or(f64::NAN);
    let with_drop = criterion["adaptive"]["with_drop_p50_us"].as_f64().unwrap_or(f64::NAN);
    push(&mut s, "");
    push(&mut s, "| target | result | verdict |");
    push(&mut s, "|---|---|---|");
    push(
        &mut s,
        &format!(
            "| instantiate + call p50 ≤ {INSTANTIATE_MAX_US} µs | {inst:.1} µs (with its drop {with_drop:.1} µs) | {} |",
            verdict(inst <= INSTANTIATE_MAX_US)
        ),
    );
    for (p, place) in m.placements.iter().enumerate() {
        let (gateway, bare) = (st[p][1].p50, st[p][0].p50);
        let overhead = gateway - bare;
        push(
            &mut s,
            &format!(
                "| gateway overhead over the bare round trip, p50 ≤ {OVERHEAD_MAX_US} µs ({}) | {overhead:.0} µs ({} − {}) | {} |",
                place.name,
                dur(gateway),
                dur(bare),
                verdict(overhead <= OVERHEAD_MAX_US)
            ),
        );
    }
    for x in &m.stops {
        push(
            &mut s,
            &format!(
                "| a spinning guest answered 504 within timeout + {TIMEOUT_SLACK_MAX_MS:.0} ms, the next call served ({}) | {}/{} answered 504, {}/{} next served, at most {:.1} ms late | {} |",
                x.condition,
                x.answered_504,
                x.calls,
                x.next_served,
                x.calls,
                x.late_ms()[2],
                verdict(x.met())
            ),
        );
    }
    for (c, threads) in CLIENTS.iter().enumerate() {
        let rate = m.wrk_median(c, 1, |w| w.rate);
        let ratio = rate / m.wrk_median(c, 2, |w| w.rate);
        let (p99, p99_wt) = (m.wrk_median(c, 1, |w| w.p99_us), m.wrk_median(c, 2, |w| w.p99_us));
        push(
            &mut s,
            &format!(
                "| ≥ {THROUGHPUT_MIN:.0} requests/s, 32 clients (wrk -t{threads}) | {rate:.0} (the tier alone: {:.0}) | {} |",
                m.wrk_median(c, 3, |w| w.rate),
                verdict(rate >= THROUGHPUT_MIN)
            ),
        );
        push(
            &mut s,
            &format!(
                "| ≥ {VS_WASMTIME_MIN}× wasmtime serve's throughput (wrk -t{threads}) | {ratio:.2}× | {} |",
                verdict(ratio >= VS_WASMTIME_MIN)
            ),
        );
        push(
            &mut s,
            &format!(
                "| p99 under load no worse than wasmtime serve's (wrk -t{threads}) | {} vs {} | {} |",
                dur(p99),
                dur(p99_wt),
                verdict(p99 <= p99_wt)
            ),
        );
    }
    push(&mut s, "");
    push(
        &mut s,
        "Reproduce: `cargo xtask bench-wasm` (`--quick` for a short run). wrk is not a Strata client: the 32 connections and the server share the machine's 2 cores, so the rates are what one box does end to end.",
    );
    s
}
