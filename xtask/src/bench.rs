//! `cargo xtask bench [--quick] [--no-build]`: the end-to-end benchmark.
//!
//! One run, against a real daemon (`strata up`, release build) on loopback, measures warm
//! latency with one client, forced cold starts per runtime and throughput with 32 keep-alive
//! clients, each next to the floor measured in the same run: a bare loopback HTTP server's round
//! trip, a unix socket round trip, `python3 -c pass`, `node -e 0`, fork+exec. Latencies go into
//! HDR histograms; the cold starts' records give their breakdown. The
//! results are printed, written to `target/bench/e2e.json` and to the "End to end" section of
//! `docs/benchmarks.md`.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The heading of the section of `docs/benchmarks.md` this benchmark owns.
const HEADING: &str = "## End to end (cargo xtask bench)";
/// Keep-alive clients of the throughput runs.
pub(crate) const CLIENTS: usize = 32;
/// Request body of every invocation.
const BODY: &[u8] = b"world";

/// Targets of the issue.
const WARM_OVERHEAD_MAX_US: f64 = 100.0;
const EXEC_COLD_MAX_MS: f64 = 4.0;
const PY_COLD_OVER_BARE_MAX_MS: f64 = 10.0;
const PY_THROUGHPUT_MIN: f64 = 10_000.0;

/// Request counts and durations; `--quick` divides them by about five.
struct Config {
    quick: bool,
    /// `--no-build`: use the `target/release/strata` already built.
    build: bool,
    warm_n: u64,
    warmup_n: u64,
    cold_n: u64,
    cold_warmup_n: u64,
    spawn_n: u64,
    fork_n: u64,
    load: Duration,
    load_warmup: Duration,
}

impl Config {
    fn from_args(args: &[String]) -> anyhow::Result<Config> {
        let (mut quick, mut build) = (false, true);
        for a in args {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-build" => build = false,
                other => bail!("unknown argument {other:?} (usage: cargo xtask bench [--quick] [--no-build])"),
            }
        }
        let div = if quick { 5 } else { 1 };
        Ok(Config {
            quick,
            build,
            warm_n: 5000 / div,
            warmup_n: 200 / div,
            cold_n: 200 / div,
            cold_warmup_n: 3,
            spawn_n: if quick { 30 } else { 100 },
            fork_n: 1000 / div,
            load: Duration::from_secs(if quick { 3 } else { 10 }),
            load_warmup: Duration::from_secs(1),
        })
    }
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let cfg = Config::from_args(args)?;
    if cfg.build {
        build_release(repo)?;
    }
    let bin = repo.join("target/release/strata");
    let (date, machine_start) = (utc_now(), Machine::probe()?);
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let mut daemon = Daemon::start(&bin, tmp.path())?;
    let measured = measure(&cfg, repo, &bin, &daemon, tmp.path());
    if measured.is_err() {
        daemon.print_log_tail();
    }
    let stopped = daemon.stop();
    let results = measured?;
    stopped?;
    let report = Report {
        machine_start,
        machine_end: Machine::probe()?,
        date,
        results,
    };
    report.print(&cfg);
    report.write(&cfg, repo)
}

// ---------------------------------------------------------------------------------------------
// The measurements.

/// Everything one run measured.
struct Results {
    floors: Floors,
    warm: Vec<(Func, Sample)>,
    cold: Vec<ColdRun>,
    /// Exec cold starts with a pause before each.
    cold_paused: ColdRun,
    load: Vec<(&'static str, Load)>,
    wrk: Vec<(&'static str, Option<Wrk>)>,
}

/// Cold starts of one function: their latencies and the medians of their records.
type ColdRun = (Func, Sample, Breakdown);

/// What the platform's figures are compared with.
struct Floors {
    bare: Sample,
    unix: Sample,
    py: Sample,
    py_is: Sample,
    node: Sample,
    fork: Sample,
}

/// The pause before each call of the paused cold-start run.
const COLD_PAUSE: Duration = Duration::from_millis(100);

fn measure(cfg: &Config, repo: &Path, bin: &Path, daemon: &Daemon, tmp: &Path) -> anyhow::Result<Results> {
    for f in FUNCS {
        f.deploy(repo, bin, &daemon.url, tmp)?;
    }
    let bare_addr = bare_server()?;
    let floors = measure_floors(cfg, bare_addr)?;
    eprintln!("bench: warm latency");
    let mut warm = Vec::new();
    for f in [Func::ExecWarm, Func::PyWarm, Func::NodeWarm] {
        warm.push((
            f,
            sequential(daemon.addr, &f.path(), cfg.warmup_n, cfg.warm_n, Duration::ZERO)?,
        ));
    }
    let (cold, cold_paused) = measure_cold(cfg, daemon.addr)?;
    eprintln!("bench: throughput ({CLIENTS} clients)");
    let pid = daemon.pid()?;
    let py = Func::PyWarm.path();
    let load = vec![
        ("bare loopback server", load(bare_addr, "/", cfg, pid)?),
        ("exec (hello-c)", load(daemon.addr, &Func::ExecWarm.path(), cfg, pid)?),
        ("python hello", load(daemon.addr, &py, cfg, pid)?),
    ];
    let secs = cfg.load.as_secs();
    let wrk = vec![
        ("bare loopback server", wrk(&format!("http://{bare_addr}/"), tmp, secs)?),
        ("python hello", wrk(&format!("http://{}{py}", daemon.addr), tmp, secs)?),
    ];
    Ok(Results {
        floors,
        warm,
        cold,
        cold_paused,
        load,
        wrk,
    })
}

fn measure_floors(cfg: &Config, bare_addr: SocketAddr) -> anyhow::Result<Floors> {
    eprintln!("bench: floors");
    Ok(Floors {
        bare: sequential(bare_addr, "/", cfg.warmup_n, cfg.warm_n, Duration::ZERO)?,
        unix: unix_rtt_floor(cfg.warmup_n, cfg.warm_n)?,
        py: spawn_floor(&["/usr/bin/python3", "-c", "pass"], cfg.spawn_n)?,
        py_is: spawn_floor(&["/usr/bin/python3", "-I", "-S", "-c", "pass"], cfg.spawn_n)?,
        node: spawn_floor(&["/usr/bin/node", "-e", "0"], cfg.spawn_n)?,
        fork: fork_exec_floor(cfg.fork_n)?,
    })
}

/// Cold starts back to back per function, then exec cold starts after a pause each.
fn measure_cold(cfg: &Config, addr: SocketAddr) -> anyhow::Result<(Vec<ColdRun>, ColdRun)> {
    eprintln!("bench: cold starts");
    let mut cold = Vec::new();
    for f in [Func::ExecCold, Func::PyCold, Func::NodeCold, Func::ShellCold] {
        let sample = sequential(addr, &f.path(), cfg.cold_warmup_n, cfg.cold_n, Duration::ZERO)?;
        let breakdown = breakdown(addr, f.name(), cfg.cold_n, cfg.cold_warmup_n + cfg.cold_n)?;
        cold.push((f, sample, breakdown));
    }
    let n = cfg.cold_n / 4;
    let paused = sequential(addr, &Func::ExecCold.path(), 0, n, COLD_PAUSE)?;
    let breakdown = breakdown(addr, Func::ExecCold.name(), n, cfg.cold_warmup_n + cfg.cold_n + n)?;
    Ok((cold, (Func::ExecCold, paused, breakdown)))
}

// ---------------------------------------------------------------------------------------------
// The functions under test.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    PyWarm,
    PyCold,
    NodeWarm,
    NodeCold,
    ExecWarm,
    ExecCold,
    ShellCold,
}

const FUNCS: [Func; 7] = [
    Func::PyWarm,
    Func::PyCold,
    Func::NodeWarm,
    Func::NodeCold,
    Func::ExecWarm,
    Func::ExecCold,
    Func::ShellCold,
];

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::PyWarm => "bench-py-warm",
            Func::PyCold => "bench-py-cold",
            Func::NodeWarm => "bench-node-warm",
            Func::NodeCold => "bench-node-cold",
            Func::ExecWarm => "bench-exec-warm",
            Func::ExecCold => "bench-exec-cold",
            Func::ShellCold => "bench-shell-cold",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Func::PyWarm | Func::PyCold => "python hello",
            Func::NodeWarm | Func::NodeCold => "node hello",
            Func::ExecWarm | Func::ExecCold => "exec (hello-c)",
            Func::ShellCold => "shell stdio (hello-shell)",
        }
    }

    fn path(self) -> String {
        format!("/function/{}", self.name())
    }

    /// The example folder, the files copied from it and the manifest lines besides the name.
    fn source(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Func::PyWarm | Func::PyCold => (
                "hello-python",
                "main.py",
                "runtime = \"python\"\nhandler = \"main:handle\"\n",
            ),
            Func::NodeWarm | Func::NodeCold => (
                "hello-node",
                "index.js",
                "runtime = \"node\"\nhandler = \"index:handle\"\n",
            ),
            Func::ExecWarm | Func::ExecCold => ("hello-c", "hello", "runtime = \"exec\"\nhandler = \"hello\"\n"),
            Func::ShellCold => (
                "hello-shell",
                "handler.sh",
                "runtime = \"exec\"\nmode = \"stdio\"\nhandler = \"handler.sh\"\n",
            ),
        }
    }

    fn warm(self) -> bool {
        matches!(self, Func::PyWarm | Func::NodeWarm | Func::ExecWarm)
    }

    /// Write the function's folder under `tmp` and deploy it with the CLI.
    fn deploy(self, repo: &Path, bin: &Path, url: &str, tmp: &Path) -> anyhow::Result<()> {
        let (example, file, lines) = self.source();
        let dir = tmp.join("functions").join(self.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let src = repo.join("examples").join(example).join(file);
        std::fs::copy(&src, dir.join(file)).with_context(|| format!("copying {}", src.display()))?;
        let scaling = if self.warm() {
            "keep_alive = \"10m\"\nmax_instances = 4\n"
        } else {
            "keep_alive = \"0s\"\n"
        };
        let manifest = format!("name = \"{}\"\n{lines}{scaling}", self.name());
        std::fs::write(dir.join("strata.toml"), manifest).context("writing strata.toml")?;
        let out = Command::new(bin)
            .arg("deploy")
            .arg(&dir)
            .env("STRATA_GATEWAY", url)
            .stdin(Stdio::null())
            .output()
            .context("running strata deploy")?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            bail!(
                "strata deploy {} failed ({}): {}",
                dir.display(),
                out.status,
                text.trim()
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    pub(crate) url: String,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(bin: &Path, tmp: &Path) -> anyhow::Result<Daemon> {
        Self::start_with(bin, tmp, &[])
    }

    /// Start with extra `strata up` flags.
    pub(crate) fn start_with(bin: &Path, tmp: &Path, extra: &[&str]) -> anyhow::Result<Daemon> {
        Self::start_env(bin, tmp, extra, &[])
    }

    /// Start with extra `strata up` flags and environment variables.
    pub(crate) fn start_env(bin: &Path, tmp: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = tmp.join("daemon.log");
        let stderr = std::fs::File::create(&log).context("creating the daemon log")?;
        let child = Command::new(bin)
            .arg("up")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(tmp.join("data"))
            .args(extra)
            .env("STRATA_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} up", bin.display()))?;
        let mut d = Daemon {
            child: Some(child),
            addr,
            url: format!("http://{addr}"),
            log,
        };
        if let Err(e) = d.wait_healthy() {
            d.print_log_tail();
            return Err(e);
        }
        eprintln!("bench: daemon up on {}", d.url);
        Ok(d)
    }

    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let req = request("GET", "/healthz", b"");
        loop {
            if let Ok(r) = Client::new(self.addr).call(&req)
                && r.status == 200
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the daemon exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer /healthz within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> anyhow::Result<i32> {
        let child = self.child.as_ref().context("the daemon is stopped")?;
        Ok(i32::try_from(child.id())?)
    }

    /// SIGTERM, then wait (a minute at most) for the daemon to drain and exit.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on the pid of our own child, which we have not waited for yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("the daemon exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("the daemon did not stop within 60 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn print_log_tail(&self) {
        if let Ok(text) = std::fs::read_to_string(&self.log) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("bench: daemon log (last lines):");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("  {l}");
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: {e:#}");
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over a keep-alive TCP connection, both sides.

/// One HTTP message: its head (start line and headers) and body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A TCP stream with a read buffer, reading messages framed by `Content-Length`.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> std::io::Result<Wire> {
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Read more bytes; false on EOF.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next message, or None on EOF before it starts.
    fn read_message(&mut self) -> anyhow::Result<Option<Message>> {
        let head_len = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("connection closed in the middle of a message head");
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len - 4]).into_owned();
        let mut msg = Message { head, body: Vec::new() };
        if msg
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            self.buf.drain(..head_len);
            msg.body = self.read_chunked()?;
            return Ok(Some(msg));
        }
        let len: usize = msg
            .header("content-length")
            .map_or(Ok(0), str::parse)
            .context("bad Content-Length")?;
        while self.buf.len() < head_len + len {
            if !self.fill()? {
                bail!("connection closed in the middle of a message body");
            }
        }
        msg.body = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        Ok(Some(msg))
    }

    /// A chunked body (as `wasmtime serve` sends), the head already consumed; no trailers.
    fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill()? {
                    bail!("connection closed in a chunk header");
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            // The chunk, then CRLF (for the last, empty chunk: the final CRLF).
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                if !self.fill()? {
                    bail!("connection closed in a chunk");
                }
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..need);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// The bytes of a request with a `Content-Length` body.
pub(crate) fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// What the client keeps of a response.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// `X-Duration-Seconds`: the time the call spent in the gateway's handler, nanoseconds.
    platform_ns: Option<u64>,
}

/// A blocking keep-alive client; reconnects after an error or `Connection: close`.
pub(crate) struct Client {
    addr: SocketAddr,
    wire: Option<Wire>,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Client {
        Client { addr, wire: None }
    }

    pub(crate) fn call(&mut self, req: &[u8]) -> anyhow::Result<Reply> {
        let res = self.exchange(req);
        if res.as_ref().map_or(true, |(_, close)| *close) {
            self.wire = None;
        }
        res.map(|(r, _)| r)
    }

    fn exchange(&mut self, req: &[u8]) -> anyhow::Result<(Reply, bool)> {
        let wire = match &mut self.wire {
            Some(w) => w,
            None => {
                let stream = TcpStream::connect(self.addr).with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                self.wire.insert(Wire::new(stream)?)
            }
        };
        wire.stream.write_all(req)?;
        let msg = wire.read_message()?.context("connection closed before the response")?;
        let status = msg
            .head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let platform_ns = msg
            .header("x-duration-seconds")
            .and_then(|v| v.parse::<f64>().ok())
            .map(|s| (s * 1e9) as u64);
        let close = msg
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok((
            Reply {
                status,
                body: msg.body,
                platform_ns,
            },
            close,
        ))
    }
}

/// The floor: a bare HTTP/1.1 keep-alive server answering every request with 200 "ok".
pub(crate) fn bare_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("bare-accept".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = std::thread::Builder::new()
                .name("bare-conn".into())
                .spawn(move || serve_bare(stream));
        }
    })?;
    Ok(addr)
}

fn serve_bare(stream: TcpStream) -> anyhow::Result<()> {
    let mut wire = Wire::new(stream)?;
    while wire.read_message()?.is_some() {
        wire.stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Samples.

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Nanoseconds, 1 ns .. 10 min, 3 significant figures.
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

/// Latencies (ns), the gateway's own time per call (ns), and failed calls.
pub(crate) struct Sample {
    pub(crate) lat: Histogram<u64>,
    platform: Histogram<u64>,
    pub(crate) errors: Errors,
}

impl Sample {
    pub(crate) fn new() -> anyhow::Result<Sample> {
        Ok(Sample {
            lat: histogram()?,
            platform: histogram()?,
            errors: Errors::default(),
        })
    }

    pub(crate) fn add(&mut self, other: &Sample) -> anyhow::Result<()> {
        self.lat.add(&other.lat).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.platform
            .add(&other.platform)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.errors.count += other.errors.count;
        if self.errors.first.is_none() {
            self.errors.first.clone_from(&other.errors.first);
        }
        Ok(())
    }

    /// One timed call, recorded if `record`; failures are counted, not recorded.
    fn call(&mut self, client: &mut Client, req: &[u8], record: bool) {
        if let Some((ns, platform)) = self.timed(client, req)
            && record
        {
            self.record(ns, platform);
        }
    }

    /// One call: its latency and in-gateway time (ns), or None if it failed (then counted).
    fn timed(&mut self, client: &mut Client, req: &[u8]) -> Option<(u64, Option<u64>)> {
        let t = Instant::now();
        let res = client.call(req);
        let ns = t.elapsed().as_nanos() as u64;
        let err = match res {
            Ok(r) if r.status == 200 => return Some((ns, r.platform_ns)),
            Ok(r) => format!(
                "HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body).chars().take(300).collect::<String>()
            ),
            Err(e) => format!("{e:#}"),
        };
        self.errors.count += 1;
        self.errors.first.get_or_insert(err);
        None
    }

    fn record(&mut self, ns: u64, platform: Option<u64>) {
        self.lat.saturating_record(ns.max(1));
        if let Some(p) = platform {
            self.platform.saturating_record(p.max(1));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats::of(&self.lat)
    }

    fn json(&self) -> Value {
        json!({
            "latency": self.stats().json(), "in_gateway": Stats::of(&self.platform).json(),
            "errors": self.errors.count, "first_error": self.errors.first,
        })
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Errors {
    pub(crate) count: u64,
    pub(crate) first: Option<String>,
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) n: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Stats {
    fn of(h: &Histogram<u64>) -> Stats {
        let us = |ns: u64| ns as f64 / 1000.0;
        Stats {
            n: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"n": self.n, "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "max_us": self.max, "mean_us": self.mean})
    }
}

/// `warmup` unrecorded calls, then `n` recorded ones, one after another on one connection,
/// each after a pause of `gap`.
pub(crate) fn sequential(addr: SocketAddr, path: &str, warmup: u64, n: u64, gap: Duration) -> anyhow::Result<Sample> {
    let req = request("POST", path, BODY);
    let mut client = Client::new(addr);
    let mut sample = Sample::new()?;
    for i in 0..warmup + n {
        std::thread::sleep(gap);
        sample.call(&mut client, &req, i >= warmup);
    }
    Ok(sample)
}

/// A one-byte round trip over a unix socket to a forked child that echoes it: the floor of the
/// gateway's hop to an instance. `warmup` unrecorded, then `n` recorded.
fn unix_rtt_floor(warmup: u64, n: u64) -> anyhow::Result<Sample> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two new descriptors into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: fork(2) has no memory-safety preconditions; the child only runs `echo`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child; both descriptors are open and owned by nothing else here.
        unsafe { echo(fds[0], fds[1]) }
    }
    // SAFETY: fds[1] is open and ours; the child has its own copy.
    unsafe { libc::close(fds[1]) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    // SAFETY: fds[0] is an open descriptor nothing else owns.
    let mut sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fds[0]) };
    let mut sample = Sample::new()?;
    let mut byte = [0u8; 1];
    for i in 0..warmup + n {
        let t = Instant::now();
        sock.write_all(b"x")?;
        sock.read_exact(&mut byte)?;
        if i >= warmup {
            sample.lat.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    drop(sock);
    wait_pid(pid)?;
    Ok(sample)
}

/// The forked child of `unix_rtt_floor`: echo bytes on `fd` until EOF, then exit. Only
/// async-signal-safe calls.
///
/// # Safety
/// Call only in a freshly forked child; `other` and `fd` must be open descriptors.
unsafe fn echo(other: libc::c_int, fd: libc::c_int) -> ! {
    let mut b = [0u8; 1];
    // SAFETY: closing and reading/writing descriptors we own, into a local buffer; _exit ends
    // the child without running the parent's destructors.
    unsafe {
        libc::close(other);
        while libc::read(fd, b.as_mut_ptr().cast(), 1) == 1 {
            if libc::write(fd, b.as_ptr().cast(), 1) != 1 {
                break;
            }
        }
        libc::_exit(0)
    }
}

/// Spawn `argv` with an empty environment and wait for it, `n` times after 3 unrecorded runs.
fn spawn_floor(argv: &[&str], n: u64) -> anyhow::Result<Sample> {
    let mut sample = Sample::new()?;
    for i in 0..n + 3 {
        let t = Instant::now();
        // A clean environment, as in a sandbox (NODE_EXTRA_CA_CERTS alone adds ~100 ms to node).
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {argv:?}"))?;
        let ns = t.elapsed().as_nanos() as u64;
        if !status.success() {
            bail!("{argv:?}: {status}");
        }
        if i >= 3 {
            sample.lat.saturating_record(ns);
        }
    }
    Ok(sample)
}

/// fork(2) + execv("/bin/true") + waitpid, `n` times after 10 unrecorded runs.
fn fork_exec_floor(n: u64) -> anyhow::Result<Sample> {
    let path = CString::new("/bin/true")?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let mut sample = Sample::new()?;
    for i in 0..n + 10 {
        let t = Instant::now();
        // SAFETY: fork(2) has no memory-safety preconditions; the child below only calls
        // async-signal-safe functions (execv, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: `path` and `argv` are a valid NUL-terminated string and NULL-terminated
            // array that outlive the call; _exit does not return.
            unsafe {
                libc::execv(path.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            }
        }
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        wait_pid(pid)?;
        if i >= 10 {
            sample.lat.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(sample)
}

fn wait_pid(pid: libc::pid_t) -> anyhow::Result<()> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child with a valid pointer to a local int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waitpid");
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child {pid} ended with wait status {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Throughput.

/// A throughput run: the merged sample of all clients, the rate and where the CPU went.
struct Load {
    sample: Sample,
    secs: f64,
    cpu: CpuUse,
}

impl Load {
    fn rate(&self) -> f64 {
        self.sample.lat.len() as f64 / self.secs
    }
}

/// `CLIENTS` threads, each with its own keep-alive connection, calling as fast as they can;
/// calls started after the warm-up and ended before the deadline are counted.
fn load(addr: SocketAddr, path: &str, cfg: &Config, daemon_pid: i32) -> anyhow::Result<Load> {
    let req = request("POST", path, BODY);
    let start = Instant::now();
    let (from, until) = (start + cfg.load_warmup, start + cfg.load_warmup + cfg.load);
    let (samples, cpu) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(|| load_worker(addr, &req, from, until)))
            .collect();
        let cpu = cpu_window(from, until, daemon_pid);
        let samples: Vec<anyhow::Result<Sample>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked"))))
            .collect();
        (samples, cpu)
    });
    let mut sample = Sample::new()?;
    for s in samples {
        sample.add(&s?)?;
    }
    let secs = cfg.load.as_secs_f64();
    let cpu = cpu?.per_request(sample.lat.len());
    Ok(Load { sample, secs, cpu })
}

fn load_worker(addr: SocketAddr, req: &[u8], from: Instant, until: Instant) -> anyhow::Result<Sample> {
    let mut client = Client::new(addr);
    let mut sample = Sample::new()?;
    loop {
        let t = Instant::now();
        if t >= until {
            return Ok(sample);
        }
        let res = sample.timed(&mut client, req);
        // Count calls started after the warm-up and ended before the deadline.
        if let Some((ns, platform)) = res
            && t >= from
            && Instant::now() <= until
        {
            sample.record(ns, platform);
        }
    }
}

/// CPU time in clock ticks: the machine's busy and total time, the daemon's own, its function
/// instances' (its descendants, plus the children it reaped), ours (the clients).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    busy: u64,
    all: u64,
    daemon: u64,
    instances: u64,
    me: u64,
}

impl Cpu {
    fn read(daemon_pid: i32) -> anyhow::Result<Cpu> {
        let (busy, all) = machine_ticks()?;
        let procs = all_procs()?;
        let daemon = procs
            .iter()
            .find(|p| p.pid == daemon_pid)
            .context("the daemon is gone")?;
        let descendants = descendants(&procs, daemon_pid);
        let me = ProcStat::read(Path::new("/proc/self/stat"))?;
        Ok(Cpu {
            busy,
            all,
            daemon: daemon.ticks,
            instances: daemon.child_ticks + descendants.iter().map(|p| p.ticks).sum::<u64>(),
            me: me.ticks,
        })
    }
}

/// The machine's busy and total CPU time, clock ticks.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok((busy, busy + get(3) + get(4)))
}

/// What the benchmark needs of /proc/PID/stat.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: reaped children.
    child_ticks: u64,
}

impl ProcStat {
    fn read(path: &Path) -> anyhow::Result<ProcStat> {
        let stat = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (pid, rest) = stat.rsplit_once(')').context("bad stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields are numbered from 1 (pid); after the command, state is field 3.
        let field = |i: usize| -> anyhow::Result<i64> { Ok(f.get(i - 3).context("short stat")?.parse()?) };
        let ticks = |i: usize| -> anyhow::Result<u64> { Ok(u64::try_from(field(i)?)?) };
        Ok(ProcStat {
            pid: pid.split_whitespace().next().context("no pid")?.parse()?,
            ppid: i32::try_from(field(4)?)?,
            ticks: ticks(14)? + ticks(15)?,
            child_ticks: ticks(16)? + ticks(17)?,
        })
    }
}

/// Every process (that does not vanish while we read it).
fn all_procs() -> anyhow::Result<Vec<ProcStat>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let numeric = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if let (true, Ok(p)) = (numeric, ProcStat::read(&path.join("stat"))) {
            out.push(p);
        }
    }
    Ok(out)
}

fn descendants(procs: &[ProcStat], root: i32) -> Vec<ProcStat> {
    let mut tree = vec![root];
    let mut out: Vec<ProcStat> = Vec::new();
    while let Some(parent) = tree.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            tree.push(p.pid);
            out.push(*p);
        }
    }
    out
}

/// CPU between `from` and `until` (sleeps until then).
fn cpu_window(from: Instant, until: Instant, daemon_pid: i32) -> anyhow::Result<CpuWindow> {
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let a = Cpu::read(daemon_pid)?;
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let b = Cpu::read(daemon_pid)?;
    Ok(CpuWindow { a, b })
}

struct CpuWindow {
    a: Cpu,
    b: Cpu,
}

/// Where the CPU went during a throughput run.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    /// Cores busy on average (all processes).
    cores: f64,
    /// CPU microseconds per call: the daemon, its function instances, the benchmark's clients
    /// (and the bare server, which runs in the benchmark's process), everything else (interrupts,
    /// other processes).
    daemon_us: f64,
    instances_us: f64,
    client_us: f64,
    other_us: f64,
}

impl CpuUse {
    fn total_us(&self) -> f64 {
        self.daemon_us + self.instances_us + self.client_us + self.other_us
    }

    fn json(&self) -> Value {
        json!({
            "cores_busy": self.cores, "daemon_us_per_call": self.daemon_us,
            "instances_us_per_call": self.instances_us, "client_us_per_call": self.client_us,
            "other_us_per_call": self.other_us,
        })
    }
}

impl CpuWindow {
    fn per_request(&self, requests: u64) -> CpuUse {
        // SAFETY: sysconf(3) has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ncpu = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let (a, b) = (&self.a, &self.b);
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
        let (busy, all) = (d(a.busy, b.busy), d(a.all, b.all));
        let (daemon, instances, me) = (d(a.daemon, b.daemon), d(a.instances, b.instances), d(a.me, b.me));
        let per = |ticks: f64| ticks / hz * 1e6 / requests.max(1) as f64;
        CpuUse {
            cores: if all > 0.0 { busy / all * ncpu } else { 0.0 },
            daemon_us: per(daemon),
            instances_us: per(instances),
            client_us: per(me),
            other_us: per((busy - daemon - instances - me).max(0.0)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wrk, the cross-check.

pub(crate) struct Wrk {
    pub(crate) rate: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: String,
}

impl Wrk {
    pub(crate) fn json(&self) -> Value {
        json!({
            "requests_per_sec": self.rate, "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us,
            "errors": self.errors,
        })
    }
}

/// `wrk -t2 -c32 -d{secs}s --latency` POSTing "world" to `url`, or None without wrk.
pub(crate) fn wrk_command(url: &str, tmp: &Path, secs: u64) -> anyhow::Result<Option<Command>> {
    wrk_command_threads(url, tmp, secs, 2)
}

/// As [`wrk_command`], with `threads` client threads sharing the 32 connections.
pub(crate) fn wrk_command_threads(url: &str, tmp: &Path, secs: u64, threads: u32) -> anyhow::Result<Option<Command>> {
    let Some(bin) = ["/usr/bin/wrk", "/usr/local/bin/wrk"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return Ok(None);
    };
    let script = tmp.join("post.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.body = \"world\"\n")?;
    let mut c = Command::new(bin);
    c.args([
        &format!("-t{threads}"),
        "-c32",
        &format!("-d{secs}s"),
        "--latency",
        "-s",
    ])
    .arg(&script)
    .arg(url);
    Ok(Some(c))
}

pub(crate) fn wrk(url: &str, tmp: &Path, secs: u64) -> anyhow::Result<Option<Wrk>> {
    wrk_threads(url, tmp, secs, 2)
}

/// wrk with `threads` client threads (32 connections), its figures parsed.
pub(crate) fn wrk_threads(url: &str, tmp: &Path, secs: u64, threads: u32) -> anyhow::Result<Option<Wrk>> {
    let Some(mut wrk) = wrk_command_threads(url, tmp, secs, threads)? else {
        eprintln!("bench: wrk not found; no cross-check");
        return Ok(None);
    };
    let out = wrk.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
        .map(Some)
        .with_context(|| format!("parsing wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rate = value("Requests/sec:").context("no Requests/sec")?.parse()?;
    let pct = |p: &str| value(p).context("no latency distribution").and_then(wrk_duration_us);
    let errors: Vec<&str> = ["Non-2xx or 3xx responses:", "Socket errors:"]
        .into_iter()
        .filter_map(value)
        .collect();
    let errors = if errors.is_empty() {
        "0".to_owned()
    } else {
        errors.join("; ")
    };
    Ok(Wrk {
        rate,
        p50_us: pct("50%")?,
        p90_us: pct("90%")?,
        p99_us: pct("99%")?,
        errors,
    })
}

/// "812.00us", "1.23ms", "2.01s" → microseconds.
fn wrk_duration_us(s: &str) -> anyhow::Result<f64> {
    for (unit, factor) in [("us", 1.0), ("ms", 1e3), ("m", 60e6), ("s", 1e6)] {
        if let Some(n) = s.strip_suffix(unit) {
            return Ok(n.parse::<f64>()? * factor);
        }
    }
    bail!("not a wrk duration: {s:?}")
}

// ---------------------------------------------------------------------------------------------
// The cold-start breakdown from the invocation records.

/// Medians over the records of a function's last calls.
#[derive(Debug, Clone, Copy, Default)]
struct Breakdown {
    records: usize,
    cold: usize,
    sandbox_ms: f64,
    runtime_init_ms: f64,
    import_ms: f64,
    duration_ms: f64,
}

impl Breakdown {
    fn json(&self) -> Value {
        json!({
            "records": self.records, "cold": self.cold, "median_sandbox_ms": self.sandbox_ms,
            "median_runtime_init_ms": self.runtime_init_ms, "median_import_ms": self.import_ms,
            "median_duration_ms": self.duration_ms,
        })
    }
}

/// The breakdown of the last `n` calls of `name`, which has had `total` calls.
/// The newest `limit` invocation records of a function, newest first. Records are written in
/// batches: this waits (up to 5 s) until there are `limit` of them.
pub(crate) fn records(addr: SocketAddr, name: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    let req = request(
        "GET",
        &format!("/api/v1/functions/{name}/invocations?limit={limit}"),
        b"",
    );
    let mut client = Client::new(addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client.call(&req)?;
        if r.status != 200 {
            bail!(
                "GET invocations of {name}: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        let records: Vec<Value> = serde_json::from_slice(&r.body).context("invocation records")?;
        if records.len() >= limit || Instant::now() > deadline {
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn breakdown(addr: SocketAddr, name: &str, n: u64, total: u64) -> anyhow::Result<Breakdown> {
    let records = records(addr, name, total as usize)?;
    // Newest first: the measured calls.
    Ok(summarize(&records[..records.len().min(n as usize)]))
}

fn summarize(records: &[Value]) -> Breakdown {
    let cold: Vec<&Value> = records
        .iter()
        .filter_map(|r| r.get("cold_start").filter(|c| !c.is_null()))
        .collect();
    let field = |v: &[&Value], k: &str| median(v.iter().filter_map(|c| c.get(k)?.as_f64()).collect());
    let all: Vec<&Value> = records.iter().collect();
    Breakdown {
        records: records.len(),
        cold: cold.len(),
        sandbox_ms: field(&cold, "sandbox_ms"),
        runtime_init_ms: field(&cold, "runtime_init_ms"),
        import_ms: field(&cold, "import_ms"),
        duration_ms: field(&all, "duration_ms"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// The machine.

#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) load: String,
    /// Cores busy (with anything) during the second before the probe.
    pub(crate) busy: f64,
}

impl Machine {
    pub(crate) fn probe() -> anyhow::Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1.trim()));
        let nproc = std::thread::available_parallelism().map_or(1, usize::from);
        let (busy0, all0) = machine_ticks()?;
        std::thread::sleep(Duration::from_secs(1));
        let (busy1, all1) = machine_ticks()?;
        let load = std::fs::read_to_string("/proc/loadavg")?;
        Ok(Machine {
            nproc,
            cpu: cpu.unwrap_or("unknown").to_owned(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned(),
            load: load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            busy: (busy1 - busy0) as f64 / (all1 - all0).max(1) as f64 * nproc as f64,
        })
    }
}

/// Now as "YYYY-MM-DD HH:MM:SS UTC".
pub(crate) fn utc_now() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // "2026-11-26T22:48:33.120Z" → "2026-11-26 22:48:33 UTC"
    let iso = strata_types::units::format_rfc3339_ms(ms);
    format!("{} UTC", iso[..19].replace('T', " "))
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report {
    machine_start: Machine,
    machine_end: Machine,
    date: String,
    results: Results,
}

/// A table rendered both as aligned text and as Markdown, with notes below it.
struct Table {
    title: String,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: String, header: Vec<&'static str>, rows: Vec<Vec<String>>) -> Table {
        Table {
            title,
            header,
            rows,
            notes: Vec::new(),
        }
    }

    fn text(&self) -> String {
        let width = |i: usize| {
            let cells = self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count());
            cells.chain([self.header[i].chars().count()]).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: &[&str]| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            padded.join("  ").trim_end().to_owned() + "\n"
        };
        let mut out = format!("{}\n{}", self.title, line(&self.header));
        for r in &self.rows {
            out += &line(&r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        for n in &self.notes {
            out += &format!("  - {}\n", n.replace("**", ""));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n| {} |\n|", self.title, self.header.join(" | "));
        out += &" --- |".repeat(self.header.len());
        out.push('\n');
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        for n in &self.notes {
            out += &format!("- {n}\n");
        }
        out
    }
}

/// "812 µs", "3.41 ms", "41.2 ms", "1.52 s".
pub(crate) fn dur(us: f64) -> String {
    match us {
        u if u.is_nan() => "n/a".into(),
        u if u.abs() < 1000.0 => format!("{u:.0} µs"),
        u if u.abs() < 10_000.0 => format!("{:.2} ms", u / 1e3),
        u if u.abs() < 1_000_000.0 => format!("{:.1} ms", u / 1e3),
        u => format!("{:.2} s", u / 1e6),
    }
}

fn ms(v: f64) -> String {
    dur(v * 1e3)
}

fn signed(us: f64) -> String {
    if us >= 0.0 {
        format!("+{}", dur(us))
    } else {
        format!("−{}", dur(-us))
    }
}

/// p50, p90, p99, max.
fn percentiles(s: &Stats) -> [String; 4] {
    [dur(s.p50), dur(s.p90), dur(s.p99), dur(s.max)]
}

/// One target of the issue: met or missed, by how much, and what the time went to.
struct Target {
    what: String,
    limit: String,
    measured: String,
    met: bool,
    margin: String,
    why: String,
}

impl Report {
    fn warm(&self, f: Func) -> &Sample {
        let w = self.results.warm.iter().find(|(g, _)| *g == f);
        &w.expect("every warm function is measured").1
    }

    fn cold(&self, f: Func) -> (&Sample, &Breakdown) {
        let c = self
            .results
            .cold
            .iter()
            .find(|(g, _, _)| *g == f)
            .expect("every cold function is measured");
        (&c.1, &c.2)
    }

    fn load(&self, label: &str) -> &Load {
        &self
            .results
            .load
            .iter()
            .find(|(l, _)| *l == label)
            .expect("every load target is measured")
            .1
    }

    /// The floor of each cold start: its language's bare start, else fork+exec.
    fn cold_floor(&self, f: Func) -> (&'static str, &Sample) {
        match f {
            Func::PyCold => ("python3 -c pass", &self.results.floors.py),
            Func::NodeCold => ("node -e 0", &self.results.floors.node),
            _ => ("fork+exec /bin/true", &self.results.floors.fork),
        }
    }

    fn floors_table(&self) -> Table {
        let r = &self.results;
        let rows = [
            ("bare loopback HTTP round trip (1 keep-alive client)", &r.floors.bare),
            ("unix socket round trip to another process (1 byte)", &r.floors.unix),
            ("python3 -c pass (spawn + wait, empty environment)", &r.floors.py),
            ("python3 -I -S -c pass (the runtime's flags)", &r.floors.py_is),
            ("node -e 0 (spawn + wait, empty environment)", &r.floors.node),
            ("fork + exec /bin/true + wait", &r.floors.fork),
        ];
        let rows = rows.iter().map(|(what, s)| {
            let st = s.stats();
            [vec![what.to_string(), st.n.to_string()], percentiles(&st).to_vec()].concat()
        });
        Table::new(
            "Floors".into(),
            vec!["floor", "n", "p50", "p90", "p99", "max"],
            rows.collect(),
        )
    }

    fn warm_table(&self, cfg: &Config) -> Table {
        let bare = self.results.floors.bare.stats();
        let mut rows = vec![
            [
                vec!["bare loopback server (floor)".into()],
                percentiles(&bare).to_vec(),
                vec![
                    String::new(),
                    String::new(),
                    self.results.floors.bare.errors.count.to_string(),
                ],
            ]
            .concat(),
        ];
        for (f, s) in &self.results.warm {
            let st = s.stats();
            let gateway = Stats::of(&s.platform).p50;
            let tail = vec![dur(gateway), signed(st.p50 - bare.p50), s.errors.count.to_string()];
            rows.push([vec![f.label().into()], percentiles(&st).to_vec(), tail].concat());
        }
        let title = format!(
            "Warm latency: one client, sequential, {} calls after {} warm-up",
            cfg.warm_n, cfg.warmup_n
        );
        let header = vec![
            "function",
            "p50",
            "p90",
            "p99",
            "max",
            "in gateway p50",
            "overhead p50 vs bare",
            "errors",
        ];
        Table::new(title, header, rows)
    }

    fn cold_row(&self, label: String, (f, s, b): &ColdRun) -> Vec<String> {
        let st = s.stats();
        let (floor_name, floor) = self.cold_floor(*f);
        let fp50 = floor.stats().p50;
        let tail = vec![
            format!("{} ({floor_name})", dur(fp50)),
            format!("{} (×{:.1})", signed(st.p50 - fp50), st.p50 / fp50),
            ms(b.sandbox_ms),
            ms(b.runtime_init_ms),
            ms(b.import_ms),
            format!("{}/{}", b.cold, b.records),
            s.errors.count.to_string(),
        ];
        [vec![label], percentiles(&st).to_vec(), tail].concat()
    }

    fn cold_table(&self, cfg: &Config) -> Table {
        let mut rows: Vec<Vec<String>> = self
            .results
            .cold
            .iter()
            .map(|c| self.cold_row(c.0.label().into(), c))
            .collect();
        let paused = &self.results.cold_paused;
        let label = format!(
            "{}, {} ms pause before each call ({} calls)",
            paused.0.label(),
            COLD_PAUSE.as_millis(),
            paused.1.lat.len()
        );
        rows.push(self.cold_row(label, paused));
        let title = format!(
            "Cold start: keep_alive = \"0s\" (a new instance per call), one client, {} calls back to back after {} warm-up",
            cfg.cold_n, cfg.cold_warmup_n
        );
        let header = vec![
            "function",
            "p50",
            "p90",
            "p99",
            "max",
            "floor p50",
            "over floor p50",
            "sandbox",
            "runtime init",
            "import",
            "cold records",
            "errors",
        ];
        let mut t = Table::new(title, header, rows);
        t.notes.push(
            "sandbox / runtime init / import: medians of the calls' records (`cold_start`): creating the sandbox \
             until exec; exec until the runtime starts loading the handler (for exec functions: until `ready`); \
             loading the handler"
                .into(),
        );
        t
    }

    fn load_table(&self, cfg: &Config) -> Table {
        let rows = self.results.load.iter().map(|(label, l)| {
            let (st, c) = (l.sample.stats(), &l.cpu);
            let head = vec![label.to_string(), format!("{:.0}", l.rate())];
            let cpu = format!(
                "{:.0} / {:.0} / {:.0} / {:.0} µs",
                c.daemon_us, c.instances_us, c.client_us, c.other_us
            );
            let tail = vec![l.sample.errors.count.to_string(), format!("{:.2}", c.cores), cpu];
            [head, percentiles(&st).to_vec(), tail].concat()
        });
        let title = format!(
            "Throughput: {CLIENTS} keep-alive clients (one thread and connection each), {} s after {} s warm-up",
            cfg.load.as_secs(),
            cfg.load_warmup.as_secs()
        );
        let header = vec![
            "target",
            "req/s",
            "p50",
            "p90",
            "p99",
            "max",
            "errors",
            "cores busy",
            "CPU per call: daemon / instances / clients / other",
        ];
        let mut t = Table::new(title, header, rows.collect());
        t.notes.push(
            "CPU per call from /proc: the daemon process; its descendants (the function instances); the benchmark \
             process (its 32 client threads, and the bare server's threads in the first row); the rest of the \
             machine's busy time (interrupts, other processes)"
                .into(),
        );
        t
    }

    fn wrk_table(&self, cfg: &Config) -> Table {
        let rows = self.results.wrk.iter().map(|(label, w)| {
            let ours = format!("{:.0}", self.load(label).rate());
            match w {
                Some(w) => {
                    let p = [dur(w.p50_us), dur(w.p90_us), dur(w.p99_us)];
                    [
                        vec![label.to_string(), format!("{:.0}", w.rate)],
                        p.to_vec(),
                        vec![w.errors.clone(), ours],
                    ]
                    .concat()
                }
                None => vec![label.to_string(), "wrk not installed".into(), ours],
            }
        });
        let title = format!("Throughput cross-check: wrk -t2 -c32 -d{}s", cfg.load.as_secs());
        Table::new(
            title,
            vec![
                "target",
                "req/s",
                "p50",
                "p90",
                "p99",
                "errors",
                "req/s (our 32 clients)",
            ],
            rows.collect(),
        )
    }

    fn targets(&self) -> Vec<Target> {
        vec![
            self.warm_target(Func::ExecWarm),
            self.warm_target(Func::PyWarm),
            self.exec_cold_target(),
            self.py_cold_target(),
            self.py_throughput_target(),
        ]
    }

    fn warm_target(&self, f: Func) -> Target {
        let bare = self.results.floors.bare.stats().p50;
        let s = self.warm(f);
        let p50 = s.stats().p50;
        let gateway = Stats::of(&s.platform).p50;
        let overhead = p50 - bare;
        Target {
            what: format!("{} warm overhead p50 over the bare round trip", f.label()),
            limit: format!("≤ {}", dur(WARM_OVERHEAD_MAX_US)),
            measured: format!("{} ({} − {})", dur(overhead), dur(p50), dur(bare)),
            met: overhead <= WARM_OVERHEAD_MAX_US,
            margin: signed(overhead - WARM_OVERHEAD_MAX_US),
            why: format!(
                "{} of the {} p50 is spent in the gateway's handler (`X-Duration-Seconds`: the orchestrator, the \
                 protocol round trip to the instance over its unix socket, whose floor between two processes is {} \
                 here, the handler, the cgroup usage read); the other {} over the bare round trip is hyper/axum's \
                 HTTP handling and the hand-offs between tokio tasks",
                dur(gateway),
                dur(p50),
                dur(self.results.floors.unix.stats().p50),
                dur(p50 - gateway - bare)
            ),
        }
    }

    fn exec_cold_target(&self) -> Target {
        let (s, b) = self.cold(Func::ExecCold);
        let p50 = s.stats().p50;
        let limit = EXEC_COLD_MAX_MS * 1e3;
        let (_, ps, pb) = &self.results.cold_paused;
        Target {
            what: "exec cold start p50 through the gateway".into(),
            limit: format!("≤ {}", dur(limit)),
            measured: dur(p50),
            met: p50 <= limit,
            margin: signed(p50 - limit),
            why: format!(
                "medians of the records: sandbox {}, exec until `ready` {} (fork+exec+wait of /bin/true from a small \
                 process: {}); the remaining {} is the gateway, the orchestrator starting the instance and the call. \
                 With a {} ms pause before each call: p50 {}, sandbox {}",
                ms(b.sandbox_ms),
                ms(b.runtime_init_ms + b.import_ms),
                dur(self.results.floors.fork.stats().p50),
                ms(p50 / 1e3 - b.sandbox_ms - b.runtime_init_ms - b.import_ms),
                COLD_PAUSE.as_millis(),
                dur(ps.stats().p50),
                ms(pb.sandbox_ms)
            ),
        }
    }

    fn py_cold_target(&self) -> Target {
        let (s, b) = self.cold(Func::PyCold);
        let p50 = s.stats().p50;
        let bare = self.results.floors.py.stats().p50;
        let limit = bare + PY_COLD_OVER_BARE_MAX_MS * 1e3;
        Target {
            what: "python cold start p50, over bare `python3 -c pass`".into(),
            limit: format!("≤ {} ({} + 10 ms)", dur(limit), dur(bare)),
            measured: dur(p50),
            met: p50 <= limit,
            margin: signed(p50 - limit),
            why: format!(
                "medians of the records: sandbox {}, interpreter start and the bootstrap until the handler's import \
                 {} (bare `python3 -I -S -c pass`: {}), import {}; the remaining {} is the gateway, the orchestrator \
                 and the call",
                ms(b.sandbox_ms),
                ms(b.runtime_init_ms),
                dur(self.results.floors.py_is.stats().p50),
                ms(b.import_ms),
                ms(p50 / 1e3 - b.sandbox_ms - b.runtime_init_ms - b.import_ms)
            ),
        }
    }

    fn py_throughput_target(&self) -> Target {
        let l = self.load("python hello");
        let (rate, c) = (l.rate(), &l.cpu);
        let ncpu = self.machine_start.nproc as f64;
        Target {
            what: format!("python hello warm throughput, {CLIENTS} clients"),
            limit: format!("≥ {PY_THROUGHPUT_MIN:.0} req/s"),
            measured: format!("{rate:.0} req/s"),
            met: rate >= PY_THROUGHPUT_MIN,
            margin: format!(
                "{:+.0} req/s ({:+.0} %)",
                rate - PY_THROUGHPUT_MIN,
                (rate / PY_THROUGHPUT_MIN - 1.0) * 100.0
            ),
            why: format!(
                "{:.2} of {ncpu:.0} cores busy; CPU per call: the daemon {:.0} µs, the Python instances {:.0} µs, \
                 the benchmark's clients {:.0} µs, other {:.0} µs; {:.0} µs per call caps {ncpu:.0} cores at {:.0} \
                 req/s",
                c.cores,
                c.daemon_us,
                c.instances_us,
                c.client_us,
                c.other_us,
                c.total_us(),
                ncpu * 1e6 / c.total_us().max(1.0)
            ),
        }
    }

    fn targets_table(&self) -> Table {
        let targets = self.targets();
        let rows = targets.iter().map(|t| {
            let result = if t.met { "met" } else { "**missed**" };
            vec![
                t.what.clone(),
                t.limit.clone(),
                t.measured.clone(),
                format!("{result} ({})", t.margin),
            ]
        });
        let mut table = Table::new(
            "Targets".into(),
            vec!["target", "limit", "measured", "result (margin)"],
            rows.collect(),
        );
        table.notes = targets.iter().map(|t| format!("**{}**: {}", t.what, t.why)).collect();
        table
    }

    fn tables(&self, cfg: &Config) -> Vec<Table> {
        vec![
            self.targets_table(),
            self.warm_table(cfg),
            self.cold_table(cfg),
            self.load_table(cfg),
            self.wrk_table(cfg),
            self.floors_table(),
        ]
    }

    fn all_errors(&self) -> Vec<String> {
        let r = &self.results;
        let mut all: Vec<(String, &Errors)> = vec![("bare".into(), &r.floors.bare.errors)];
        all.extend(r.warm.iter().map(|(f, s)| (format!("{} warm", f.name()), &s.errors)));
        let cold = r.cold.iter().chain([&r.cold_paused]);
        all.extend(cold.map(|(f, s, _)| (format!("{} cold", f.name()), &s.errors)));
        all.extend(
            r.load
                .iter()
                .map(|(l, x)| (format!("{l} under load"), &x.sample.errors)),
        );
        let failed = all.into_iter().filter(|(_, e)| e.count > 0);
        failed
            .map(|(what, e)| {
                format!(
                    "{what}: {} errors, first: {}",
                    e.count,
                    e.first.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }

    fn preamble(&self, cfg: &Config) -> String {
        let (m, e) = (&self.machine_start, &self.machine_end);
        let cmd = if cfg.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        };
        let mut out = format!(
            "Command: `{cmd}`. Date: {}. Machine: {} × {}, Linux {}; load average (`uptime`) {} at the start, {} at \
             the end; {:.2} cores busy in the second before the start.",
            self.date, m.nproc, m.cpu, m.kernel, m.load, e.load, m.busy
        );
        if m.busy > 0.2 {
            out += " **The machine was not idle at the start: other work inflates the figures.**";
        }
        out
    }

    fn print(&self, cfg: &Config) {
        println!("\n{}\n", self.preamble(cfg));
        for t in self.tables(cfg) {
            println!("{}", t.text());
        }
        for e in self.all_errors() {
            println!("ERRORS: {e}");
        }
    }

    fn markdown(&self, cfg: &Config) -> String {
        let mut out = format!("{HEADING}\n\n{}\n\n", self.preamble(cfg));
        out += "The daemon (`strata up`, release build), its function instances and the benchmark's clients share \
                the machine. Latencies are client-side round trips over loopback HTTP/1.1 keep-alive connections \
                (TCP_NODELAY), recorded in HDR histograms; the floors are measured in the same run. \"In gateway\" \
                is the `X-Duration-Seconds` the gateway stamps on each response. All figures are also in \
                `target/bench/e2e.json`.\n\n";
        for t in self.tables(cfg) {
            out += &t.markdown();
            out.push('\n');
        }
        let errors = self.all_errors();
        if !errors.is_empty() {
            out += "Errors during the run:\n\n";
            for e in errors {
                out += &format!("- {e}\n");
            }
            out.push('\n');
        }
        out
    }

    fn json(&self, cfg: &Config) -> Value {
        let r = &self.results;
        let machine = |m: &Machine| json!({"nproc": m.nproc, "cpu": m.cpu, "kernel": m.kernel, "loadavg": m.load, "busy_cores": m.busy});
        let targets = self.targets().into_iter().map(|t| {
            json!({"target": t.what, "limit": t.limit, "measured": t.measured, "met": t.met, "margin": t.margin, "why": t.why})
        });
        let cold_json = |(_, s, b): &ColdRun| {
            let mut v = s.json();
            v["breakdown"] = b.json();
            v
        };
        let mut cold: serde_json::Map<String, Value> =
            r.cold.iter().map(|c| (c.0.name().to_owned(), cold_json(c))).collect();
        let paused = format!("{}-after-{}ms-pause", r.cold_paused.0.name(), COLD_PAUSE.as_millis());
        cold.insert(paused, cold_json(&r.cold_paused));
        let load = r.load.iter().map(|(l, x)| {
            let v = json!({"clients": CLIENTS, "secs": x.secs, "requests_per_sec": x.rate(), "sample": x.sample.json(),
                           "cpu": x.cpu.json()});
            (l.to_string(), v)
        });
        let wrk = r
            .wrk
            .iter()
            .map(|(l, w)| (l.to_string(), w.as_ref().map_or(Value::Null, Wrk::json)));
        json!({
            "bench": "end to end",
            "command": if cfg.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" },
            "date_utc": self.date,
            "machine": {"start": machine(&self.machine_start), "end": machine(&self.machine_end)},
            "floors": {
                "bare_loopback_rtt": r.floors.bare.json(), "unix_socket_rtt": r.floors.unix.json(),
                "python3_c_pass": r.floors.py.json(), "python3_I_S_c_pass": r.floors.py_is.json(),
                "node_e_0": r.floors.node.json(), "fork_exec_true": r.floors.fork.json(),
            },
            "warm": r.warm.iter().map(|(f, s)| (f.name().to_owned(), s.json())).collect::<serde_json::Map<_, _>>(),
            "cold": cold,
            "throughput": load.collect::<serde_json::Map<_, _>>(),
            "wrk": wrk.collect::<serde_json::Map<_, _>>(),
            "targets": targets.collect::<Vec<_>>(),
        })
    }

    fn write(&self, cfg: &Config, repo: &Path) -> anyhow::Result<()> {
        let dir = repo.join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let json_path = dir.join("e2e.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&self.json(cfg))? + "\n")?;
        let doc_path = repo.join("docs/benchmarks.md");
        let doc = match std::fs::read_to_string(&doc_path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", doc_path.display())),
        };
        std::fs::write(&doc_path, replace_section(&doc, &self.markdown(cfg)))?;
        eprintln!("bench: wrote {} and {}", json_path.display(), doc_path.display());
        Ok(())
    }
}

/// `doc` with the section under `HEADING` (up to the next `## ` heading) replaced by `section`,
/// or with `section` appended.
pub(crate) fn replace_section(doc: &str, section: &str) -> String {
    replace_section_under(doc, HEADING, section)
}

/// `doc` with the section under `heading` replaced by `section`, or with it appended.
/// Write a Python function `name` (manifest lines besides the name, and `main.py`) under `dir`
/// and deploy it with the CLI.
pub(crate) fn deploy_python(
    bin: &Path,
    url: &str,
    dir: &Path,
    name: &str,
    manifest: &str,
    code: &str,
) -> anyhow::Result<()> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join("strata.toml"), format!("name = \"{name}\"\n{manifest}"))?;
    std::fs::write(d.join("main.py"), code)?;
    let out = Command::new(bin)
        .arg("deploy")
        .arg(&d)
        .env("STRATA_GATEWAY", url)
        .output()?;
    if !out.status.success() {
        bail!("deploy {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `target/release/strata`, built first unless `args` has `--no-build`.
pub(crate) fn release_binary(repo: &Path, args: &[String]) -> anyhow::Result<PathBuf> {
    if !args.iter().any(|a| a == "--no-build") {
        build_release(repo)?;
    }
    Ok(repo.join("target/release/strata"))
}

/// `cargo build --release -p strata`, as a plain `cargo build` in a shell would run it: without
/// the variables `cargo run` gave this xtask (`CARGO_PKG_*` and the like, `LD_LIBRARY_PATH`), which made
/// the benches and a plain build rebuild each other's dependencies (minutes on 2 cores).
pub(crate) fn build_release(repo: &Path) -> anyhow::Result<()> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo)
        .args(["build", "--release", "-p", "strata", "-j2"]);
    // What `cargo run` sets for the program it runs (the user's own CARGO_* settings stay).
    const SET_BY_CARGO_RUN: [&str; 8] = [
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_RUSTC_CURRENT_DIR",
        "LD_LIBRARY_PATH",
    ];
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || SET_BY_CARGO_RUN.contains(&name.as_ref()) {
            cargo.env_remove(&k);
        }
    }
    eprintln!("bench: cargo build --release -p strata -j2");
    let status = cargo.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p strata failed: {status}");
    }
    Ok(())
}

pub(crate) fn replace_section_under(doc: &str, heading: &str, section: &str) -> String {
    let mut starts = vec![0];
    starts.extend(doc.match_indices('\n').map(|(i, _)| i + 1).filter(|&i| i < doc.len()));
    let line = |at: usize| doc[at..].split('\n').next().unwrap_or("");
    let Some(start) = starts.iter().copied().find(|&at| line(at).trim_end() == heading) else {
        return format!("{}\n\n{section}", doc.trim_end());
    };
    match starts
        .iter()
        .copied()
        .find(|&at| at > start && line(at).starts_with("## "))
    {
        Some(end) => format!("{}{section}\n{}", &doc[..start], &doc[end..]),
        None => format!("{}{section}", &doc[..start]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = "# Benchmarks\n\n## Process sandbox: spawn-to-exit\n\nx\n";
        let appended = replace_section(doc, "## End to end (cargo xtask bench)\n\nA\n");
        assert_eq!(
            appended,
            "# Benchmarks\n\n## Process sandbox: spawn-to-exit\n\nx\n\n## End to end (cargo xtask bench)\n\nA\n"
        );
        let replaced = replace_section(&appended, "## End to end (cargo xtask bench)\n\nB\n");
        assert_eq!(replaced, appended.replace("\nA\n", "\nB\n"));
        let middle =
            "# B\n\n## End to end (cargo xtask bench)\n\nA\n### sub\n\n## Process sandbox: spawn-to-exit\n\nx\n";
        let replaced = replace_section(middle, "## End to end (cargo xtask bench)\n\nB\n");
        assert_eq!(
            replaced,
            "# B\n\n## End to end (cargo xtask bench)\n\nB\n\n## Process sandbox: spawn-to-exit\n\nx\n"
        );
    }

    #[test]
    fn wrk_output_is_parsed() {
        let text = "  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.52ms\n     99%    \
                    2.5s\n  100000 requests in 10.00s, 9.00MB read\nRequests/sec:  10000.50\nTransfer/sec: 1MB\n";
        let w = parse_wrk(text).expect("parses");
        assert_eq!(
            (w.rate, w.p50_us, w.p90_us, w.p99_us),
            (10000.5, 812.0, 1520.0, 2_500_000.0)
        );
        assert_eq!(w.errors, "0");
    }

    #[test]
    fn dates_are_civil() {
        let d = utc_now();
        assert!(d.ends_with(" UTC") && d.len() == 23, "{d}");
    }

    #[test]
    fn bare_server_round_trip() {
        let addr = bare_server().expect("bare server");
        let s = sequential(addr, "/", 2, 20, Duration::ZERO).expect("runs");
        assert_eq!((s.lat.len(), s.errors.count), (20, 0));
    }
}
