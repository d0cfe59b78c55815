//! `cargo xtask bench-cold [--quick] [--no-build]`: Python cold starts through the gateway,
//! from the function template, the runtime template and from scratch, in the same run.
//!
//! Three daemons (release build) run side by side: the default (function templates), one with
//! `STRATA_FUNCTION_TEMPLATES=0` (runtime template only) and one with
//! `STRATA_RUNTIME_TEMPLATES=0` (every instance from scratch). Each has the same Python
//! function with `keep_alive = "0s"`, so every call is a cold start. Rounds interleave one
//! call to each and one bare `python3 -I -S -c pass` start, so noise hits all alike. The
//! records give each cold start's path and breakdown. Then: a function importing networkx
//! from its dependency layer, the same way; the proportional set size (PSS) of one idle
//! instance of each kind; and a burst of 20 concurrent calls on a cold function whose import
//! takes 200 ms. Written to `target/bench/cold.json` and the "Python cold starts" section of
//! `docs/benchmarks.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::bench::{Client, Daemon, Machine, records, replace_section_under, request, utc_now};

const HEADING: &str = "## Python cold starts: templates (cargo xtask bench-cold)";
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
    launch_ms: f64,
    /// Medians of `cold_start.sandbox_steps`: cgroup, clone (or hand-over), mounts, privileges.
    steps: [f64; 4],
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
        launch_ms: field("launch_ms"),
        steps: ["cgroup_ms", "clone_ms", "mounts_ms", "privileges_ms"]
            .map(|k| median(cs.iter().filter_map(|c| c["sandbox_steps"][k].as_f64()).collect())),
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

/// PSS and RSS of the one idle instance of `pss-py`, of the runtime template (root, a child of
/// the daemon) and of the function template (a child of the daemon whose child is the
/// instance), when there are.
fn memory(daemon: &Daemon) -> anyhow::Result<[Mem; 3]> {
    let mut c = Client::new(daemon.addr);
    call(&mut c, "/function/pss-py")?;
    std::thread::sleep(Duration::from_millis(300));
    let kids = children(daemon.pid()? as u32);
    let python = |(_, _, name): &&(u32, u32, String)| name.starts_with("python");
    let zygote = kids.iter().filter(python).find(|(_, uid, _)| *uid == 0);
    let (mut instance, mut template) = (None, None);
    for (pid, _, _) in kids.iter().filter(python).filter(|(_, uid, _)| *uid != 0) {
        match children(*pid).into_iter().find(|(_, _, n)| n.starts_with("python")) {
            Some((child, _, _)) => {
                template = pss_rss(*pid);
                instance = pss_rss(child);
            }
            None if instance.is_none() => instance = pss_rss(*pid),
            None => {}
        }
    }
    Ok([instance, zygote.and_then(|(p, _, _)| pss_rss(*p)), template])
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

/// One daemon of the comparison.
struct Variant {
    name: &'static str,
    _tmp: tempfile::TempDir,
    daemon: Daemon,
    client: Client,
    cold: Histogram<u64>,
    deps: Histogram<u64>,
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let bin = crate::bench::release_binary(repo, args)?;
    let date = utc_now();
    let machine = Machine::probe()?;
    let base = "runtime = \"python\"\nhandler = \"main:handle\"\n";
    let hello = "def handle(req):\n    return 'Hello, ' + req.text() + '!'\n";
    let mut vs = Vec::new();
    for (name, env) in [
        ("function template", &[][..]),
        ("runtime template", &[("STRATA_FUNCTION_TEMPLATES", "0")][..]),
        ("from scratch", &[("STRATA_RUNTIME_TEMPLATES", "0")][..]),
    ] {
        let tmp = tempfile::tempdir()?;
        let daemon = Daemon::start_env(&bin, tmp.path(), &[], env)?;
        let fns = tmp.path().join("fns");
        let deploy = |f: &str, manifest: &str, code: &str| {
            crate::bench::deploy_python(&bin, &daemon.url, &fns, f, &format!("{base}{manifest}"), code)
        };
        deploy("cold-py", "keep_alive = \"0s\"\n", hello)?;
        deploy("pss-py", "keep_alive = \"10m\"\n", hello)?;
        deploy(
            "burst-py",
            &format!("keep_alive = \"10m\"\nmax_instances = {BURST}\n"),
            // Each call holds its instance 50 ms, so the burst needs several instances and
            // every instance started serves a call (its record shows what its start paid).
            "import time\ntime.sleep(0.2)  # a 200 ms import\n\ndef handle(req):\n    time.sleep(0.05)\n    return 'Hello, ' + req.text() + '!'\n",
        )?;
        // A function with a dependency layer (networkx, a library whose import takes tens of
        // milliseconds), every call cold.
        let dir = fns.join("deps-py");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("requirements.txt"), "networkx==3.2.1\n")?;
        deploy(
            "deps-py",
            "keep_alive = \"0s\"\n",
            "import networkx as nx\n\ndef handle(req):\n    return str(nx.number_of_nodes(nx.path_graph(4)))\n",
        )?;
        let client = Client::new(daemon.addr);
        vs.push(Variant {
            name,
            _tmp: tmp,
            daemon,
            client,
            cold: histogram()?,
            deps: histogram()?,
        });
    }
    let n: usize = if quick { 60 } else { 400 };
    let warmup = 10;
    let mut hp = histogram()?;
    let k = vs.len() + 1;
    eprintln!("bench-cold: {n} rounds of (function template, runtime template, scratch, python3 -c pass)");
    for i in 0..warmup + n {
        // Rotate the order every round.
        for j in 0..k {
            let which = (i + j) % k;
            std::thread::sleep(PAUSE);
            let us = match vs.get_mut(which) {
                Some(v) => call(&mut v.client, "/function/cold-py")?,
                None => spawn_python()?,
            };
            if i >= warmup {
                match vs.get_mut(which) {
                    Some(v) => v.cold.record(us)?,
                    None => hp.record(us)?,
                }
            }
        }
    }
    // Cold starts of the function with dependencies, interleaved the same way.
    let nd: usize = if quick { 20 } else { 100 };
    let nv = vs.len();
    for i in 0..nd + 3 {
        for j in 0..nv {
            let v = &mut vs[(i + j) % nv];
            std::thread::sleep(PAUSE);
            let us = call(&mut v.client, "/function/deps-py")?;
            if i >= 3 {
                v.deps.record(us)?;
            }
        }
    }
    let mut cold = Vec::new();
    let mut deps = Vec::new();
    for v in &vs {
        cold.push(cold_breakdown(&records(v.daemon.addr, "cold-py", n)?));
        deps.push(cold_breakdown(&records(v.daemon.addr, "deps-py", nd)?));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut mem = Vec::new();
    let mut bursts = Vec::new();
    for v in &vs {
        mem.push(memory(&v.daemon)?);
    }
    for v in &vs {
        bursts.push(burst(v.daemon.addr)?);
    }
    for v in &mut vs {
        v.daemon.stop()?;
    }

    let verdict = |ok: bool| if ok { "met" } else { "missed" };
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
    let table = |pick: &dyn Fn(&Variant) -> &Histogram<u64>| {
        vs.iter().map(|v| row(v.name, pick(v))).collect::<Vec<_>>().join("\n")
    };
    let (f50, f99) = (q(&vs[0].cold, 0.5), q(&vs[0].cold, 0.99));
    let (r50, r99) = (q(&vs[1].cold, 0.5), q(&vs[1].cold, 0.99));
    let (s50, s99) = (q(&vs[2].cold, 0.5), q(&vs[2].cold, 0.99));
    let p50 = q(&hp, 0.5);
    let breakdown = vs
        .iter()
        .zip(&cold)
        .map(|(v, c)| {
            format!(
                "{}: {} cold ({}), sandbox {:.2} ms (its steps: cgroup {:.2}, clone or hand-over {:.2}, mounts {:.2}, \
                 privileges {:.2}; the rest hand-offs), runtime init {:.2} ms, import {:.2} ms, the whole launch {:.2} ms",
                v.name,
                c.cold,
                paths(c),
                c.sandbox_ms,
                c.steps[0],
                c.steps[1],
                c.steps[2],
                c.steps[3],
                c.runtime_init_ms,
                c.import_ms,
                c.launch_ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let dep_imports = vs
        .iter()
        .zip(&deps)
        .map(|(v, c)| format!("{} {:.1} ms ({})", v.name, c.import_ms, paths(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let burst_text = vs
        .iter()
        .zip(&bursts)
        .map(|(v, b)| {
            format!(
                "{}: {:.0} ms wall, {} cold starts, {} imports paid",
                v.name, b.0, b.1, b.2
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let md = format!(
        "{HEADING}\n\n\
Command: `cargo xtask bench-cold{qk}` (release build). Date: {date}. Machine: {nproc} × {cpu}, Linux {kernel}, \
load {load} at start ({busy:.2} cores busy). Three daemons side by side: the default (function templates: the \
handler imported once per function version, instances forked from it), one with `STRATA_FUNCTION_TEMPLATES=0` \
(instances forked from the Python runtime template, which has only the interpreter and bootstrap loaded), one \
with `STRATA_RUNTIME_TEMPLATES=0` (every instance from scratch); the same function (`keep_alive = \"0s\"`: every \
call is a cold start) on each; {n} interleaved rounds of one call to each and one `python3 -I -S -c pass` after \
{warmup} warm-up rounds, each measurement after a {pause} ms pause (so the previous instance's teardown does not \
land on it). Times are the client's, request written to response read, ms:\n\n\
| cold start through the gateway | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n\
{cold_rows}\n{rp}\n\n\
- **Targets** (runtime template path, issue 6): p50 ≤ {P50_MAX_MS} ms: {r50:.2} ms, {v1}; p99 ≤ {P99_MAX_MS} ms: \
{r99:.2} ms, {v2}. Through the function template: p50 {f50:.2} ms ({v3}), p99 {f99:.2} ms ({v4}).\n\
- **Ratios, same run:** scratch/runtime template {sr50:.1}× at p50, {sr99:.1}× at p99; runtime template/function \
template {rf50:.2}× at p50; function template/bare `python3` start {fp50:.2}× at p50.\n\
- **Records** (medians of the measured calls' `cold_start`): {breakdown}.\n\
- **Memory of one idle instance** (`/proc/PID/smaps_rollup`): forked from the function template {m0}; from the \
runtime template {m1}; from scratch {m2}. The runtime template process {mz}; the function template process {mf}. \
Template pages are shared copy-on-write by the instances forked from them, and PSS divides them among the sharers.\n\
- **With a dependency layer** (`requirements.txt`: networkx 3.2.1, mounted read-only; {nd} cold starts each, \
interleaved, same pause), ms:\n\n\
| cold start of a function importing networkx | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n\
{deps_rows}\n\n\
  Import of the handler module (median of the records): {dep_imports}. The runtime template saves the \
interpreter's start, the function template also the library's import.\n\
- **Burst of {BURST} concurrent calls** on a cold function whose import takes 200 ms and whose calls take 50 ms \
(`max_instances = {BURST}`): {burst_text}. Target \"only one import paid\" (function template): {v5}.\n",
        qk = if quick { " --quick" } else { "" },
        pause = PAUSE.as_millis(),
        nproc = machine.nproc,
        cpu = machine.cpu,
        kernel = machine.kernel,
        load = machine.load,
        busy = machine.busy,
        cold_rows = table(&|v| &v.cold),
        deps_rows = table(&|v| &v.deps),
        rp = row("bare `python3 -I -S -c pass` (spawn + wait)", &hp),
        v1 = verdict(r50 <= P50_MAX_MS),
        v2 = verdict(r99 <= P99_MAX_MS),
        v3 = verdict(f50 <= P50_MAX_MS),
        v4 = verdict(f99 <= P99_MAX_MS),
        sr50 = s50 / r50,
        sr99 = s99 / r99,
        rf50 = r50 / f50,
        fp50 = f50 / p50,
        m0 = kib(mem[0][0]),
        m1 = kib(mem[1][0]),
        m2 = kib(mem[2][0]),
        mz = kib(mem[1][1]),
        mf = kib(mem[0][2]),
        v5 = verdict(bursts[0].2 <= 1),
    );
    println!("{md}");
    let dir = repo.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let per = |f: &dyn Fn(usize) -> Value| -> Value {
        vs.iter()
            .enumerate()
            .map(|(i, v)| (v.name.to_owned(), f(i)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let j = json!({
        "date": date, "n": n, "n_deps": nd,
        "python3_ms": {"p50": p50, "p99": q(&hp, 0.99)},
        "cold_ms": per(&|i| json!({"p50": q(&vs[i].cold, 0.5), "p99": q(&vs[i].cold, 0.99)})),
        "deps_ms": per(&|i| json!({"p50": q(&vs[i].deps, 0.5), "p99": q(&vs[i].deps, 0.99), "import": deps[i].import_ms})),
        "pss_kib": per(&|i| json!({"instance": mem[i][0].map(|m| m.0), "runtime_template": mem[i][1].map(|m| m.0),
                                   "function_template": mem[i][2].map(|m| m.0)})),
        "burst": per(&|i| json!(bursts[i])),
    });
    std::fs::write(dir.join("cold.json"), serde_json::to_string_pretty(&j)? + "\n")?;
    let doc_path = repo.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let old = "## Python cold starts: runtime template (cargo xtask bench-cold)";
    let doc = doc.replacen(old, HEADING, 1);
    std::fs::write(&doc_path, replace_section_under(&doc, HEADING, &md))?;
    Ok(())
}
