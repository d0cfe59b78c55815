//! Instantiate + call of the hello component, inside the process (no HTTP): what a wasm call
//! costs the daemon. Criterion measures the mean; every iteration also goes into a
//! histogram, so the run reports p50 and p99 as well, and writes them to
//! `target/bench/wasm-instantiate.json`.
//!
//! Side by side in the same run:
//! - `pooled`: instantiate and call on the caller's path (pooling allocator, copy-on-write
//!   images, nothing done ahead); the store's drop (the pool slot's reset) in a task that runs
//!   once the call has returned, as the daemon does while a core is spare. Each iteration
//!   runs that task before the next call, outside the call's time, and reports it too
//!   ("with drop"): without it, the runtime ran the dropped stores only when a call had to
//!   wait for a free slot, a thousand at a time (a p99 of ~750 µs, and every call on another
//!   slot);
//! - `ahead`: the tier as the daemon runs it: the same, except that the engine's recycler
//!   thread makes each call's instance ahead of it and drops it after, so the caller waits
//!   for the guest's run only (the report counts how many calls found their instance made);
//! - `adaptive`: the daemon's default: made ahead or in place, whichever the engine measures
//!   to be faster for this function on this machine;
//! - `after`: the next call's instance made by the task that drops the call's store, right
//!   after the call (`Ahead::AfterResponse`): the call runs the guest only, and "with its
//!   drop" includes making the next one;
//! - `on_demand`: the `pooled` engine without the pool (mmap per instance), the baseline the
//!   pool is measured against.
//!
//! And the `preinit` guest (a wasip1 module whose set-up, a table of primes, is exported as
//! `wizer-initialize`), loaded as is (pre-initialised at load) and with the export renamed
//! (no pre-initialisation: every fresh instance builds the table), same call.
//!
//! Needs the guests: `cargo xtask examples`, then `cargo bench -p strata-sandbox-wasm`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use strata_sandbox_wasm::{Ahead, EngineConfig, HttpCall, Limits, WasmEngine, WasmFunction};

fn component() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/target/wasm32-wasip2/release/hello.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask examples` first",
        p.display()
    );
    p
}

fn load(dir: &std::path::Path, pooling: bool, ahead: Ahead, wasm: &std::path::Path) -> WasmFunction {
    let mut cfg = EngineConfig::new(dir.join(if pooling { "pooled" } else { "on-demand" }));
    cfg.pooling = pooling;
    cfg.ahead = ahead;
    let engine = WasmEngine::new(cfg).expect("engine");
    let limits = Limits::default();
    engine.load(wasm, limits).expect("load")
}

/// The preinit guest as built, and a copy whose `wizer-initialize` export is renamed.
fn preinit_modules(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/target/wasm32-wasip1/release/preinit.wasm");
    let wasm = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask examples` first", p.display()));
    let (from, to) = (b"wizer-initialize", b"wizer_initialize");
    let mut renamed = wasm.clone();
    let at = renamed
        .windows(from.len())
        .position(|w| w == from)
        .expect("the guest exports wizer-initialize");
    renamed[at..at + from.len()].copy_from_slice(to);
    let plain = dir.join("preinit-plain.wasm");
    std::fs::write(&plain, renamed).expect("write");
    (p, plain)
}

struct Series {
    name: &'static str,
    total: Histogram<u64>,
    instantiate: Histogram<u64>,
    /// Calls whose instance was made ahead of them.
    ahead: u64,
    /// The call's time, for calls whose instance was made ahead of them.
    made_ahead: Histogram<u64>,
    /// The call's time plus the tasks it left behind (its store's drop, when deferred).
    with_drop: Histogram<u64>,
}

static SERIES: Mutex<Vec<Series>> = Mutex::new(Vec::new());

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let call = HttpCall {
        method: "POST".into(),
        path_with_query: "/".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: Bytes::from_static(b"bench"),
    };
    let mut group = c.benchmark_group("wasm");
    group.measurement_time(Duration::from_secs(5));
    for (name, pooling, ahead) in [
        ("pooled", true, Ahead::Never),
        ("ahead", true, Ahead::WhenIdle),
        ("adaptive", true, Ahead::Adaptive),
        ("after", true, Ahead::AfterResponse),
        ("on_demand", false, Ahead::Never),
    ] {
        let f = load(dir.path(), pooling, ahead, &component());
        measure(&mut group, &rt, "instantiate_and_call", name, &f, &call, "Hello");
    }
    let (pre, plain) = preinit_modules(dir.path());
    let primes = HttpCall {
        method: "POST".into(),
        path_with_query: "/".into(),
        headers: Vec::new(),
        body: Bytes::from_static(b"10"),
    };
    for (name, wasm, want) in [
        ("preinit", &pre, "\"preinitialized\":true"),
        ("no_preinit", &plain, "\"preinitialized\":false"),
    ] {
        let f = load(dir.path(), true, Ahead::Never, wasm);
        measure(&mut group, &rt, "primes", name, &f, &primes, want);
    }
    group.finish();
    report();
}

/// Criterion's measurement of `call` on `f`, every iteration also in the series `name`'s
/// histograms; each answer must contain `want`.
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    what: &str,
    name: &'static str,
    f: &WasmFunction,
    call: &HttpCall,
    want: &str,
) {
    let mut total = Histogram::<u64>::new(3).expect("histogram");
    let mut instantiate = Histogram::<u64>::new(3).expect("histogram");
    let mut ahead = 0;
    let mut made_ahead = Histogram::<u64>::new(3).expect("histogram");
    let mut with_drop = Histogram::<u64>::new(3).expect("histogram");
    group.bench_function(format!("{what}/{name}"), |b| {
        b.iter_custom(|iters| {
            let mut sum = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let r = rt.block_on(f.call(call.clone()));
                let took = t.elapsed();
                // The tasks the call left (its store's drop, the next instance) run now, to
                // the end, before the next call: in the daemon they run right after the
                // response goes out. (They yield on the way: one turn may not finish them.)
                let d = Instant::now();
                for _ in 0..100 {
                    rt.block_on(tokio::task::yield_now());
                    if rt.metrics().num_alive_tasks() == 0 {
                        break;
                    }
                }
                let _ = with_drop.record((took + d.elapsed()).as_nanos() as u64);
                match &r.result {
                    Ok(reply) => assert!(String::from_utf8_lossy(&reply.body).contains(want), "{:?}", reply.body),
                    Err(e) => panic!("{e:?}"),
                }
                sum += took;
                let _ = total.record(took.as_nanos() as u64);
                if r.ahead {
                    ahead += 1;
                    let _ = made_ahead.record(took.as_nanos() as u64);
                } else if let Some(i) = r.instantiate {
                    let _ = instantiate.record(i.as_nanos() as u64);
                }
            }
            sum
        })
    });
    SERIES.lock().expect("series").push(Series {
        name,
        total,
        instantiate,
        ahead,
        made_ahead,
        with_drop,
    });
}

fn report() {
    let series = SERIES.lock().expect("series");
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut json = serde_json::Map::new();
    println!("\nper call, every criterion iteration (µs):");
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>14} {:>14} {:>8} {:>14} {:>14} {:>14}",
        "series", "n", "p50", "p99", "inst p50", "inst p99", "ahead", "ahead p50", "w/ drop p50", "w/ drop p99"
    );
    for s in series.iter() {
        println!(
            "{:<10} {:>8} {:>8.1} {:>8.1} {:>14.1} {:>14.1} {:>8} {:>14.1} {:>14.1} {:>14.1}",
            s.name,
            s.total.len(),
            us(&s.total, 0.5),
            us(&s.total, 0.99),
            us(&s.instantiate, 0.5),
            us(&s.instantiate, 0.99),
            s.ahead,
            us(&s.made_ahead, 0.5),
            us(&s.with_drop, 0.5),
            us(&s.with_drop, 0.99),
        );
        json.insert(
            s.name.into(),
            serde_json::json!({
                "n": s.total.len(),
                "p50_us": us(&s.total, 0.5),
                "p99_us": us(&s.total, 0.99),
                "instantiate_p50_us": us(&s.instantiate, 0.5),
                "instantiate_p99_us": us(&s.instantiate, 0.99),
                "ahead": s.ahead,
                "made_ahead_p50_us": us(&s.made_ahead, 0.5),
                "made_ahead_p99_us": us(&s.made_ahead, 0.99),
                "with_drop_p50_us": us(&s.with_drop, 0.5),
                "with_drop_p99_us": us(&s.with_drop, 0.99),
            }),
        );
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("wasm-instantiate.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
