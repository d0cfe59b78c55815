//! `cargo xtask bench-cold [--quick] [--no-build]`: Python cold starts through the gateway,
//! from the runtime template and from scratch, in the same run.
//!
//! Two daemons (release build) run side by side: one with runtime templates (the default),
//! one with `STRATA_RUNTIME_TEMPLATES=0`. Each has the same Python function with
//! `keep_alive = "0s"`, so every call is a cold start. Rounds interleave one call to each
//! and one bare `python3 -I -S -c pass` start, so noise hits all three alike. The records
//! give each cold start's path and breakdown. Then: the proportional set size (PSS) of one
//! idle instance of each kind, and a burst of 20 concurrent calls on a cold function whose
//! import takes 200 ms. Written to `target/bench/cold.json` and the "Python cold starts"
//! section of `docs/benchmarks.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::bench::{Client, Daemon, Machine, records, replace_section_under, request, utc_now};

const HEADING: &str = "## Python cold starts: runtime template (cargo xtask bench-cold)";
const P50_MAX_MS: f64 = 5.0;
const P99_MAX_MS: f64 = 15.0;
const BURST: usize = 20;
/// The pause before each measurement: the previous instance (`keep_alive = "0s"`) is torn
/// down after its call, and its exit (a few ms of CPU on this 2-core machine) would otherwise
/// land on the next cold start. Every variant gets the same pause.
const PAUSE: Duration = Duration::from_millis(30);

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?)
}

fn call(client: &mut Client, path: &str) -> anyhow::Result<u64> {
    let req = request("POST", path, b"world");
    let t = Instant::now();
    let r = client.call(&req)?;
    let us = t.elapsed().as_micros() as u64;
    if r.status != 200 {
        bail!("{path}: HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(us.max(1))
}

fn spawn_python() -> anyhow::Result<u64> {
    let t = Instant::now();
    let st = Command::new("/usr/bin/python3")
        .args(["-I", "-S", "-c", "pass"])
        .env_clear()
        .stdin(Stdio::null())
        .status()?;
    let us = t.elapsed().as_micros() as u64;
    if !st.success() {
        bail!("python3 -c pass: {st}");
    }
    Ok(us.max(1))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Cold {
    paths: std::collections::BTreeMap<String, usize>,
    cold: usize,
    sandbox_ms: f64,
    runtime_init_ms: f64,
    import_ms: f64,
}

fn cold_breakdown(records: &[Value]) -> Cold {
    let cs: Vec<&Value> = records
        .iter()
        .filter_map(|r| r.get("cold_start").filter(|c| !c.is_null()))
        .collect();
    let mut paths = std::collections::BTreeMap::new();
    for c in &cs {
        *paths
            .entry(c["path"].as_str().unwrap_or("scratch").to_owned())
            .or_insert(0) += 1;
    }
    let field = |k: &str| median(cs.iter().filter_map(|c| c[k].as_f64()).collect());
    Cold {
        paths,
        cold: cs.len(),
        sandbox_ms: field("sandbox_ms"),
        runtime_init_ms: field("runtime_init_ms"),
        import_ms: field("import_ms"),
    }
}

/// (pid, uid, comm) of the daemon's child processes.
fn children(pid: u32) -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        if field("PPid:") == pid.to_string() && !field("State:").starts_with('Z') {
            let (Ok(p), Ok(uid)) = (e.file_name().to_string_lossy().parse(), field("Uid:").parse()) else {
                continue;
            };
            out.push((p, uid, field("Name:")));
        }
    }
    out
}

/// (PSS, RSS) in KiB.
type Mem = Option<(u64, u64)>;

/// (PSS, RSS) in KiB from smaps_rollup.
fn pss_rss(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((kb("Pss:")?, kb("Rss:")?))
}

/// PSS and RSS of the one idle instance of `pss-py`, and of the template (if any).
fn memory(daemon: &Daemon) -> anyhow::Result<(Mem, Mem)> {
    let mut c = Client::new(daemon.addr);
    call(&mut c, "/function/pss-py")?;
    std::thread::sleep(Duration::from_millis(300));
    let kids = children(daemon.pid()? as u32);
    let instance = kids
        .iter()
        .find(|(_, uid, name)| *uid != 0 && name.starts_with("python"))
        .and_then(|(p, _, _)| pss_rss(*p));
    let template = kids
        .iter()
        .find(|(_, uid, name)| *uid == 0 && name.starts_with("python"))
        .and_then(|(p, _, _)| pss_rss(*p));
    Ok((instance, template))
}

/// 20 concurrent calls on the cold `burst-py`: (wall ms, cold starts, imports of ≥ 200 ms).
fn burst(addr: SocketAddr) -> anyhow::Result<(f64, usize, usize)> {
    let t = Instant::now();
    let threads: Vec<_> = (0..BURST)
        .map(|_| std::thread::spawn(move || call(&mut Client::new(addr), "/function/burst-py")))
        .collect();
    for th in threads {
        th.join().map_err(|_| anyhow::anyhow!("burst client panicked"))??;
    }
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    let recs = records(addr, "burst-py", BURST)?;
    let cs: Vec<&Value> = recs
        .iter()
        .filter_map(|r| r.get("cold_start").filter(|c| !c.is_null()))
        .collect();
    let imports = cs
        .iter()
        .filter(|c| c["import_ms"].as_f64().unwrap_or(0.0) >= 200.0)
        .count();
    Ok((wall, cs.len(), imports))
}

fn q(h: &Histogram<u64>, p: f64) -> f64 {
    h.value_at_quantile(p) as f64 / 1000.0
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let bin = crate::bench::release_binary(repo, args)?;
    let date = utc_now();
    let machine = Machine::probe()?;
    let tmp_t = tempfile::tempdir()?;
    let tmp_s = tempfile::tempdir()?;
    let mut templ = Daemon::start_env(&bin, tmp_t.path(), &[], &[])?;
    let mut scratch = Daemon::start_env(&bin, tmp_s.path(), &[], &[("STRATA_RUNTIME_TEMPLATES", "0")])?;
    let base = "runtime = \"python\"\nhandler = \"main:handle\"\n";
    let hello = "def handle(req):\n    return 'Hello, ' + req.text() + '!'\n";
    for d in [&templ, &scratch] {
        let fns = if d.addr == templ.addr {
            tmp_t.path()
        } else {
            tmp_s.path()
        }
        .join("fns");
        crate::bench::deploy_python(
            &bin,
            &d.url,
            &fns,
            "cold-py",
            &format!("{base}keep_alive = \"0s\"\n"),
            hello,
        )?;
        crate::bench::deploy_python(
            &bin,
            &d.url,
            &fns,
            "pss-py",
            &format!("{base}keep_alive = \"10m\"\n"),
            hello,
        )?;
        crate::bench::deploy_python(
            &bin,
            &d.url,
            &fns,
            "burst-py",
            &format!("{base}keep_alive = \"10m\"\nmax_instances = {BURST}\n"),
            &format!("import time\ntime.sleep(0.2)  # a 200 ms import\n{hello}"),
        )?;
        // A function with a dependency layer (networkx, a library whose import takes tens of
        // milliseconds), every call cold.
        let dir = fns.join("deps-py");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("requirements.txt"), "networkx==3.2.1\n")?;
        crate::bench::deploy_python(
            &bin,
            &d.url,
            &fns,
            "deps-py",
            &format!("{base}keep_alive = \"0s\"\n"),
            "import networkx as nx\n\ndef handle(req):\n    return str(nx.number_of_nodes(nx.path_graph(4)))\n",
        )?;
    }
    let n: usize = if quick { 60 } else { 400 };
    let warmup = 10;
    let (mut ht, mut hs, mut hp) = (histogram()?, histogram()?, histogram()?);
    let (mut ct, mut cs) = (Client::new(templ.addr), Client::new(scratch.addr));
    eprintln!("bench-cold: {n} rounds of (template, scratch, python3 -c pass)");
    for i in 0..warmup + n {
        // Rotate the order every round.
        let mut round = [0u64; 3];
        for k in 0..3 {
            let which = (i + k) % 3;
            std::thread::sleep(PAUSE);
            round[which] = match which {
                0 => call(&mut ct, "/function/cold-py")?,
                1 => call(&mut cs, "/function/cold-py")?,
                _ => spawn_python()?,
            };
        }
        if i >= warmup {
            ht.record(round[0])?;
            hs.record(round[1])?;
            hp.record(round[2])?;
        }
    }
    // Cold starts of the function with dependencies, template and scratch interleaved.
    let nd: usize = if quick { 20 } else { 100 };
    let (mut hdt, mut hds) = (histogram()?, histogram()?);
    for i in 0..nd + 3 {
        std::thread::sleep(PAUSE);
        let a = call(&mut ct, "/function/deps-py")?;
        std::thread::sleep(PAUSE);
        let b = call(&mut cs, "/function/deps-py")?;
        if i >= 3 {
            hdt.record(a)?;
            hds.record(b)?;
        }
    }
    let dt = cold_breakdown(&records(templ.addr, "deps-py", nd)?);
    let ds = cold_breakdown(&records(scratch.addr, "deps-py", nd)?);
    let bt = cold_breakdown(&records(templ.addr, "cold-py", n)?);
    let bs = cold_breakdown(&records(scratch.addr, "cold-py", n)?);
    std::thread::sleep(Duration::from_secs(1));
    let (mem_t, mem_zygote) = memory(&templ)?;
    let (mem_s, _) = memory(&scratch)?;
    let burst_t = burst(templ.addr)?;
    let burst_s = burst(scratch.addr)?;
    templ.stop()?;
    scratch.stop()?;

    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let (t50, t99, s50, s99, p50, p99) = (
        q(&ht, 0.5),
        q(&ht, 0.99),
        q(&hs, 0.5),
        q(&hs, 0.99),
        q(&hp, 0.5),
        q(&hp, 0.99),
    );
    let kib = |m: Mem| {
        m.map_or("n/a".to_owned(), |(pss, rss)| {
            format!(
                "{:.1} MiB PSS ({:.1} MiB RSS)",
                pss as f64 / 1024.0,
                rss as f64 / 1024.0
            )
        })
    };
    let paths = |c: &Cold| {
        c.paths
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let row = |name: &str, h: &Histogram<u64>| {
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            q(h, 0.5),
            q(h, 0.9),
            q(h, 0.99),
            h.max() as f64 / 1000.0
        )
    };
    let md = format!(
        "{HEADING}\n\n\
Command: `cargo xtask bench-cold{qk}` (release build). Date: {date}. Machine: {nproc} × {cpu}, Linux {kernel}, \
load {load} at start ({busy:.2} cores busy). Two daemons side by side, one with the Python runtime template, one \
with `STRATA_RUNTIME_TEMPLATES=0`; the same function (`keep_alive = \"0s\"`: every call is a cold start) on each; \
{n} interleaved rounds of one call to each and one `python3 -I -S -c pass` after {warmup} warm-up rounds, each \
measurement after a {pause} ms pause (so the previous instance's teardown does not land on it). Times \
are the client's, request written to response read, ms:\n\n\
| cold start through the gateway | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n\
{rt}\n{rs}\n{rp}\n\n\
- **Targets** (template path): p50 ≤ {P50_MAX_MS} ms: {t50:.2} ms, {v1}; p99 ≤ {P99_MAX_MS} ms: {t99:.2} ms, {v2}.\n\
- **Ratios, same run:** scratch/template {r50:.1}× at p50, {r99:.1}× at p99; template/bare `python3` start {rp50:.2}× at p50.\n\
- **Records** (medians of the measured calls' `cold_start`): template: {ct} cold ({pt}), sandbox {tsb:.2} ms, runtime \
init {tri:.2} ms, import {tim:.2} ms; scratch: {cs} cold ({ps}), sandbox {ssb:.2} ms, runtime init {sri:.2} ms, \
import {sim:.2} ms.\n\
- **Memory of one idle instance** (`/proc/PID/smaps_rollup`): templated {mt}; from scratch {ms}; the template \
process itself {mz} (its pages are shared copy-on-write by every templated instance, and PSS divides them among \
the sharers).\n\
- **With a dependency layer** (`requirements.txt`: networkx 3.2.1, mounted read-only; {nd} cold starts each, \
interleaved, same pause), ms:\n\n\
| cold start of a function importing networkx | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n\
{rdt}\n{rds}\n\n\
  Import of the handler module (median of the records): {dti:.1} ms from the template, {dsi:.1} ms from scratch; \
the template saves the interpreter's start, not the library's import: that needs a per-function template, which is \
not built yet.\n\
- **Burst of {BURST} concurrent calls** on a cold function whose import takes 200 ms (`max_instances = {BURST}`): \
template daemon {bt0:.0} ms wall, {bt1} cold starts, {bt2} imports paid; scratch daemon {bs0:.0} ms, {bs1} cold \
starts, {bs2} imports paid. Target \"only one import paid\": {v3}. Every instance the pool starts imports the \
module itself: there is no per-function template yet (a fork of an instance that has imported it), so one import \
per instance is paid whenever a burst needs more than one instance; with this fast handler the pool started \
{bt1} for the burst and queued the other calls on it.\n",
        qk = if quick { " --quick" } else { "" },
        pause = PAUSE.as_millis(),
        nproc = machine.nproc,
        cpu = machine.cpu,
        kernel = machine.kernel,
        load = machine.load,
        busy = machine.busy,
        rt = row("runtime template", &ht),
        rdt = row("runtime template", &hdt),
        rds = row("from scratch", &hds),
        dti = dt.import_ms,
        dsi = ds.import_ms,
        rs = row("from scratch", &hs),
        rp = row("bare `python3 -I -S -c pass` (spawn + wait)", &hp),
        v1 = verdict(t50 <= P50_MAX_MS),
        v2 = verdict(t99 <= P99_MAX_MS),
        r50 = s50 / t50,
        r99 = s99 / t99,
        rp50 = t50 / p50,
        ct = bt.cold,
        pt = paths(&bt),
        tsb = bt.sandbox_ms,
        tri = bt.runtime_init_ms,
        tim = bt.import_ms,
        cs = bs.cold,
        ps = paths(&bs),
        ssb = bs.sandbox_ms,
        sri = bs.runtime_init_ms,
        sim = bs.import_ms,
        mt = kib(mem_t),
        ms = kib(mem_s),
        mz = kib(mem_zygote),
        bt0 = burst_t.0,
        bt1 = burst_t.1,
        bt2 = burst_t.2,
        bs0 = burst_s.0,
        bs1 = burst_s.1,
        bs2 = burst_s.2,
        v3 = verdict(burst_t.2 <= 1),
    );
    println!("{md}");
    let dir = repo.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let j = json!({
        "date": date,
        "template_ms": {"p50": t50, "p99": t99}, "scratch_ms": {"p50": s50, "p99": s99},
        "python3_ms": {"p50": p50, "p99": p99}, "n": n,
        "pss_kib": {"template_instance": mem_t.map(|m| m.0), "scratch_instance": mem_s.map(|m| m.0),
                    "template_process": mem_zygote.map(|m| m.0)},
        "burst": {"template": [burst_t.0, burst_t.1, burst_t.2], "scratch": [burst_s.0, burst_s.1, burst_s.2]},
        "deps_ms": {"template": {"p50": q(&hdt, 0.5), "p99": q(&hdt, 0.99), "import": dt.import_ms},
                    "scratch": {"p50": q(&hds, 0.5), "p99": q(&hds, 0.99), "import": ds.import_ms}, "n": nd},
    });
    std::fs::write(dir.join("cold.json"), serde_json::to_string_pretty(&j)? + "\n")?;
    let doc_path = repo.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&doc_path, replace_section_under(&doc, HEADING, &md))?;
    Ok(())
}
