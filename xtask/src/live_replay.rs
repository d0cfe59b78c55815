//! `cargo xtask replay [--quick] [--no-build] [--scale N]`: a scaled-down trace through the
//! real daemon, and the simulator's prediction for the same trace, side by side.
//!
//! Six functions with the invocation patterns the policies tell apart (every 5, 12 and 25
//! minutes, Poisson, bursts, a rare one) over four hours of trace time. For each policy
//! (fixed 10 minutes, the hybrid histogram and the hazard policy) a release daemon runs with
//! `--keep-alive-policy P --policy-time-scale N` (N trace milliseconds per real one, 120 by
//! default: a trace minute every half second), the functions are deployed with one instance
//! each (as the simulator models them), and every call is sent at its trace time divided by N.
//! Cold starts are counted from the invocation records (`cold_start` set: the call waited for
//! a new instance). The simulator (`simulate::replay::simulate`, the same `strata-policy`
//! code) replays the same trace with the same spread of calls inside each minute.
//!
//! Tolerance: per policy, live and predicted totals within max(2, 10%) of the prediction. Where
//! they can differ: the daemon carries out a decision a little after it is due (a timer and a
//! task wake-up; a millisecond is 0.12 s of trace time at N = 120), a prewarm takes a real cold
//! start before it can serve, a live cold start takes what it takes rather than the modelled
//! 2 s, and calls are HTTP requests on a shared 2-core machine. The result goes to the "Live replay" section of
//! `docs/cold-starts.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata_policy::{Config, MINUTE, PolicyKind};

use crate::bench::{Client, Daemon, Machine, replace_section_under, request, utc_now};
use crate::simulate::replay::{Schedule, simulate, spread};
use crate::simulate::trace::{Rng, Trace, TraceFn};

const HEADING: &str = "## Live replay";
const SEED: u64 = 7;
const COLD_START_MS: u32 = 2_000;
const DURATION_MS: u32 = 100;

/// The replayed trace: (name, kind, minutes with calls).
fn trace(minutes: u32) -> Trace {
    let mut rng = Rng::new(&[SEED]);
    let mut fns: Vec<(&str, Vec<(u32, u32)>)> = vec![
        ("every5", (2..minutes).step_by(5).map(|m| (m, 1)).collect()),
        ("every12", (3..minutes).step_by(12).map(|m| (m, 1)).collect()),
        ("every25", (4..minutes).step_by(25).map(|m| (m, 1)).collect()),
    ];
    // Poisson, one call every 3 minutes on average (at most one call per minute here).
    let poisson: Vec<(u32, u32)> = (0..minutes).filter(|_| rng.f64() < 1.0 / 3.0).map(|m| (m, 1)).collect();
    fns.push(("poisson3", poisson));
    // Bursts: five busy minutes with 2–4 calls each, every 45 minutes.
    let mut bursty = Vec::new();
    for start in (6..minutes).step_by(45) {
        for m in start..(start + 5).min(minutes) {
            bursty.push((m, 2 + rng.below(3) as u32));
        }
    }
    fns.push(("bursty", bursty));
    fns.push((
        "rare",
        [10, minutes / 2, minutes - 10].iter().map(|&m| (m, 1)).collect(),
    ));
    let mut t = Trace::new(minutes);
    for (name, cells) in fns {
        t.push(
            TraceFn {
                name: name.to_owned(),
                memory_mb: 128,
                duration_ms: DURATION_MS,
                cold_start_ms: COLD_START_MS,
                kind: name.to_owned(),
            },
            cells,
        );
    }
    t
}

/// Every call's arrival, trace ms, sorted: the first and last of a minute where the simulator
/// puts them, the others evenly between.
fn arrivals(trace: &Trace) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for f in 0..trace.fns.len() {
        for i in trace.range(f) {
            let (m, calls) = trace.at(i);
            let (first, last) = spread(SEED, f as u32, m, calls);
            let base = u64::from(m) * MINUTE;
            for k in 0..calls {
                let at = if calls == 1 {
                    first
                } else {
                    first + (last - first) * u64::from(k) / u64::from(calls - 1)
                };
                out.push((base + at, f));
            }
        }
    }
    out.sort_unstable();
    out
}

fn deploy(bin: &Path, url: &str, dir: &Path, name: &str) -> anyhow::Result<()> {
    crate::bench::deploy_python(
        bin,
        url,
        dir,
        name,
        "runtime = \"python\"\nhandler = \"main:handle\"\nmemory = \"128MiB\"\nmax_instances = 1\nconcurrency = 8\n",
        "def handle(req):\n    return 'ok'\n",
    )
}

fn cold_count(addr: SocketAddr, name: &str, calls: usize) -> anyhow::Result<u64> {
    let v = crate::bench::records(addr, name, calls)?;
    let failed = v.iter().filter(|r| r["status"].as_u64() != Some(200)).count();
    if failed > 0 {
        bail!("{name}: {failed} calls did not answer 200");
    }
    Ok(v.iter().filter(|r| !r["cold_start"].is_null()).count() as u64)
}

/// One policy through the daemon: cold starts per function.
fn live(bin: &Path, kind: PolicyKind, scale: f64, trace: &Trace) -> anyhow::Result<Vec<u64>> {
    let tmp = tempfile::tempdir()?;
    let scale_arg = scale.to_string();
    let mut daemon = Daemon::start_env(
        bin,
        tmp.path(),
        &["--keep-alive-policy", kind.name(), "--policy-time-scale", &scale_arg],
        &[],
    )?;
    for f in &trace.fns {
        deploy(bin, &daemon.url, &tmp.path().join("fns"), &f.name)?;
    }
    let calls = arrivals(trace);
    eprintln!(
        "replay: {kind}: {} calls over {} trace minutes ({:.0} s)",
        calls.len(),
        trace.minutes,
        f64::from(trace.minutes) * 60.0 / scale
    );
    let addr = daemon.addr;
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for (at, f) in calls {
        let when = Duration::from_secs_f64(at as f64 / 1000.0 / scale);
        if let Some(wait) = when.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let path = format!("/function/{}", trace.fns[f].name);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let r = Client::new(addr).call(&request("POST", &path, b"x"))?;
            if r.status != 200 {
                bail!("{path}: HTTP {}", r.status);
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a call thread panicked"))??;
    }
    let mut out = Vec::new();
    for (f, tf) in trace.fns.iter().enumerate() {
        out.push(cold_count(addr, &tf.name, trace.calls_of(f) as usize)?);
    }
    daemon.stop()?;
    Ok(out)
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let scale: f64 = match args.iter().position(|a| a == "--scale") {
        Some(i) => args.get(i + 1).context("--scale needs a number")?.parse()?,
        None => 120.0,
    };
    let bin = crate::bench::release_binary(repo, args)?;
    let date = utc_now();
    let machine = Machine::probe()?;
    let minutes = if quick { 120 } else { 240 };
    let trace = trace(minutes);
    let schedule = Schedule::new(&trace, SEED);
    let mut rows = String::new();
    let mut verdicts = Vec::new();
    for kind in [PolicyKind::Fixed, PolicyKind::Hybrid, PolicyKind::Hazard] {
        let predicted = simulate(&trace, &schedule, kind, &Config::default())?;
        let measured = live(&bin, kind, scale, &trace)?;
        let (p, m): (u64, u64) = (predicted.cold_by_fn.iter().sum(), measured.iter().sum());
        let tolerance = 2u64.max(p.div_ceil(10));
        let ok = p.abs_diff(m) <= tolerance;
        verdicts.push((kind, p, m, tolerance, ok));
        for (f, tf) in trace.fns.iter().enumerate() {
            rows += &format!(
                "| {kind} | {} | {} | {} | {} |\n",
                tf.name,
                trace.calls_of(f),
                predicted.cold_by_fn[f],
                measured[f]
            );
        }
        rows += &format!(
            "| {kind} | **all** | {} | **{p}** | **{m}** |\n",
            (0..trace.fns.len()).map(|f| trace.calls_of(f)).sum::<u64>()
        );
    }
    let verdict_lines: String = verdicts
        .iter()
        .map(|(k, p, m, tol, ok)| {
            format!(
                "- **{k}**: predicted {p}, measured {m} cold starts; tolerance ±{tol}: {}.\n",
                if *ok { "agrees" } else { "DISAGREES" }
            )
        })
        .collect();
    let md = format!(
        "{HEADING}\n\n\
Command: `cargo xtask replay{q}` (release daemon, `--policy-time-scale {scale}`: {scale} trace ms per real ms). \
Date: {date}. Machine: {nproc} × {cpu}, Linux {kernel}, load {load} at start. Six Python functions (`max_instances = 1`, \
`concurrency = 8`, as the simulator's one instance per function) over {minutes} trace minutes, seed {SEED}: every 5, 12 \
and 25 minutes, Poisson (one call every 3 minutes on average), bursts of 2–4 calls a minute for five minutes every 45, \
and a rare one (3 calls). Each call is sent at its trace time / {scale}; live cold starts are the calls whose record has a \
`cold_start`. The prediction is `simulate` over the same trace and spread of calls, with a modelled cold start of \
{COLD_START_MS} ms and calls of {DURATION_MS} ms. Tolerance per policy: the larger of 2 and 10% of the prediction \
(a decision is carried out a little after it is due, and a prewarm takes a real cold start: each real ms is {tick:.2} s of \
trace time).\n\n\
| policy | function | calls | predicted cold | measured cold |\n|---|---|---|---|---|\n{rows}\n{verdict_lines}",
        q = if quick { " --quick" } else { "" },
        nproc = machine.nproc,
        cpu = machine.cpu,
        kernel = machine.kernel,
        load = machine.load,
        tick = scale / 1000.0,
    );
    println!("{md}");
    let doc_path = repo.join("docs/cold-starts.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    std::fs::write(&doc_path, replace_section_under(&doc, HEADING, &md))?;
    if verdicts.iter().any(|v| !v.4) {
        bail!("the live replay disagrees with the simulator beyond the tolerance (see above)");
    }
    Ok(())
}
