//! Every error case returns its stable code; bad functions never hurt the daemon.

use std::time::{Duration, Instant};

use crate::harness::*;

async fn expect_code(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status);
    let v = body_json(r).await;
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_function_oversized_body_and_unknown_route() {
    let d = Daemon::start_with(&["--max-body", "1KiB"]);
    d.deploy(&example("echo"));
    let c = d.client();
    expect_code(c.get(d.fn_url("nope")).send().await.unwrap(), 404, "function_not_found").await;
    expect_code(
        c.post(d.fn_url("echo")).body(vec![b'x'; 2048]).send().await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // Chunked (no content-length) over the limit is caught while reading.
    let stream = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let r = c
        .post(d.fn_url("echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_code(r, 413, "payload_too_large").await;
    // The daemon closes a connection whose body it refused; continue on fresh ones.
    let c = d.client();
    // An unknown route and function; a known route with another method; a malformed query;
    // a function name that does not decode (no function: JSON 404, not axum's plain-text
    // 400). JSON errors with their codes, all of them.
    for (method, path, status, code) in [
        ("GET", "/nothing/here", 404, "route_not_found"),
        ("GET", "/api/v1/functions/nope", 404, "function_not_found"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
        ("GET", "/api/v1/functions/echo/logs?limit=abc", 400, "bad_request"),
        ("GET", "/function/%FF", 404, "function_not_found"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = c.request(method, format!("{}{path}", d.url)).send().await.unwrap();
        expect_code(r, status, code).await;
    }
    // A sub-path that does not decode is the function's to read, as sent.
    let r = c.get(format!("{}/caf%E9", d.fn_url("echo"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await["path"], "/caf%E9");
    // A percent-encoded name is the function's name; the sub-path after it stays whole.
    let r = c
        .get(format!("{}/function/%65cho/items/1", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await["path"], "/items/1");
    // Under the limit still works.
    assert_eq!(
        c.post(d.fn_url("echo"))
            .body(vec![b'x'; 512])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Names that are not functions make no metric series (any caller could grow them).
    let metrics = get_text(&d, "/metrics").await;
    assert!(
        metrics.contains("gateway_function_invocation_total{function_name=\"echo\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("\"nope\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_times_out_with_504_and_the_next_call_works() {
    let d = Daemon::start();
    d.deploy(&fixture("loop"));
    let c = d.client();
    let t = Instant::now();
    let v = expect_code(
        c.get(format!("{}?spin=1", d.fn_url("loop"))).send().await.unwrap(),
        504,
        "timeout",
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(v["call_id"].as_str().is_some());
    let r = c.get(d.fn_url("loop")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_gets_502_oom_crash_gets_502_crash_and_raise_gets_500() {
    let d = Daemon::start();
    d.deploy(&fixture("hog"));
    d.deploy(&fixture("crash"));
    let c = d.client();
    let v = expect_code(
        c.get(format!("{}?eat=1", d.fn_url("hog"))).send().await.unwrap(),
        502,
        "oom",
    )
    .await;
    assert!(v["message"].as_str().unwrap().contains(v["call_id"].as_str().unwrap()));
    assert_eq!(
        c.get(d.fn_url("hog")).send().await.unwrap().text().await.unwrap(),
        "fine"
    );
    expect_code(
        c.get(format!("{}?die=1", d.fn_url("crash"))).send().await.unwrap(),
        502,
        "crash",
    )
    .await;
    expect_code(
        c.get(format!("{}?raise=1", d.fn_url("crash"))).send().await.unwrap(),
        500,
        "function_error",
    )
    .await;
    assert_eq!(
        c.get(d.fn_url("crash")).send().await.unwrap().text().await.unwrap(),
        "alive"
    );
    // The records say why.
    let recs = records(&d, "hog", 2).await;
    assert!(recs.iter().any(|r| r["error"] == "oom" && r["status"] == 502));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_capacity_is_429_with_retry_after() {
    let d = Daemon::start_with(&["--queue-depth", "1"]);
    d.deploy(&fixture("slow"));
    let c = d.client();
    // Warm the single instance first, so no call waits for a start.
    assert_eq!(
        c.get(format!("{}?s=0", d.fn_url("slow")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // max_instances 1, concurrency 1, queue depth 1: one call runs, one waits, one is refused.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            let url = format!("{}?s=1.5", d.fn_url("slow"));
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in calls {
        let r = h.await.unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        statuses.push(r.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_in_one_function_leaves_another_unharmed() {
    let d = Daemon::start();
    d.deploy(&fixture("bomb"));
    d.deploy(&example("hello-python"));
    let c = d.client();
    let lat = |c: reqwest::Client, url: String| async move {
        let mut v = Vec::new();
        for _ in 0..40 {
            let t = Instant::now();
            let r = c.post(&url).body("x").send().await.unwrap();
            assert_eq!(r.status(), 200);
            v.push(t.elapsed());
        }
        v.sort();
        v[v.len() / 2]
    };
    let before = lat(c.clone(), d.fn_url("hello-python")).await;
    let bomb = tokio::spawn({
        let c = c.clone();
        let url = d.fn_url("bomb");
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = lat(c.clone(), d.fn_url("hello-python")).await;
    assert_eq!(bomb.await.unwrap(), 504, "the bomb is contained and timed out");
    // Generous bound: the point is "unharmed", not a benchmark.
    assert!(
        during < before * 10 + Duration::from_millis(20),
        "p50 before {before:?}, during the bomb {during:?}"
    );
    assert_eq!(
        c.post(d.fn_url("hello-python"))
            .body("after")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_manifests_are_refused_with_the_field_named() {
    let d = Daemon::start();
    let cases = [
        (
            "name = \"ok\"\nruntime = \"python\"\nhandler = \"main:handle\"\nmemroy = \"1GiB\"\n",
            "unknown key `memroy`",
        ),
        (
            "name = \"Bad\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
            "name = \"Bad\"",
        ),
        (
            "name = \"ok\"\nruntime = \"python\"\nhandler = \"main:handle\"\nmemory = \"12XB\"\n",
            "memory = \"12XB\"",
        ),
        (
            "name = \"ok\"\nruntime = \"python\"\nhandler = \"main:handle\"\nmin_instances = 3\nmax_instances = 1\n",
            "max_instances = 1",
        ),
        (
            "name = \"ok\"\nruntime = \"python\"\n",
            "missing required key `handler`",
        ),
        (
            "name = \"ok\"\nruntime = \"python\"\nhandler = \"nomodule:handle\"\n",
            "module nomodule is not in the package",
        ),
    ];
    for (manifest, want) in cases {
        let dir = function_dir(&[("strata.toml", manifest), ("main.py", "def handle(r): return 'x'\n")]);
        let out = d.cli(&["deploy", dir.path().to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "want {want:?} in {err}");
        assert!(err.contains("invalid_manifest"), "{err}");
    }
    let list = body_json(
        d.client()
            .get(format!("{}/api/v1/functions", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list, serde_json::json!([]), "nothing was registered");
}
