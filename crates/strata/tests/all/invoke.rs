//! Invocation through the gateway: methods, headers, query, bodies, concurrency.

use base64::Engine as _;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_method_with_headers_query_and_binary_body_intact() {
    let d = Daemon::start();
    d.deploy(&example("echo"));
    let c = d.client();
    let body: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = c
            .request(
                method.parse().unwrap(),
                format!("{}/sub/path?a=1&b=two&b=three", d.fn_url("echo")),
            )
            .header("x-custom", "value 1")
            .header("x-call-id", format!("call-{method}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(r.headers()["x-call-id"], format!("call-{method}").as_str());
        assert!(
            r.headers()["x-duration-seconds"]
                .to_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                > 0.0
        );
        let v = body_json(r).await;
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/sub/path");
        assert_eq!(v["query_string"], "a=1&b=two&b=three");
        assert_eq!(v["query"]["a"], "1");
        assert_eq!(v["headers"]["x-custom"], "value 1");
        let got = base64::engine::general_purpose::STANDARD
            .decode(v["body_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(got, body, "{method}: binary body intact");
    }
    let r = c.head(d.fn_url("echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // No sub-path: "/".
    let v = body_json(c.get(d.fn_url("echo")).send().await.unwrap()).await;
    assert_eq!(v["path"], "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_in_python_node_and_shell() {
    let d = Daemon::start();
    for f in ["hello-python", "hello-node", "hello-shell"] {
        d.deploy(&example(f));
    }
    let c = d.client();
    let py = c.post(d.fn_url("hello-python")).body("world").send().await.unwrap();
    assert_eq!(py.text().await.unwrap(), "Hello, world!\n");
    let node = c.post(d.fn_url("hello-node")).body("node").send().await.unwrap();
    assert_eq!(node.text().await.unwrap(), "Hello, node!\n");
    let sh = c
        .post(format!("{}/x", d.fn_url("hello-shell")))
        .body("shell")
        .send()
        .await
        .unwrap();
    assert_eq!(sh.status(), 200);
    assert_eq!(sh.text().await.unwrap(), "Hello from sh, shell! (POST /x)\n");
    let out = d.cli(&["invoke", "hello-python", "--data", "cli"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, cli!\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_calls_are_all_answered_correctly() {
    let d = Daemon::start();
    d.deploy(&example("echo"));
    let c = d.client();
    let calls = (0..100).map(|i| {
        let c = c.clone();
        let url = d.fn_url("echo");
        async move {
            let r = c.post(url).body(format!("payload-{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v = body_json(r).await;
            let got = base64::engine::general_purpose::STANDARD
                .decode(v["body_base64"].as_str().unwrap())
                .unwrap();
            assert_eq!(got, format!("payload-{i}").into_bytes());
        }
    });
    futures::future::join_all(calls).await;
    let describe = body_json(c.get(format!("{}/api/v1/functions/echo", d.url)).send().await.unwrap()).await;
    let n = describe["instances"].as_array().unwrap().len();
    assert!((1..=10).contains(&n), "scaled out within max_instances: {n}");
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_instances_are_reused_and_top_level_code_runs_once() {
    let d = Daemon::start();
    d.deploy(&fixture("counter"));
    let c = d.client();
    let mut last = 0;
    for _ in 0..5 {
        let v = body_json(c.get(d.fn_url("counter")).send().await.unwrap()).await;
        let calls = v["calls"].as_i64().unwrap();
        assert_eq!(calls, last + 1, "same warm instance");
        last = calls;
    }
    let recs = records(&d, "counter", 5).await;
    assert_eq!(recs.len(), 5);
    assert_eq!(
        recs.iter().filter(|r| r["cold"] == true).count(),
        1,
        "exactly the first call was cold"
    );
    let cold = recs.iter().find(|r| r["cold"] == true).unwrap();
    let cs = &cold["cold_start"];
    let sandbox_ms = cs["sandbox_ms"].as_f64().unwrap();
    assert!(sandbox_ms > 0.0);
    // The breakdown of the sandbox's creation: its steps, measured where they ran, are parts
    // of it (the rest is hand-offs).
    let steps = &cs["sandbox_steps"];
    let parts = [
        "cgroup_ms",
        "netns_ms",
        "clone_ms",
        "mounts_ms",
        "privileges_ms",
        "exec_ms",
    ]
    .map(|k| steps[k].as_f64().unwrap_or_else(|| panic!("sandbox_steps.{k} in {cs}")));
    assert!(parts[3] > 0.0 && parts[4] > 0.0, "mounts and privileges measured: {cs}");
    assert!(
        parts.iter().sum::<f64>() <= sandbox_ms * 1.05 + 0.05,
        "parts of the whole: {cs}"
    );
    assert!(recs.iter().all(|r| r["memory_peak_bytes"].as_u64().unwrap() > 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_logged_per_call_and_queryable() {
    let d = Daemon::start();
    d.deploy(&fixture("printer"));
    let c = d.client();
    let r = c
        .post(d.fn_url("printer"))
        .header("x-call-id", "log-call-1")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = serde_json::Value::Null;
    for _ in 0..50 {
        lines = body_json(
            c.get(format!("{}/api/v1/functions/printer/logs", d.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        // Both lines, however many others (the platform's own) come first: stdout and
        // stderr are read by separate tasks, so either may be stored first.
        let got = |text: &str| lines["lines"].as_array().unwrap().iter().any(|l| l["line"] == text);
        if got("printing abc") && got("to stderr abc") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines = lines["lines"].as_array().unwrap();
    let out = lines.iter().find(|l| l["line"] == "printing abc").expect("stdout line");
    assert_eq!(out["call_id"], "log-call-1");
    assert_eq!(out["stream"], "stdout");
    let err = lines
        .iter()
        .find(|l| l["line"] == "to stderr abc")
        .expect("stderr line");
    assert_eq!(err["stream"], "stderr");
    let cli = d.cli(&["logs", "printer"]);
    assert!(String::from_utf8_lossy(&cli.stdout).contains("printing abc"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_with_prior_knowledge_reaches_a_function() {
    use http_body_util::{BodyExt, Full};
    let d = Daemon::start();
    d.deploy(&example("hello-wasm"));
    let addr = d.url.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("the gateway speaks HTTP/2 with prior knowledge");
    tokio::spawn(conn);
    // Several streams on the one connection, at once.
    let calls = (0..8).map(|i| {
        let req = hyper::Request::post(format!("http://{addr}/function/hello-wasm"))
            .body(Full::new(bytes::Bytes::from(format!("h2-{i}"))))
            .unwrap();
        send.send_request(req)
    });
    for (i, r) in futures::future::join_all(calls).await.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), hyper::Version::HTTP_2);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], format!("Hello, h2-{i}!\n").as_bytes());
    }
}
