//! The tier against real components: the guests in `guests/`, built by `cargo xtask examples`
//! (which `cargo xtask test` runs first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_sandbox_wasm::{
    Ahead, AllowedHosts, ArtifactSource, CallError, EngineConfig, HttpCall, Limits, WasmEngine, WasmFunction,
};

fn guest(name: &str) -> PathBuf {
    let target = if name == "upper" {
        "wasm32-wasip1"
    } else {
        "wasm32-wasip2"
    };
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../guests/target/{target}/release"))
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask examples` first",
        p.display()
    );
    p
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        timeout: Duration::from_millis(500),
        allowed_hosts: AllowedHosts::default(),
        env: vec![("GREETING".into(), "hi".into())],
        files: None,
        max_output_bytes: 64 << 10,
        max_response_bytes: 8 << 20,
    }
}

fn get(path: &str) -> HttpCall {
    HttpCall {
        method: "GET".into(),
        path_with_query: path.into(),
        headers: vec![],
        body: Bytes::new(),
    }
}

fn engine(dir: &std::path::Path) -> WasmEngine {
    engine_making(dir, Ahead::WhenIdle)
}

/// An engine whose recycler makes instances ahead `when`.
fn engine_making(dir: &std::path::Path, when: Ahead) -> WasmEngine {
    let mut cfg = EngineConfig::new(dir.join("cache"));
    cfg.max_instances = 64;
    cfg.ahead = when;
    WasmEngine::new(cfg).unwrap()
}

/// The cache shared by the tests that do not test the cache: unoptimised test builds of
/// Cranelift take seconds per compile. In cargo's scratch folder for integration tests (under
/// `target/`), not a `TempDir` in a static: statics are never dropped, so every run left one
/// behind in `/tmp`. Artifacts of another build are rejected by the cache's key and rebuilt.
fn shared_dir() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_TARGET_TMPDIR"), "/wasm-tier-shared"))
}

/// An engine on the shared cache.
fn shared() -> WasmEngine {
    engine(shared_dir())
}

#[tokio::test]
async fn echo_keeps_method_headers_query_and_binary_body() {
    let f = shared().load(&guest("probe"), limits()).unwrap();
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let r = f
            .call(HttpCall {
                method: method.into(),
                path_with_query: "/echo?a=1&b=two".into(),
                headers: vec![("x-custom".into(), "v1".into())],
                body: Bytes::from(body.clone()),
            })
            .await;
        let reply = r.result.unwrap();
        assert_eq!(reply.status, 200);
        let h = |k: &str| reply.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(h("x-method").as_deref(), Some(method));
        assert_eq!(h("x-path").as_deref(), Some("/echo"));
        assert_eq!(h("x-query").as_deref(), Some("a=1&b=two"));
        assert_eq!(h("x-echo-x-custom").as_deref(), Some("v1"));
        assert_eq!(&reply.body[..], &body[..], "{method}");
        assert!(r.instantiate.is_some());
    }
}

#[tokio::test]
async fn every_call_gets_a_fresh_instance() {
    let f = shared().load(&guest("probe"), limits()).unwrap();
    for _ in 0..5 {
        let reply = f.call(get("/counter")).await.result.unwrap();
        assert_eq!(&reply.body[..], b"1");
    }
}

#[tokio::test]
async fn every_call_is_fresh_whichever_way_the_engine_chooses() {
    // The daemon's default: while a core is spare, calls alternate in blocks of 64 between
    // instances made ahead and made in place until the engine has measured both, then
    // mostly take the faster way. Over 300 calls both ways serve (when this machine has a
    // core to spare), and every call must find the guest's counter at its initial value.
    let f = engine_making(shared_dir(), Ahead::Adaptive)
        .load(&guest("probe"), limits())
        .unwrap();
    let mut ahead = 0;
    for i in 0..300 {
        let r = f.call(get("/counter")).await;
        ahead += usize::from(r.ahead);
        assert_eq!(&r.result.unwrap().body[..], b"1", "call {i}");
    }
    eprintln!("{ahead} of 300 calls took an instance made ahead");
}

#[tokio::test]
async fn one_pool_slot_serves_calls_one_after_another_and_at_once() {
    // While a core is spare a call's store is dropped (its slot freed) by a task that runs
    // after the call has returned: the next call, waiting for the only slot, must get it.
    one_slot_serves("probe", get("/counter"), b"1").await;
}

#[tokio::test]
async fn one_pool_slot_serves_command_calls_one_after_another_and_at_once() {
    // The same for a command module, whose store is dropped the same way.
    let call = HttpCall {
        method: "POST".into(),
        body: Bytes::from_static(b"again"),
        ..get("/")
    };
    one_slot_serves("upper", call, b"POST AGAIN").await;
}

/// An engine of one slot serves `call` to `name` 20 times in a row, then 8 times at once,
/// each answered `want`.
async fn one_slot_serves(name: &str, call: HttpCall, want: &[u8]) {
    let mut cfg = EngineConfig::new(shared_dir().join("cache"));
    cfg.max_instances = 1;
    cfg.ahead = Ahead::Never;
    let f = WasmEngine::new(cfg).unwrap().load(&guest(name), limits()).unwrap();
    for i in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(20), f.call(call.clone()))
            .await
            .unwrap_or_else(|_| panic!("call {i} never got the pool's slot"));
        assert_eq!(&r.result.unwrap().body[..], want, "call {i}");
    }
    let calls = (0..8).map(|_| f.call(call.clone()));
    let all = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("concurrent calls on one slot all finish");
    for r in all {
        assert_eq!(&r.result.unwrap().body[..], want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_all_started_at_once_get_the_slots_their_retired_stores_free() {
    // Every call asks the recycler for an instance as it starts and hands it its store when it
    // ends. Started all at once, the calls have all asked before most of them end: the stores
    // retired after the recycler's last job must still be dropped and their slots freed (this
    // once deadlocked: the recycler slept with the stores, the calls waited for the slots).
    let mut cfg = EngineConfig::new(shared_dir().join("cache"));
    cfg.max_instances = 4;
    cfg.ahead = Ahead::Always;
    let f = std::sync::Arc::new(WasmEngine::new(cfg).unwrap().load(&guest("probe"), limits()).unwrap());
    for round in 0..5 {
        let calls = (0..64).map(|_| {
            let f = std::sync::Arc::clone(&f);
            tokio::spawn(async move { f.call(get("/counter")).await })
        });
        let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
            .await
            .unwrap_or_else(|_| panic!("round {round}: calls waited for pool slots nobody freed"));
        for r in all {
            assert_eq!(&r.unwrap().result.unwrap().body[..], b"1");
        }
        // Idle past the recycler's short waits, so the next round finds it in a long one.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

#[tokio::test]
async fn a_call_that_finds_no_free_slot_within_its_timeout_is_over_capacity() {
    // One slot, held for 3 s by a spinning guest; a call with a 300 ms timeout waits for it
    // 300 ms and is told the engine is full, without having started.
    let mut cfg = EngineConfig::new(shared_dir().join("cache"));
    cfg.max_instances = 1;
    cfg.ahead = Ahead::Never;
    let engine = WasmEngine::new(cfg).unwrap();
    let spin = engine
        .load(
            &guest("probe"),
            Limits {
                timeout: Duration::from_secs(3),
                ..limits()
            },
        )
        .unwrap();
    let quick = engine
        .load(
            &guest("probe"),
            Limits {
                timeout: Duration::from_millis(300),
                ..limits()
            },
        )
        .unwrap();
    let spinning = spin.call(get("/loop"));
    let waiting = async {
        // Let the spinning call take the slot first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let r = quick.call(get("/counter")).await;
        (r, t.elapsed())
    };
    let (spun, (r, waited)) = tokio::join!(spinning, waiting);
    assert!(matches!(spun.result, Err(CallError::Timeout(_))), "{:?}", spun.result);
    assert_eq!(
        r.result.unwrap_err(),
        CallError::OverCapacity(Duration::from_millis(300))
    );
    assert!(r.instantiate.is_none(), "it never started");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // The slot is free again: the next call is served.
    assert_eq!(&quick.call(get("/counter")).await.result.unwrap().body[..], b"1");
}

/// Ask for `f`'s next instance and wait until the recycler has made it.
async fn until_ready(f: &WasmFunction) {
    f.prepare_next();
    let t = Instant::now();
    while !f.has_ready() {
        assert!(t.elapsed() < Duration::from_secs(20), "no instance was made ahead");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn an_instance_made_ahead_serves_one_call_as_a_fresh_one_would() {
    // The recycler makes instances and drops used ones whatever this machine's load.
    let f = engine_making(shared_dir(), Ahead::Always)
        .load(&guest("probe"), limits())
        .unwrap();
    assert!(!f.has_ready(), "nothing is made before the function is called or asked");
    // Fresh: the guest's counter starts from its initial value in every call.
    for _ in 0..3 {
        until_ready(&f).await;
        let r = f.call(get("/counter")).await;
        assert!(r.ahead, "the call took the instance made for it");
        assert!(r.instantiate.is_some(), "how long making it took is reported");
        assert_eq!(&r.result.unwrap().body[..], b"1");
    }
    // Its own output and environment.
    until_ready(&f).await;
    let r = f.call(get("/log")).await;
    assert!(r.ahead);
    assert_eq!(&r.stdout.0[..], b"to stdout\n");
    assert_eq!(&r.stderr.0[..], b"to stderr\n");
    until_ready(&f).await;
    let r = f.call(get("/env?name=GREETING")).await;
    assert!(r.ahead);
    assert_eq!(&r.result.unwrap().body[..], b"hi");
    // Made well before its call, it still gets the whole timeout, counted from the call.
    until_ready(&f).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    let r = f.call(get("/loop")).await;
    let took = t.elapsed();
    assert!(r.ahead);
    assert_eq!(r.result.unwrap_err(), CallError::Timeout(Duration::from_millis(500)));
    assert!(
        took >= Duration::from_millis(500),
        "stopped after {took:?}, before its timeout"
    );
    // A trap or a memory bomb in an instance made ahead is reported as in any other, and is
    // that call's alone.
    until_ready(&f).await;
    match f.call(get("/trap")).await.result {
        Err(CallError::Trap(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
    until_ready(&f).await;
    assert!(matches!(
        f.call(get("/bomb")).await.result,
        Err(CallError::OutOfMemory(_))
    ));
    assert_eq!(&f.call(get("/counter")).await.result.unwrap().body[..], b"1");
}

#[tokio::test]
async fn an_instance_no_call_takes_is_dropped_and_its_slot_freed() {
    let mut cfg = EngineConfig::new(shared_dir().join("cache"));
    cfg.max_instances = 4;
    cfg.ahead = Ahead::Always;
    cfg.ready_idle = Duration::from_millis(50);
    let f = WasmEngine::new(cfg).unwrap().load(&guest("probe"), limits()).unwrap();
    until_ready(&f).await;
    let t = Instant::now();
    while f.has_ready() {
        assert!(t.elapsed() < Duration::from_secs(10), "kept past its idle time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // All four slots are free again: four calls that each hold theirs for the whole 500-ms
    // timeout all start at once (with a slot still held, one would wait for another's end).
    let calls: Vec<_> = (0..4).map(|_| f.call(get("/loop"))).collect();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.result.unwrap_err(), CallError::Timeout(Duration::from_millis(500)));
        assert!(
            r.queued < Duration::from_millis(250),
            "waited {:?} for a slot",
            r.queued
        );
    }
}

#[tokio::test]
async fn an_engine_that_makes_nothing_ahead_instantiates_in_the_call() {
    let f = engine_making(shared_dir(), Ahead::Never)
        .load(&guest("probe"), limits())
        .unwrap();
    f.prepare_next();
    for _ in 0..3 {
        let r = f.call(get("/counter")).await;
        assert!(!r.ahead);
        assert_eq!(&r.result.unwrap().body[..], b"1");
        assert!(!f.has_ready());
    }
}

#[tokio::test]
async fn an_instance_made_after_a_response_serves_the_next_call_and_expires_untaken() {
    // `AfterResponse`: the task that drops a call's store makes the next instance (as if a
    // core were always spare, whatever else the machine runs).
    let mut cfg = EngineConfig::new(shared_dir().join("cache"));
    cfg.max_instances = 8;
    cfg.ahead = Ahead::AfterResponse;
    // Long enough that no instance expires between being made and the next call taking it,
    // even on a loaded machine.
    cfg.ready_idle = Duration::from_millis(500);
    cfg.load_aware = false;
    let f = WasmEngine::new(cfg).unwrap().load(&guest("probe"), limits()).unwrap();
    assert!(!f.has_ready(), "nothing is made before the function is called");
    for i in 0..10 {
        let r = f.call(get("/counter")).await;
        assert_eq!(
            &r.result.unwrap().body[..],
            b"1",
            "call {i}: every call has a fresh instance"
        );
        assert_eq!(
            r.ahead,
            i > 0,
            "call {i}: made after the call before it, if there was one"
        );
        // The task the call left (drop its store, make the next instance) runs while this
        // one yields (more than once if an epoch tick made the instantiation yield).
        let t = Instant::now();
        while !f.has_ready() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "call {i} left no instance for the next"
            );
            tokio::task::yield_now().await;
        }
    }
    // Made after the last call and taken by none: the recycler drops it after its idle time.
    let t = Instant::now();
    while f.has_ready() {
        assert!(t.elapsed() < Duration::from_secs(10), "kept past its idle time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_spinning_guest_is_stopped_at_its_timeout_and_the_next_call_works() {
    let f = shared().load(&guest("probe"), limits()).unwrap();
    let t = Instant::now();
    let r = f.call(get("/loop")).await;
    let took = t.elapsed();
    assert_eq!(r.result.unwrap_err(), CallError::Timeout(Duration::from_millis(500)));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_millis(500 + 50),
        "stopped {took:?} after start, want < 550 ms"
    );
    assert_eq!(&f.call(get("/counter")).await.result.unwrap().body[..], b"1");
}

#[tokio::test]
async fn memory_is_capped() {
    let f = shared().load(&guest("probe"), limits()).unwrap();
    // Within the limit: fine.
    let r = f.call(get("/grow?mb=16")).await;
    assert!(r.memory_peak_bytes >= 16 << 20, "peak {} bytes", r.memory_peak_bytes);
    assert!(r.cpu > Duration::ZERO, "touching 16 MiB takes CPU time");
    let ok = r.result.unwrap();
    assert_eq!(&ok.body[..], b"16 MiB");
    // Growth past it fails inside the guest, which handles it.
    let partial = f.call(get("/grow?mb=200")).await.result.unwrap();
    let got: usize = std::str::from_utf8(&partial.body)
        .unwrap()
        .trim_end_matches(" MiB")
        .parse()
        .unwrap();
    assert!(got < 64, "got {got} MiB under a 64 MiB limit");
    // A guest that does not handle it aborts: reported as out of memory.
    match f.call(get("/bomb")).await.result {
        Err(CallError::OutOfMemory(m)) => assert!(m.contains("wasm"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_memory_limit_over_the_tiers_maximum_is_refused_before_anything_is_compiled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path().join("cache"));
    cfg.max_memory_bytes = 64 << 20;
    let engine = WasmEngine::new(cfg).unwrap();
    // At deploy (`prepare`), before the version is recorded, as at load.
    let e = engine.prepare(&guest("hello"), 128 << 20).unwrap_err();
    assert!(e.to_string().contains("over the wasm tier's maximum"), "{e}");
    let big = Limits {
        memory_bytes: 128 << 20,
        ..limits()
    };
    let e = engine.load(&guest("hello"), big).unwrap_err();
    assert!(e.to_string().contains("over the wasm tier's maximum"), "{e}");
    // Nothing was compiled into the cache for it.
    let cached = std::fs::read_dir(dir.path().join("cache")).map_or(0, |d| d.count());
    assert_eq!(cached, 0);
}

#[tokio::test]
async fn a_trap_is_reported_with_its_message() {
    let f = shared().load(&guest("probe"), limits()).unwrap();
    match f.call(get("/trap")).await.result {
        Err(CallError::Trap(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn output_env_and_no_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let f = engine(dir.path()).load(&guest("probe"), limits()).unwrap();
    let r = f.call(get("/log")).await;
    assert_eq!(&r.stdout.0[..], b"to stdout\n");
    assert_eq!(&r.stderr.0[..], b"to stderr\n");
    assert_eq!(&f.call(get("/env?name=GREETING")).await.result.unwrap().body[..], b"hi");
    let ls = f.call(get("/ls?dir=/")).await.result.unwrap();
    assert_eq!(
        ls.status,
        500,
        "no folder was granted: {:?}",
        String::from_utf8_lossy(&ls.body)
    );
    // A granted folder is readable.
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/a.txt"), b"x").unwrap();
    let mut l = limits();
    l.files = Some(dir.path().join("files"));
    let g = engine(dir.path()).load(&guest("probe"), l).unwrap();
    let ls = g.call(get("/ls?dir=/")).await.result.unwrap();
    assert_eq!((ls.status, &ls.body[..]), (200, &b"a.txt"[..]));
}

#[tokio::test]
async fn outbound_http_only_to_allowed_hosts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
                    .await;
            });
        }
    });
    let url = format!("/fetch?url=http://127.0.0.1:{port}/ping");
    let denied = shared().load(&guest("probe"), limits()).unwrap();
    let r = denied.call(get(&url)).await.result.unwrap();
    assert_eq!(r.status, 502);
    assert!(
        String::from_utf8_lossy(&r.body).contains("HttpRequestDenied"),
        "{:?}",
        r.body
    );
    let mut l = limits();
    l.allowed_hosts = AllowedHosts::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let allowed = shared().load(&guest("probe"), l).unwrap();
    let r = allowed.call(get(&url)).await.result.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"200 pong"[..]));
}

#[tokio::test]
async fn the_cache_is_used_and_bad_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine(dir.path()).prepare(&guest("hello"), 64 << 20).unwrap();
    assert!(matches!(first.source, ArtifactSource::Compiled { .. }), "{first:?}");
    // A new engine (a restart) finds it.
    let again = engine(dir.path()).prepare(&guest("hello"), 64 << 20).unwrap();
    assert_eq!(again.source, ArtifactSource::Cached);
    assert_eq!(again.key, first.key);
    // Damage it: detected, rebuilt, and the function still works.
    let path = dir.path().join("cache").join(format!("{}.cwasm", first.key));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let e = engine(dir.path());
    let f = e.load(&guest("hello"), limits()).unwrap();
    assert!(
        matches!(&f.info().source, ArtifactSource::Rebuilt { reason, .. } if reason.contains("checksum")),
        "{:?}",
        f.info()
    );
    let r = f
        .call(HttpCall {
            body: Bytes::from_static(b"wasm"),
            ..get("/")
        })
        .await
        .result
        .unwrap();
    assert_eq!(&r.body[..], b"Hello, wasm!\n");
    // And the rebuilt file is good again.
    assert_eq!(
        engine(dir.path()).prepare(&guest("hello"), 64 << 20).unwrap().source,
        ArtifactSource::Cached
    );
}

#[tokio::test]
async fn core_command_modules_are_adapted_body_on_stdin_response_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let info = e.prepare(&guest("upper"), 64 << 20).unwrap();
    assert!(matches!(info.source, ArtifactSource::Compiled { .. }));
    let f = e.load(&guest("upper"), limits()).unwrap();
    assert!(f.is_command());
    let r = f
        .call(HttpCall {
            method: "PUT".into(),
            body: Bytes::from_static(b"shout"),
            ..get("/")
        })
        .await;
    let reply = r.result.unwrap();
    assert_eq!((reply.status, &reply.body[..]), (200, &b"PUT SHOUT"[..]));
    assert_eq!(&r.stdout.0[..], b"", "a command's stdout is its response, not its log");
    assert_eq!(&r.stderr.0[..], b"PUT 5 bytes\n");
    let failed = f
        .call(HttpCall {
            body: Bytes::from_static(b"fail"),
            ..get("/")
        })
        .await;
    // WASI 0.2's exit carries success or failure, not the number: exit(3) arrives as 1.
    assert_eq!(failed.result.unwrap_err(), CallError::Exit(1));
    // The adapted component is cached too: a restart loads it without adapting or compiling.
    assert_eq!(
        engine(dir.path()).prepare(&guest("upper"), 64 << 20).unwrap().source,
        ArtifactSource::Cached
    );
}

#[tokio::test]
async fn garbage_and_modules_without_an_entry_point_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
    let err = e
        .prepare(&dir.path().join("junk.wasm"), 64 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");
    // A core module that is not a WASI command (a library with no imports or `_start`).
    std::fs::write(dir.path().join("lib.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = e
        .prepare(&dir.path().join("lib.wasm"), 64 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither wasi:http/incoming-handler nor wasi:cli/run") || err.contains("cannot be adapted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_are_all_answered() {
    // Unoptimised test builds of wasmtime are slow: the point here is that all are answered.
    let l = Limits {
        timeout: Duration::from_secs(30),
        ..limits()
    };
    let f = std::sync::Arc::new(shared().load(&guest("hello"), l).unwrap());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let f = std::sync::Arc::clone(&f);
        set.spawn(async move {
            let r = f
                .call(HttpCall {
                    body: Bytes::from(format!("n{i}")),
                    ..get("/")
                })
                .await;
            (i, r.result.unwrap())
        });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        let (i, reply) = r.unwrap();
        assert_eq!(reply.body, Bytes::from(format!("Hello, n{i}!\n")));
        n += 1;
    }
    assert_eq!(n, 1000);
}

fn preinit_engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    wasmtime::Engine::new(&config).unwrap()
}

fn preinitialize(wat: &str, memory_bytes: u64, limit: Duration) -> Result<Vec<u8>, String> {
    let wasm = wat::parse_str(wat).unwrap();
    assert!(strata_sandbox_wasm::preinit::wants_preinit(&wasm));
    strata_sandbox_wasm::preinit::preinitialize(&wasm, memory_bytes, limit).map_err(|e| e.to_string())
}

#[test]
fn preinitialisation_snapshots_what_the_initialiser_did() {
    let out = preinitialize(
        r#"(module
            (memory (export "memory") 1)
            (global $g (mut i32) (i32.const 0))
            (func (export "wizer-initialize")
                (global.set $g (i32.const 42))
                (i32.store (i32.const 8) (i32.const 7)))
            (func (export "get") (result i32)
                (i32.add (global.get $g) (i32.load (i32.const 8)))))"#,
        64 << 20,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        !strata_sandbox_wasm::preinit::wants_preinit(&out),
        "the initialiser is not exported any more"
    );
    let engine = preinit_engine();
    let module = wasmtime::Module::new(&engine, &out).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_epoch_deadline(1_000_000);
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let get = instance.get_typed_func::<(), i32>(&mut store, "get").unwrap();
    assert_eq!(
        get.call(&mut store, ()).unwrap(),
        49,
        "the global and the memory as initialised"
    );
}

#[test]
fn an_initialiser_that_calls_an_import_fails_the_deploy_clearly() {
    let err = preinitialize(
        r#"(module
            (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
            (func (export "wizer-initialize") (drop (call $yield))))"#,
        64 << 20,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        err.contains("wizer-initialize failed") && err.contains("may not call imports"),
        "{err}"
    );
}

#[test]
fn an_initialiser_is_held_to_its_deadline_and_the_memory_limit() {
    let t = Instant::now();
    let err = preinitialize(
        r#"(module (func (export "wizer-initialize") (loop (br 0))))"#,
        64 << 20,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(err.contains("wizer-initialize failed"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped at its deadline: {:?}",
        t.elapsed()
    );
    // Growing past the limit fails inside the guest (memory.grow answers -1): trap on it.
    let err = preinitialize(
        r#"(module
            (memory (export "memory") 1)
            (func (export "wizer-initialize")
                (if (i32.eq (memory.grow (i32.const 32)) (i32.const -1)) (then unreachable))))"#,
        1 << 20,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(err.contains("wizer-initialize failed"), "{err}");
}
