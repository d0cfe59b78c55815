//! `cargo xtask bench-async [--quick] [--no-build]`: the asynchronous path, end to end.
//!
//! Against a real daemon (release build): how many asynchronous calls per second are accepted
//! (202 after the group commit's fsync) by 32 keep-alive clients, while workers run them and
//! with running blocked; how many complete per second; and the latency from publish (just
//! before the POST) to the handler's first line, warm, one call at a time. Written to
//! `target/bench/async.json` and the "Asynchronous calls" section of `docs/benchmarks.md`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::bench::{Client, Daemon, Machine, replace_section_under, request, utc_now};

const HEADING: &str = "## Asynchronous calls (cargo xtask bench-async)";
const CLIENTS: usize = 32;
/// Targets of the issue.
const ACCEPT_MIN: f64 = 5_000.0;
const START_P50_MAX_MS: f64 = 2.0;

/// 32 clients posting asynchronous calls for `secs`; returns (accepted, refused, elapsed).
fn accept_load(addr: std::net::SocketAddr, path: &str, secs: f64) -> (u64, u64, f64) {
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let req = Arc::new(request("POST", path, b"world"));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (a, r, req) = (Arc::clone(&accepted), Arc::clone(&refused), Arc::clone(&req));
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                while Instant::now() < until {
                    match c.call(&req) {
                        Ok(rep) if rep.status == 202 => a.fetch_add(1, Ordering::Relaxed),
                        _ => r.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    )
}

fn queue_depth(addr: std::net::SocketAddr, function: &str) -> anyhow::Result<u64> {
    let r = Client::new(addr).call(&request("GET", "/metrics", b""))?;
    let text = String::from_utf8_lossy(&r.body);
    let key = format!("strata_async_queue_depth{{function_name=\"{function}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Publish one call, poll until it ran; the handler returns its start time.
fn publish_to_start(addr: std::net::SocketAddr, n: u64) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut c = Client::new(addr);
    let mut poll = Client::new(addr);
    for i in 0..n + 20 {
        let t0 = now_s();
        let r = c.call(&request("POST", "/async-function/bench-async-start", b"x"))?;
        if r.status != 202 {
            bail!("publish answered {}", r.status);
        }
        let v: Value = serde_json::from_slice(&r.body)?;
        let id = v["call_id"].as_str().context("call id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let started = loop {
            let s = poll.call(&request("GET", &format!("/api/v1/calls/{id}"), b""))?;
            let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
            if v["state"] == "succeeded" {
                break v["body"]
                    .as_str()
                    .and_then(|b| b.trim().parse::<f64>().ok())
                    .context("start time")?;
            }
            if Instant::now() > deadline {
                bail!("call {id} did not complete: {v}");
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        if i >= 20 {
            h.record((((started - t0) * 1e6).max(1.0)) as u64)?;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(h)
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let bin = crate::bench::release_binary(repo, args)?;
    let date = utc_now();
    let machine = Machine::probe()?;
    let tmp = tempfile::tempdir()?;
    // A queue bound far above what one run enqueues: the bench measures acceptance, not 429s.
    let mut daemon = Daemon::start_with(&bin, tmp.path(), &["--async-queue-depth", "10000000"])?;
    let (url, addr) = (daemon.url.clone(), daemon.addr);
    let fns = tmp.path().join("fns");
    let base = "runtime = \"python\"\nhandler = \"main:handle\"\n";
    crate::bench::deploy_python(
        &bin,
        &url,
        &fns,
        "bench-async",
        &format!("{base}max_instances = 4\n"),
        "def handle(req):\n    return 'hello'\n",
    )?;
    crate::bench::deploy_python(
        &bin,
        &url,
        &fns,
        "bench-async-blocked",
        &format!("{base}max_instances = 1\ntimeout = \"15m\"\n"),
        "import time\n\ndef handle(req):\n    time.sleep(600)\n",
    )?;
    crate::bench::deploy_python(
        &bin,
        &url,
        &fns,
        "bench-async-start",
        base,
        "import time\n\ndef handle(req):\n    return repr(time.time())\n",
    )?;
    let secs = if quick { 2.0 } else { 5.0 };

    // Accepted while the workers run the calls, then how fast the backlog completes.
    let t0 = Instant::now();
    let (acc, refused, el) = accept_load(addr, "/async-function/bench-async", secs);
    let accept_rate = acc as f64 / el;
    let deadline = Instant::now() + Duration::from_secs(300);
    while queue_depth(addr, "bench-async")? > 0 {
        if Instant::now() > deadline {
            bail!("the backlog did not drain in 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let complete_rate = acc as f64 / t0.elapsed().as_secs_f64();
    // Accepted with running blocked: the accept path alone.
    let (acc_b, refused_b, el_b) = accept_load(addr, "/async-function/bench-async-blocked", secs);
    let accept_only = acc_b as f64 / el_b;
    let n = if quick { 100 } else { 500 };
    let h = publish_to_start(addr, n)?;
    daemon.stop()?;

    let ms = |us: u64| us as f64 / 1000.0;
    let (p50, p90, p99, max) = (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    );
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let md = format!(
        "{HEADING}\n\n\
Command: `cargo xtask bench-async{q}` (release build; {CLIENTS} keep-alive clients; fsync on: every 202 follows the \
group commit that holds the call). Date: {date}. Machine: {nproc} × {cpu}, Linux {kernel}, load {load} at start \
({busy:.2} cores busy). Daemon, instances and clients share the 2 cores.\n\n\
| measurement | value | target |\n|---|---|---|\n\
| accepted/s, 32 clients, workers running the calls at the same time | {accept_rate:.0} ({refused} refused) | ≥ {ACCEPT_MIN:.0}: {v1} |\n\
| accepted/s, 32 clients, running blocked (the accept path alone) | {accept_only:.0} ({refused_b} refused) | ≥ {ACCEPT_MIN:.0}: {v2} |\n\
| completed/s (the same {acc} calls, first accept to empty queue) | {complete_rate:.0} | |\n\
| publish → handler start, warm, one at a time, p50 / p90 / p99 / max ({n} calls) | {p50:.2} / {p90:.2} / {p99:.2} / {max:.2} ms | p50 ≤ {START_P50_MAX_MS} ms: {v3} |\n\n\
The publish-to-start time runs from just before the client writes the POST to the handler's first line (`time.time()` in \
the function, the same clock), so it holds the HTTP request, the fsync'd group commit, the worker hand-off and the \
instance round trip; workers start a call as soon as it is queued, while its commit is still in flight, and the 202 waits \
for the commit.\n",
        q = if quick { " --quick" } else { "" },
        nproc = machine.nproc,
        cpu = machine.cpu,
        kernel = machine.kernel,
        load = machine.load,
        busy = machine.busy,
        v1 = verdict(accept_rate >= ACCEPT_MIN),
        v2 = verdict(accept_only >= ACCEPT_MIN),
        v3 = verdict(p50 <= START_P50_MAX_MS),
    );
    println!("{md}");
    let dir = repo.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let j = json!({
        "date": date, "accepted_per_s": accept_rate, "accepted_refused": refused, "accept_only_per_s": accept_only,
        "completed_per_s": complete_rate, "publish_to_start_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max, "n": n},
    });
    std::fs::write(dir.join("async.json"), serde_json::to_string_pretty(&j)? + "\n")?;
    let doc_path = repo.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&doc_path, replace_section_under(&doc, HEADING, &md))?;
    Ok(())
}
