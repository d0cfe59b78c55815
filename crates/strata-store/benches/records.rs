//! The store's writer under a stream of invocation records and log lines (one of each per
//! call, as a wasm function's call writes them), below its retention limit and at it (every
//! new record then removes an old one, with its call-id entry and log line).
//!
//! `cargo bench -p strata-store --bench records`

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_store::{Retention, Store};
use strata_types::{InvocationRecord, LogStream};

/// Calls per measured batch (then a flush, which waits for the writer).
const CALLS: u64 = 4_000;
/// Records and log lines kept per function in the "at retention" case.
const KEEP: u64 = 20_000;

fn record(function: &str, n: u64) -> InvocationRecord {
    InvocationRecord {
        // Time-ordered, as the gateway's UUID v7 call ids are.
        call_id: format!("0193{n:028x}"),
        function: function.into(),
        version: "3f2a9c1e0b7d".into(),
        started_at_ms: 1_790_000_000_000 + n,
        duration_ms: 0.071,
        cold: false,
        cold_start: None,
        status: 200,
        error: None,
        cpu_ms: 0.05,
        memory_peak_bytes: 1 << 20,
        instance: Some("wasm".into()),
    }
}

fn write_calls(store: &Store, function: &str, from: u64, n: u64) {
    for i in from..from + n {
        let r = record(function, i);
        let id = r.call_id.clone();
        store.record(r);
        store.log(function, Some(&id), LogStream::Stdout, "Hello, world!".into());
    }
    store.flush();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_writer");
    g.sample_size(20).measurement_time(Duration::from_secs(20));
    for (name, prefill) in [("below_retention", 0), ("at_retention", KEEP)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_with(
            dir.path(),
            Retention {
                records: KEEP,
                logs: KEEP,
            },
        )
        .expect("store");
        write_calls(&store, "hello-wasm", 0, prefill);
        let mut next = prefill;
        g.bench_function(format!("{name}/{CALLS}_calls"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Below the limit: a new function (its own sequence) every KEEP calls.
                    let function = match name {
                        "below_retention" => format!("below-{}", next / KEEP),
                        _ => "hello-wasm".to_owned(),
                    };
                    let t = Instant::now();
                    write_calls(&store, &function, next, CALLS);
                    total += t.elapsed();
                    next += CALLS;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
