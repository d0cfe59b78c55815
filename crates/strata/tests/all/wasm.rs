//! The WebAssembly tier through the daemon: deploy, every kind of request, limits, the
//! artifact cache across deploys and restarts. The guests are in `guests/`, built by
//! `cargo xtask examples` (which `cargo xtask test` runs first).

use std::time::{Duration, Instant};

use crate::harness::*;

fn probe_wasm() -> std::path::PathBuf {
    let p = repo().join("guests/target/wasm32-wasip2/release/probe.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask examples` first",
        p.display()
    );
    p
}

/// A function folder with the probe guest and a manifest (`name`, plus `extra` lines).
fn probe_dir(name: &str, extra: &str) -> tempfile::TempDir {
    let d = function_dir(&[(
        "strata.toml",
        &format!("name = \"{name}\"\nruntime = \"wasm\"\nhandler = \"probe.wasm\"\nmemory = \"64MiB\"\n{extra}"),
    )]);
    std::fs::copy(probe_wasm(), d.path().join("probe.wasm")).unwrap();
    d
}

async fn code_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v = body_json(r).await;
    (status, v["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_the_guest_intact() {
    let d = Daemon::start();
    let out = d.deploy(&example("hello-wasm"));
    assert!(out.contains("build: compiled"), "{out}");
    let c = d.client();
    let r = c.post(d.fn_url("hello-wasm")).body("world").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-call-id"].to_str().unwrap().len() > 8);
    assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
    let v = body_json(
        c.post(format!("{}/json?x=1&y=%20z", d.fn_url("hello-wasm")))
            .header("x-thing", "abc")
            .body(r#"{"a":[1,2]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/json");
    assert_eq!(v["query"], "x=1&y=%20z");
    assert_eq!(v["headers"]["x-thing"], "abc");
    assert_eq!(v["body"]["a"][1], 2);

    d.deploy(probe_dir("probe", "").path());
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = c
            .request(method.parse().unwrap(), format!("{}/echo?k=v&n=1", d.fn_url("probe")))
            .header("x-custom", "value 1")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        let h = |k: &str| r.headers()[k].to_str().unwrap().to_owned();
        assert_eq!(h("x-method"), method);
        assert_eq!(h("x-path"), "/echo");
        assert_eq!(h("x-query"), "k=v&n=1");
        assert_eq!(h("x-echo-x-custom"), "value 1");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..], "{method}");
    }
    let head = c.head(format!("{}/echo", d.fn_url("probe"))).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-method"], "HEAD");
    // A fresh instance per call: the guest's global counter is 1 every time.
    for _ in 0..5 {
        let r = c.get(format!("{}/counter", d.fn_url("probe"))).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "1");
    }
    // Output is captured per call, under its call id.
    let r = c.get(format!("{}/log", d.fn_url("probe"))).send().await.unwrap();
    let call = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    let lines = wait_for_log(&d, "probe", &call, "to stderr").await;
    assert!(
        lines.iter().any(|(s, l)| s == "stdout" && l == "to stdout"),
        "{lines:?}"
    );
}

/// The log lines of `call` (stream, text), once one of them contains `needle`.
async fn wait_for_log(d: &Daemon, function: &str, call: &str, needle: &str) -> Vec<(String, String)> {
    let c = d.client();
    for _ in 0..100 {
        let v = body_json(
            c.get(format!("{}/api/v1/functions/{function}/logs?limit=1000", d.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let lines: Vec<(String, String)> = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["call_id"] == call)
            .map(|l| {
                (
                    l["stream"].as_str().unwrap().to_owned(),
                    l["line"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if lines.iter().any(|(_, l)| l.contains(needle)) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line of {call} contains {needle:?}");
}

/// `r` is the probe function's 502 `crash`, and a system line of its call's log says `reason`.
async fn crashed_with(d: &Daemon, r: reqwest::Response, reason: &str) {
    let call = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    assert_eq!(code_of(r).await, (502, "crash".into()), "{reason}");
    let lines = wait_for_log(d, "probe", &call, reason).await;
    assert!(lines.iter().any(|(s, _)| s == "system"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_engine_answers_429_with_retry_after_and_serves_again_once_a_slot_frees() {
    // One instance slot for every wasm function; one function spins in it for 3 s.
    let d = Daemon::start_env(&[], &[("STRATA_WASM_SLOTS", "1")]);
    d.deploy(probe_dir("spin", "timeout = \"3s\"\n").path());
    d.deploy(probe_dir("quick", "timeout = \"300ms\"\n").path());
    let c = d.client();
    let spin = {
        let (c, url) = (c.clone(), format!("{}/loop", d.fn_url("spin")));
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = c.get(format!("{}/counter", d.fn_url("quick"))).send().await.unwrap();
    let waited = t.elapsed();
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    assert_eq!(code_of(r).await, (429, "over_capacity".into()));
    assert!(waited >= Duration::from_millis(300), "answered after {waited:?}");
    assert_eq!(spin.await.unwrap(), 504);
    // The slot is free again (nothing made ahead holds the only one).
    let r = c.get(format!("{}/counter", d.fn_url("quick"))).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn loops_traps_and_memory_bombs_fail_cleanly() {
    let d = Daemon::start();
    d.deploy(probe_dir("probe", "timeout = \"300ms\"\n").path());
    let c = d.client();
    let url = |p: &str| format!("{}{p}", d.fn_url("probe"));

    let t = Instant::now();
    let r = c.get(url("/loop")).send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(code_of(r).await, (504, "timeout".into()));
    // timeout + 50 ms is the target; the margin here is for a loaded CI machine.
    assert!(
        took < Duration::from_millis(300 + 250),
        "a 300 ms timeout answered after {took:?}"
    );
    assert_eq!(c.get(url("/counter")).send().await.unwrap().text().await.unwrap(), "1");

    crashed_with(&d, c.get(url("/trap")).send().await.unwrap(), "unreachable").await;

    let r = c.get(url("/bomb")).send().await.unwrap();
    assert_eq!(code_of(r).await, (502, "oom".into()));
    // Growth past the limit inside a guest that checks: it gets less, and says so.
    let r = c.get(url("/grow?mb=100")).send().await.unwrap();
    let got: u32 = r.text().await.unwrap().trim_end_matches(" MiB").parse().unwrap();
    assert!(got < 64, "{got} MiB under a 64 MiB limit");
    // Nothing of that hurt the daemon or the function.
    assert_eq!(c.get(url("/counter")).send().await.unwrap().text().await.unwrap(), "1");
    assert_eq!(c.get(format!("{}/healthz", d.url)).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_side_resources_a_guest_holds_are_bounded_by_its_memory_limit() {
    let d = Daemon::start();
    // 64 MiB: at most 256 resources at once, and 64 KiB in one `fields`.
    d.deploy(probe_dir("probe", "").path());
    let c = d.client();
    let url = |p: &str| format!("{}{p}", d.fn_url("probe"));
    let get = |p: &str| c.get(url(p)).send();

    // Under the caps the guest gets what it asks for.
    let r = get("/hoard?n=200&kb=32").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "held 200");
    // A `fields` past 64 KiB (wasmtime-wasi-http traps rather than refusing it), and 100,000
    // resources of 32 KiB (3 GiB of the host's memory): each call is stopped at its cap, with
    // the reason in the function's log.
    for (probe, reason) in [
        ("/hoard?n=1&kb=100", "total size of fields exceeds limit"),
        ("/hoard?n=100000&kb=32", "resource table has no free keys"),
    ] {
        crashed_with(&d, get(probe).await.unwrap(), reason).await;
    }
    // One write to a body carries at most 64 KiB (wasmtime-wasi-http's default is 1 MiB).
    assert_eq!(get("/budget").await.unwrap().text().await.unwrap(), "Ok(65536)");
    // Nothing of that stayed: the next call is fresh and the daemon is fine.
    assert_eq!(get("/counter").await.unwrap().text().await.unwrap(), "1");
    assert_eq!(c.get(format!("{}/healthz", d.url)).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_goes_only_to_allowed_hosts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
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
    let d = Daemon::start();
    d.deploy(probe_dir("closed", "").path());
    d.deploy(
        probe_dir(
            "open",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]\n"),
        )
        .path(),
    );
    let c = d.client();
    let target = format!("/fetch?url=http://127.0.0.1:{port}/ping");
    let r = c.get(format!("{}{target}", d.fn_url("closed"))).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    let r = c.get(format!("{}{target}", d.fn_url("open"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "200 pong");
    // Allowed means that host and port only.
    let other = format!("/fetch?url=http://127.0.0.1:{}/ping", port.wrapping_add(1).max(1));
    let r = c.get(format!("{}{other}", d.fn_url("open"))).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_calls_are_all_answered() {
    let d = Daemon::start();
    // The hello example with a long timeout: unoptimised test builds of wasmtime on a busy
    // 2-core machine are slow, and this test is about every call being answered.
    let f = function_dir(&[(
        "strata.toml",
        "name = \"hello-wasm\"\nruntime = \"wasm\"\nhandler = \"hello.wasm\"\ntimeout = \"120s\"\n",
    )]);
    std::fs::copy(example("hello-wasm").join("hello.wasm"), f.path().join("hello.wasm")).unwrap();
    d.deploy(f.path());
    let c = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (c, url) = (c.clone(), d.fn_url("hello-wasm"));
        set.spawn(async move {
            let r = c.post(url).body(format!("n{i}")).send().await.unwrap();
            (i, r.status().as_u16(), r.text().await.unwrap())
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        let (i, status, text) = r.unwrap();
        assert_eq!((status, text), (200, format!("Hello, n{i}!\n")));
        ok += 1;
    }
    assert_eq!(ok, 1000);
}

/// The cold-start record of the first call of `name` after (re)loading.
async fn first_cold(d: &Daemon, name: &str) -> serde_json::Value {
    let c = d.client();
    let r = c.get(format!("{}/counter", d.fn_url(name))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let call = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    for _ in 0..100 {
        let r = c
            .get(format!("{}/api/v1/invocations/{call}", d.url))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let rec = body_json(r).await;
            assert_eq!(rec["cold"], true, "the first call after loading is cold: {rec}");
            assert!(rec["memory_peak_bytes"].as_u64().unwrap() > 0, "{rec}");
            assert!(rec["cpu_ms"].as_f64().unwrap() > 0.0, "{rec}");
            return rec["cold_start"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no record of call {call}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_artifacts_are_cached_across_deploys_and_restarts() {
    let mut d = Daemon::start();
    let out = d.deploy(probe_dir("first", "").path());
    assert!(out.contains("compiled to machine code"), "{out}");
    let cold = first_cold(&d, "first").await;
    assert_eq!(cold["path"], "wasm");
    assert_eq!(cold["artifact"], "compiled");
    assert!(cold["compile_ms"].as_f64().unwrap() > 0.0, "{cold}");
    assert!(cold["instantiate_ms"].as_f64().unwrap() > 0.0, "{cold}");

    // The same component under another function: no compilation.
    let out = d.deploy(probe_dir("second", "timeout = \"2s\"\n").path());
    assert!(out.contains("found in the cache"), "{out}");
    let cold = first_cold(&d, "second").await;
    assert_eq!(cold["artifact"], "cached");
    assert!(cold.get("compile_ms").is_none(), "{cold}");

    // A restart loads from the cache.
    d.restart();
    let cold = first_cold(&d, "first").await;
    assert_eq!(cold["artifact"], "cached", "{cold}");

    // Damaged and foreign files are rebuilt, never loaded.
    assert!(d.stop());
    let cache = d.data.join("wasm-cache");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "one component, one artifact: {files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&files[0], &bytes).unwrap();
    d.relaunch();
    assert_eq!(artifacts(&d).await, ["cached", "rebuilt"]);
    assert!(d.stop());
    std::fs::write(
        &files[0],
        b"\x7fELF\x02\x01\x01 an ELF file from somewhere else, not ours",
    )
    .unwrap();
    d.relaunch();
    assert_eq!(artifacts(&d).await, ["cached", "rebuilt"]);
}

/// Where the machine code of `first` and `second` came from, sorted: the function loaded
/// first after a restart finds a bad file and rebuilds it, the other then finds it cached.
async fn artifacts(d: &Daemon) -> Vec<String> {
    let mut v = Vec::new();
    for name in ["first", "second"] {
        v.push(first_cold(d, name).await["artifact"].as_str().unwrap().to_owned());
    }
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_wasm_packages_fail_the_deploy_and_keep_the_active_version() {
    let d = Daemon::start();
    d.deploy(probe_dir("probe", "").path());
    let c = d.client();
    let bad = function_dir(&[
        (
            "strata.toml",
            "name = \"probe\"\nruntime = \"wasm\"\nhandler = \"probe.wasm\"\n",
        ),
        ("probe.wasm", "this is not webassembly"),
    ]);
    let out = d.cli(&["deploy", bad.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        text.contains("handler = \"probe.wasm\"") && text.contains("not a WebAssembly file"),
        "{text}"
    );
    let hosts = probe_dir("probe", "allowed_outbound_hosts = [\"ftp://x\"]\n");
    let out = d.cli(&["deploy", hosts.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("allowed_outbound_hosts = \"ftp://x\""), "{text}");
    // The first version still serves.
    let r = c.get(format!("{}/counter", d.fn_url("probe"))).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_command_makes_the_handler_before_packaging_and_a_failed_one_deploys_nothing() {
    let d = Daemon::start();
    let manifest = |build: &str| {
        format!("name = \"built\"\nruntime = \"wasm\"\nhandler = \"probe.wasm\"\nmemory = \"64MiB\"\n[build]\n{build}")
    };
    // The "sources": the probe component under another name in src/; the build command, run
    // in the workdir the manifest names, makes the handler from them.
    let dir = function_dir(&[(
        "strata.toml",
        &manifest("command = \"cp component.bin ../probe.wasm && echo made-it\"\nworkdir = \"src\"\n"),
    )]);
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::copy(probe_wasm(), dir.path().join("src/component.bin")).unwrap();
    let out = d.deploy(dir.path());
    assert!(out.contains("build: cp component.bin ../probe.wasm"), "{out}");
    assert!(out.contains("made-it"), "the command's output is shown: {out}");
    let c = d.client();
    let counter = format!("{}/counter", d.fn_url("built"));
    assert_eq!(c.get(&counter).send().await.unwrap().text().await.unwrap(), "1");

    // A build that fails stops the deploy before anything is packaged or sent.
    std::fs::write(
        dir.path().join("strata.toml"),
        manifest("command = [\"sh\", \"-c\", \"echo broken-build >&2; exit 3\"]\n"),
    )
    .unwrap();
    let out = d.cli(&["deploy", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("nothing deployed") && text.contains("exit status: 3") && text.contains("broken-build"),
        "{text}"
    );
    assert!(!text.contains("packaged"), "{text}");
    let versions = get_json(&d, "/api/v1/functions/built/versions").await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    assert_eq!(c.get(&counter).send().await.unwrap().text().await.unwrap(), "1");

    // `strata build` runs the command alone, without a daemon, and ends as it does.
    let build = |toml: String| {
        std::fs::write(dir.path().join("strata.toml"), toml).unwrap();
        let out = d.cli(&["build", dir.path().to_str().unwrap()]);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, text) = build(manifest("command = \"echo x > made.txt\"\n"));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(std::fs::read_to_string(dir.path().join("made.txt")).unwrap(), "x\n");
    let (code, text) = build(manifest("command = \"exit 3\"\n"));
    assert_eq!(code, Some(3), "{text}");
    // A workdir that is not there, or a manifest that does not parse, is named.
    let (code, text) = build(manifest("command = \"true\"\nworkdir = \"gone\"\n"));
    assert_ne!(code, Some(0));
    assert!(text.contains("build.workdir = \"gone\": no such folder"), "{text}");
    let (code, text) = build(manifest("comand = \"true\"\n"));
    assert_ne!(code, Some(0));
    assert!(text.contains("unknown key `build.comand`"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wasip1_command_modules_are_adapted() {
    let d = Daemon::start();
    let f = function_dir(&[(
        "strata.toml",
        "name = \"upper\"\nruntime = \"wasm\"\nhandler = \"upper.wasm\"\n",
    )]);
    let module = repo().join("guests/target/wasm32-wasip1/release/upper.wasm");
    assert!(
        module.exists(),
        "{} is missing: run `cargo xtask examples` first",
        module.display()
    );
    std::fs::copy(module, f.path().join("upper.wasm")).unwrap();
    d.deploy(f.path());
    let c = d.client();
    let r = c.post(d.fn_url("upper")).body("quiet please").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let call = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "POST QUIET PLEASE");
    let lines = wait_for_log(&d, "upper", &call, "POST 12 bytes").await;
    assert_eq!(lines[0].0, "stderr");
    let r = c.post(d.fn_url("upper")).body("fail").send().await.unwrap();
    assert_eq!(code_of(r).await, (500, "function_error".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_exporting_wizer_initialize_is_initialised_once_at_deploy() {
    let d = Daemon::start();
    let f = function_dir(&[(
        "strata.toml",
        "name = \"primes\"\nruntime = \"wasm\"\nhandler = \"preinit.wasm\"\n",
    )]);
    let module = repo().join("guests/target/wasm32-wasip1/release/preinit.wasm");
    assert!(
        module.exists(),
        "{} is missing: run `cargo xtask examples` first",
        module.display()
    );
    std::fs::copy(module, f.path().join("preinit.wasm")).unwrap();
    let out = d.deploy(f.path());
    assert!(out.contains("wizer-initialize run and snapshotted"), "{out}");
    let c = d.client();
    // A fresh instance per request, each starting from the snapshot: the table is there
    // before the request runs, every time.
    for _ in 0..3 {
        let r = c.post(d.fn_url("primes")).body("10").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"preinitialized": true, "primes": 148933, "nth": 29})
        );
    }
    let recs = records(&d, "primes", 1).await;
    let cold = &recs.last().unwrap()["cold_start"];
    assert!(cold["preinit_ms"].as_f64().unwrap() > 0.0, "{cold}");
}
