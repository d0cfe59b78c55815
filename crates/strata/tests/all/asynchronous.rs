//! Asynchronous invocations, the durable queue, retries, dead letters, callbacks, triggers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;

use crate::harness::*;

/// What the recorder receiver saw: one JSON object per call.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Value>>>);

impl Seen {
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
    fn ids(&self, key: &str) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|v| v[key].as_str().map(str::to_owned))
            .collect()
    }
}

/// A local HTTP receiver: `/record` stores the JSON body; `/callback` stores the callback
/// (failing the first `fail_first` deliveries with 500).
async fn receiver(fail_first: usize) -> (String, Seen, Seen) {
    let seen = Seen::default();
    let callbacks = Seen::default();
    let failures = Arc::new(Mutex::new(fail_first));
    let (s, c) = (seen.clone(), callbacks.clone());
    let app = axum::Router::new()
        .route(
            "/record",
            axum::routing::post(move |body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
                        v["arrived_ms"] = serde_json::json!(now_ms());
                        s.0.lock().unwrap().push(v);
                    }
                    "ok"
                }
            }),
        )
        .route(
            "/callback",
            axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
                let (c, failures) = (c.clone(), failures.clone());
                async move {
                    let mut f = failures.lock().unwrap();
                    if *f > 0 {
                        *f -= 1;
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "not yet");
                    }
                    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    c.0.lock().unwrap().push(serde_json::json!({
                        "call_id": h("x-call-id"), "status": h("x-function-status"), "state": h("x-call-state"),
                        "attempts": h("x-attempts"), "body": String::from_utf8_lossy(&body),
                    }));
                    (axum::http::StatusCode::OK, "thanks")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen, callbacks)
}

/// A Python function (host network) that reports every call to the receiver, then answers
/// as `behaviour` says.
fn recorder(name: &str, url: &str, extra_manifest: &str, behaviour: &str) -> tempfile::TempDir {
    recorder_sized(name, url, 4, extra_manifest, behaviour)
}

fn recorder_sized(name: &str, url: &str, instances: u32, extra_manifest: &str, behaviour: &str) -> tempfile::TempDir {
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"python\"\nhandler = \"main:handle\"\nnetwork = \"host\"\nconcurrency = {instances}\nmax_instances = {instances}\nretry_backoff = \"50ms\"\n{extra_manifest}\n[env]\nRECORDER = \"{url}/record\"\n"
    );
    let code = format!(
        r#"import json, os, urllib.request
URL = os.environ["RECORDER"]

def report(req):
    ce = {{k: v for k, v in req.headers.items() if k.startswith("ce-")}}
    doc = {{"call_id": req.headers.get("x-call-id"), "attempt": req.headers.get("x-strata-attempt"), "ce": ce,
           "body": req.text(), "function": os.environ["STRATA_FUNCTION"]}}
    urllib.request.urlopen(urllib.request.Request(URL, data=json.dumps(doc).encode(), method="POST")).read()

def handle(req):
    report(req)
    attempt = int(req.headers.get("x-strata-attempt", "1"))
{behaviour}
"#
    );
    function_dir(&[("strata.toml", &manifest), ("main.py", &code)])
}

const OK: &str = "    return 'ok'";

async fn enqueue(c: &reqwest::Client, url: &str, body: &str) -> Option<String> {
    let r = c.post(url).body(body.to_owned()).send().await.ok()?;
    if r.status() != 202 {
        return None;
    }
    Some(r.headers()["x-call-id"].to_str().unwrap().to_owned())
}

async fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call_state(d: &Daemon, id: &str) -> Value {
    body_json(
        d.client()
            .get(format!("{}/api/v1/calls/{id}", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Poll a call until it reaches `state`; returns its last status document.
async fn wait_state(d: &Daemon, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = call_state(d, id).await;
        if v["state"] == state {
            return v;
        }
        assert!(Instant::now() < deadline, "call {id} never reached {state}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill9(d: &mut Daemon) {
    d.kill9();
}

/// Enqueue `n` calls with up to 64 in flight; returns the accepted ids. Stops early (returns
/// what was accepted) when the daemon goes away.
async fn enqueue_many(c: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 64).min(n))
            .map(|k| enqueue(c, url, Box::leak(format!("m{k}").into_boxed_str())))
            .collect();
        let got = futures::future::join_all(batch).await;
        let before = accepted.len();
        accepted.extend(got.into_iter().flatten());
        if accepted.len() - before < (i + 64).min(n) - i {
            break;
        }
        i += 64;
    }
    accepted
}

fn duplicates(ids: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_processing_loses_no_accepted_call() {
    let (url, seen, _) = receiver(0).await;
    let mut d = Daemon::start();
    // One instance, one call at a time, 5 ms a call: about 200 calls a second, so the kill
    // lands with most of the queue still to do.
    let f = recorder_sized(
        "rec",
        &url,
        1,
        "",
        "    import time\n    time.sleep(0.005)\n    return 'ok'",
    );
    d.deploy(f.path());
    let c = d.client();
    let accepted = enqueue_many(&c, &format!("{}/async-function/rec", d.url), 2000).await;
    assert_eq!(accepted.len(), 2000, "every call accepted");
    wait_until("some calls to run", 60, || seen.all().len() >= 100).await;
    kill9(&mut d);
    let at_kill = seen.all().len();
    assert!(
        at_kill < 2000,
        "the kill came while calls were being processed ({at_kill} done)"
    );
    d.relaunch();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    wait_until("every accepted call to complete", 240, || {
        let got: HashSet<String> = seen.ids("call_id").into_iter().collect();
        want.is_subset(&got)
    })
    .await;
    let ids = seen.ids("call_id");
    let dups = duplicates(&ids);
    println!("kill -9 while processing: 2000 accepted, {at_kill} done before the kill, 0 lost, {dups} duplicates");
    assert!(dups <= 64, "duplicates are bounded by work in flight: {dups}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_enqueue_loses_no_acknowledged_call() {
    let (url, seen, _) = receiver(0).await;
    let mut d = Daemon::start();
    d.deploy(recorder("rec2", &url, "", OK).path());
    let c = d.client();
    let target = format!("{}/async-function/rec2", d.url);
    let pid = d.pid_raw();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // SAFETY: kill(2) of the daemon's pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let accepted = enqueue_many(&c, &target, 100_000).await;
    killer.await.unwrap();
    d.reap();
    assert!(
        !accepted.is_empty() && accepted.len() < 100_000,
        "the kill landed during the enqueue ({})",
        accepted.len()
    );
    d.relaunch();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    wait_until("every acknowledged call to complete", 240, || {
        let got: HashSet<String> = seen.ids("call_id").into_iter().collect();
        want.is_subset(&got)
    })
    .await;
    println!(
        "kill -9 during enqueue: {} acknowledged, all completed, {} duplicates",
        accepted.len(),
        duplicates(&seen.ids("call_id"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_dead_letters_replay_and_callbacks() {
    let (url, seen, callbacks) = receiver(1).await;
    let d = Daemon::start();
    d.deploy(
        recorder(
            "flaky",
            &url,
            "",
            "    if attempt < 3:\n        return {'status': 500, 'body': 'not yet'}\n    return 'finally'",
        )
        .path(),
    );
    d.deploy(recorder("broken", &url, "", "    raise RuntimeError('always broken')").path());
    let c = d.client();
    let r = c
        .post(format!("{}/async-function/flaky", d.url))
        .header("x-callback-url", format!("{url}/callback"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let flaky = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    let broken = enqueue(&c, &format!("{}/async-function/broken", d.url), "y")
        .await
        .unwrap();
    let state = wait_state(&d, &flaky, "succeeded").await;
    assert_eq!(state["attempts"], 3);
    assert_eq!(state["body"], "finally");
    assert_eq!(state["errors"].as_array().unwrap().len(), 2);
    let attempts: Vec<String> = seen
        .all()
        .iter()
        .filter(|v| v["call_id"] == flaky.as_str())
        .map(|v| v["attempt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(attempts, vec!["1", "2", "3"]);
    // The callback receiver refused the first delivery; the retry got through.
    wait_until("the callback", 30, || !callbacks.all().is_empty()).await;
    let cb = &callbacks.all()[0];
    assert_eq!(cb["call_id"], flaky.as_str());
    assert_eq!(cb["status"], "200");
    assert_eq!(cb["body"], "finally");

    wait_state(&d, &broken, "dead").await;
    let dlq = body_json(
        c.get(format!("{}/api/v1/functions/broken/dlq", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let dlq = dlq.as_array().unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["attempts"], 3);
    assert_eq!(dlq[0]["errors"].as_array().unwrap().len(), 3);
    assert!(
        dlq[0]["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("function_error"),
        "{}",
        dlq[0]
    );
    let metrics = get_text(&d, "/metrics").await;
    assert!(
        metrics.contains("strata_async_dead_letters{function_name=\"broken\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_async_retries{function_name=\"flaky\"} 2"),
        "{metrics}"
    );

    // Fix the function, replay the dead letters: the same call id completes.
    d.deploy(recorder("broken", &url, "", "    return 'fixed'").path());
    let out = d.cli(&["dlq", "broken", "--replay"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_state(&d, &broken, "succeeded").await;
    let dlq = body_json(
        c.get(format!("{}/api/v1/functions/broken/dlq", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(dlq, serde_json::json!([]));
    let out = d.cli(&["call", &broken]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fixed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_on_time_once_per_tick() {
    let (url, seen, _) = receiver(0).await;
    let d = Daemon::start();
    d.deploy(
        recorder(
            "ticker",
            &url,
            "[[trigger]]\ntype = \"cron\"\nschedule = \"* * * * * *\"\n",
            OK,
        )
        .path(),
    );
    let started = now_ms();
    wait_until("four ticks", 20, || seen.all().len() >= 4).await;
    let ticks = seen.all();
    let elapsed = now_ms() - started;
    assert!(
        ticks.len() as u64 <= elapsed / 1000 + 2,
        "{} ticks in {elapsed} ms of an every-second schedule",
        ticks.len()
    );
    let mut times: Vec<u64> = ticks
        .iter()
        .map(|t| {
            t["ce"]["ce-id"]
                .as_str()
                .and_then(|id| id.rsplit('-').next()?.parse().ok())
                .unwrap()
        })
        .collect();
    times.sort();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 1000),
        "one tick per second: {times:?}"
    );
    for t in &ticks {
        let tick: u64 = t["ce"]["ce-id"]
            .as_str()
            .and_then(|id| id.rsplit('-').next()?.parse().ok())
            .unwrap();
        let late = t["arrived_ms"].as_u64().unwrap().saturating_sub(tick);
        assert!(late < 1000, "a tick reached the handler {late} ms after its time");
    }
    let ids: Vec<String> = ticks
        .iter()
        .map(|t| t["ce"]["ce-id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(duplicates(&ids), 0, "once per tick: {ids:?}");
    for t in &ticks {
        assert_eq!(t["ce"]["ce-type"], "dev.strata.cron.tick");
        assert_eq!(t["ce"]["ce-specversion"], "1.0");
    }
    let describe = body_json(
        d.client()
            .get(format!("{}/api/v1/functions/ticker", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(describe["triggers"][0]["type"], "cron");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_delivers_every_message_to_every_subscriber() {
    let (url, seen, _) = receiver(0).await;
    let d = Daemon::start();
    let sub = "[[trigger]]\ntype = \"topic\"\ntopic = \"orders\"\n";
    d.deploy(recorder("sub-a", &url, sub, OK).path());
    d.deploy(recorder("sub-b", &url, sub, OK).path());
    let c = d.client();
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = c
            .post(format!("{}/topics/orders", d.url))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v = body_json(r).await;
        assert_eq!(v["subscribers"], serde_json::json!(["sub-a", "sub-b"]));
        ids.push(v["message_id"].as_str().unwrap().to_owned());
    }
    wait_until("40 deliveries", 60, || seen.all().len() >= 40).await;
    for f in ["sub-a", "sub-b"] {
        let got: HashSet<String> = seen
            .all()
            .iter()
            .filter(|v| v["function"] == f)
            .map(|v| v["ce"]["ce-id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            got,
            ids.iter().cloned().collect::<HashSet<_>>(),
            "{f} got every message"
        );
    }
    assert!(
        seen.all()
            .iter()
            .all(|v| v["ce"]["ce-source"] == "/strata/topics/orders")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_route_by_filter_in_both_modes_and_malformed_ones_get_400() {
    let (url, seen, _) = receiver(0).await;
    let d = Daemon::start();
    let filter =
        "[[trigger]]\ntype = \"event\"\nfilter = { type = \"com.example.order.created\", source = \"/shop\" }\n";
    d.deploy(recorder("on-order", &url, filter, OK).path());
    d.deploy(
        recorder(
            "bystander",
            &url,
            "[[trigger]]\ntype = \"event\"\nfilter = { type = \"other\" }\n",
            OK,
        )
        .path(),
    );
    let c = d.client();
    let r = c
        .post(format!("{}/events", d.url))
        .header("ce-specversion", "1.0")
        .header("ce-id", "b-1")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .header("content-type", "text/plain")
        .body("binary data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(body_json(r).await["routed_to"], serde_json::json!(["on-order"]));
    let structured = serde_json::json!({"specversion": "1.0", "id": "s-1", "source": "/shop",
        "type": "com.example.order.created", "datacontenttype": "application/json", "data": {"order": 7}});
    let r = c
        .post(format!("{}/events", d.url))
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(format!("{}/events", d.url))
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-type", "com.example.order.created")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = body_json(r).await;
    assert_eq!(v["code"], "bad_request");
    assert!(v["message"].as_str().unwrap().contains("source"), "{v}");
    wait_until("two deliveries", 30, || seen.all().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = seen.all();
    assert_eq!(got.len(), 2, "only the matching function, once per event: {got:?}");
    let b = got.iter().find(|v| v["ce"]["ce-id"] == "b-1").unwrap();
    assert_eq!(b["body"], "binary data");
    let s = got.iter().find(|v| v["ce"]["ce-id"] == "s-1").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(s["body"].as_str().unwrap()).unwrap(),
        serde_json::json!({"order": 7})
    );
    assert!(got.iter().all(|v| v["function"] == "on-order"));
}

#[tokio::test(flavor = "multi_thread")]
async fn async_errors_and_backpressure() {
    let (url, _, _) = receiver(0).await;
    let d = Daemon::start_with(&["--async-queue-depth", "2", "--async-workers", "1"]);
    d.deploy(
        recorder(
            "slowrec",
            &url,
            "",
            "    import time\n    time.sleep(1)\n    return 'ok'",
        )
        .path(),
    );
    let c = d.client();
    let r = c.post(format!("{}/async-function/nope", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let target = format!("{}/async-function/slowrec", d.url);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.post(&target).body("x").send().await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..2], &[202, 202]);
    assert!(
        statuses[2..].contains(&429),
        "over the bound the publisher gets 429: {statuses:?}"
    );
    let r = c.post(format!("{}/topics/bad%20name", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_tick_missed_while_down_fires_once_at_start() {
    let (url, seen, _) = receiver(0).await;
    let mut d = Daemon::start();
    // Every 5 s: coarse enough that a (slow) restart cannot blur a missed tick with a new one.
    let schedule = "[[trigger]]\ntype = \"cron\"\nschedule = \"*/5 * * * * *\"\n";
    d.deploy(recorder("catchup", &url, schedule, OK).path());
    wait_until("a first tick", 15, || !seen.all().is_empty()).await;
    let out = d.cli(&["describe", "catchup"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cron */5 * * * * *"),
        "describe lists the trigger"
    );
    assert!(d.stop());
    let down_from = now_ms();
    let mut first_missed = (down_from / 5000 + 1) * 5000;
    if first_missed - down_from < 500 {
        first_missed += 5000;
    }
    let last_missed = first_missed + 5000;
    // Stay down across two ticks, come back 1.5 s after the second.
    tokio::time::sleep(Duration::from_millis(last_missed + 1500 - now_ms())).await;
    d.relaunch();
    let tick = |v: &Value| {
        v["ce"]["ce-id"]
            .as_str()
            .and_then(|id| id.rsplit('-').next()?.parse::<u64>().ok())
            .unwrap()
    };
    wait_until("the catch-up tick", 15, || {
        seen.all().iter().any(|v| tick(v) == last_missed)
    })
    .await;
    let fired: Vec<u64> = seen
        .all()
        .iter()
        .map(tick)
        .filter(|t| *t > down_from && *t <= last_missed)
        .collect();
    assert_eq!(
        fired,
        vec![last_missed],
        "one catch-up tick (the latest) for the two missed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_async_body_reaches_the_function_whole() {
    let d = Daemon::start();
    d.deploy(&example("echo"));
    let c = d.client();
    // Over the 64 KiB kept in memory: the worker reads it back from the store, which it once
    // did before the enqueue had committed, and ran the call with an empty body.
    for len in [100 << 10, 1 << 20] {
        let id = enqueue(&c, &format!("{}/async-function/echo", d.url), &"x".repeat(len))
            .await
            .expect("accepted");
        let v = wait_state(&d, &id, "succeeded").await;
        let echoed: Value = serde_json::from_str(v["body"].as_str().expect("a text body")).unwrap();
        assert_eq!(echoed["body_length"], len, "{len}");
    }
}
