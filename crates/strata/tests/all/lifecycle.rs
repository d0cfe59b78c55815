//! Deploy, redeploy under load, rollback, rm, restart, scale to zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::*;

fn version_dir(v: &str) -> tempfile::TempDir {
    let manifest = std::fs::read_to_string(fixture("version").join("strata.toml")).unwrap();
    function_dir(&[
        ("strata.toml", &manifest),
        (
            "main.py",
            &format!("VERSION = {v:?}\n\ndef handle(req):\n    return VERSION\n"),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn redeploy_under_load_fails_no_call_then_rollback_and_rm() {
    let d = Daemon::start();
    let v1 = version_dir("v1");
    let v2 = version_dir("v2");
    d.deploy(v1.path());
    let c = d.client();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (c, url, stop, failures, seen_v2, total) = (
                c.clone(),
                d.fn_url("version"),
                stop.clone(),
                failures.clone(),
                seen_v2.clone(),
                total.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get(&url).send().await.unwrap();
                    total.fetch_add(1, Ordering::Relaxed);
                    let ok = r.status() == 200;
                    let text = r.text().await.unwrap();
                    if !ok || !(text == "v1" || text == "v2") {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    if text == "v2" {
                        seen_v2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.deploy(v2.path());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {} calls",
        total.load(Ordering::Relaxed)
    );
    assert!(seen_v2.load(Ordering::Relaxed) > 0);
    assert_eq!(
        c.get(d.fn_url("version")).send().await.unwrap().text().await.unwrap(),
        "v2"
    );

    let out = d.cli(&["rollback", "version"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        c.get(d.fn_url("version")).send().await.unwrap().text().await.unwrap(),
        "v1"
    );
    let versions = body_json(
        c.get(format!("{}/api/v1/functions/version/versions", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    let v2_id = versions[1]["version"].as_str().unwrap().to_owned();
    let out = d.cli(&["rollback", "version", "--to", &v2_id]);
    assert!(out.status.success());
    assert_eq!(
        c.get(d.fn_url("version")).send().await.unwrap().text().await.unwrap(),
        "v2"
    );

    // Deploying identical content again is the same version.
    let again = d.deploy(v2.path());
    assert!(again.contains(&v2_id), "{again}");

    let out = d.cli(&["rm", "version"]);
    assert!(out.status.success());
    let r = c.get(d.fn_url("version")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_functions_and_logs() {
    let mut d = Daemon::start();
    d.deploy(&fixture("printer"));
    let c = d.client();
    assert_eq!(
        c.post(d.fn_url("printer"))
            .body("before-restart")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    d.restart();
    let c = d.client();
    let list = body_json(c.get(format!("{}/api/v1/functions", d.url)).send().await.unwrap()).await;
    assert_eq!(list[0]["name"], "printer");
    assert_eq!(
        c.post(d.fn_url("printer")).body("after").send().await.unwrap().status(),
        200
    );
    let logs = body_json(
        c.get(format!("{}/api/v1/functions/printer/logs?since=0", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"printing before-restart"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_the_calls_in_flight_then_refuses_new_connections() {
    let mut d = Daemon::start();
    d.deploy(&fixture("slow"));
    let c = d.client();
    // Warm, so the call below is in the handler when the signal comes.
    let warm = c.get(format!("{}?s=0", d.fn_url("slow"))).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let url = format!("{}?s=1.5", d.fn_url("slow"));
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = d.pid_raw();
    // SAFETY: kill(2) of the daemon's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let r = in_flight.await.unwrap().expect("the call in flight is answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slept");
    // Once it has stopped serving, a new connection finds nobody listening.
    let fresh = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match fresh.get(format!("{}/healthz", d.url)).send().await {
            Err(e) if e.is_connect() => break,
            _ if std::time::Instant::now() > deadline => panic!("still accepting connections"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(d.stop(), "the daemon exits cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_scale_to_zero_and_min_instances_stay() {
    let d = Daemon::start();
    let quick = function_dir(&[
        (
            "strata.toml",
            "name = \"quick\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"1s\"\n",
        ),
        ("main.py", "def handle(r):\n    return 'q'\n"),
    ]);
    let kept = function_dir(&[
        (
            "strata.toml",
            "name = \"kept\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"1s\"\nmin_instances = 1\n",
        ),
        ("main.py", "def handle(r):\n    return 'k'\n"),
    ]);
    d.deploy(quick.path());
    d.deploy(kept.path());
    let c = d.client();
    assert_eq!(c.get(d.fn_url("quick")).send().await.unwrap().status(), 200);
    let instances = |name: &'static str| {
        let c = c.clone();
        let url = format!("{}/api/v1/functions/{name}", d.url);
        async move {
            body_json(c.get(url).send().await.unwrap()).await["instances"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(instances("quick").await, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(instances("quick").await, 0, "scaled to zero after keep-alive");
    assert_eq!(instances("kept").await, 1, "min_instances kept warm");
    let recs = records(&d, "kept", 0).await;
    assert!(recs.is_empty(), "the prewarmed instance served no call yet");
    let r = c.get(d.fn_url("kept")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The prewarmed instance served it: not a cold start.
    let recs = records(&d, "kept", 1).await;
    assert_eq!(recs[0]["cold"], false);
    let metrics = get_text(&d, "/metrics").await;
    assert!(
        metrics.contains("gateway_function_invocation_total{function_name=\"kept\",code=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("faas_coldstarts_total{function_name=\"quick\"} 1"));
    assert!(metrics.contains("faas_instances{function_name=\"kept\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_zero_makes_every_call_cold() {
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"cold\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"0s\"\n",
        ),
        ("main.py", "import os\ndef handle(r):\n    return str(os.getpid())\n"),
    ]);
    d.deploy(f.path());
    let c = d.client();
    for _ in 0..3 {
        assert_eq!(c.get(d.fn_url("cold")).send().await.unwrap().status(), 200);
    }
    let recs = records(&d, "cold", 3).await;
    assert!(recs.iter().all(|r| r["cold"] == true), "{recs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_wide_keep_alive_policy_decides_instead_of_the_manifest() {
    // The manifest would keep the instance 10 minutes; the daemon's fixed policy says 1 s.
    let d = Daemon::start_with(&["--keep-alive-policy", "fixed", "--keep-alive", "1s"]);
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"policed\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"10m\"\n",
        ),
        ("main.py", "def handle(r):\n    return 'p'\n"),
    ]);
    d.deploy(f.path());
    let c = d.client();
    let instances = || {
        let c = c.clone();
        let url = format!("{}/api/v1/functions/policed", d.url);
        async move {
            body_json(c.get(url).send().await.unwrap()).await["instances"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(c.get(d.fn_url("policed")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(d.fn_url("policed")).send().await.unwrap().status(), 200);
    assert_eq!(instances().await, 1);
    let recs = records(&d, "policed", 2).await;
    let cold: Vec<bool> = recs.iter().map(|r| r["cold"].as_bool().unwrap()).collect();
    assert_eq!(cold, [false, true], "newest first: the second call was warm");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(instances().await, 0, "stopped by the policy after 1 s idle");
}

#[test]
fn bad_keep_alive_flags_are_named() {
    for (args, expect) in [
        (
            &["--keep-alive-policy", "lru"][..],
            "--keep-alive-policy: unknown keep-alive policy \"lru\"",
        ),
        (
            &["--keep-alive-policy", "fixed", "--keep-alive", "soon"][..],
            "--keep-alive \"soon\" is not a duration",
        ),
        (
            &["--keep-alive-policy", "greedy-dual", "--idle-memory-budget", "lots"][..],
            "--idle-memory-budget \"lots\" is not a size",
        ),
        (
            &["--keep-alive-policy", "hazard", "--cold-start-price", "0"][..],
            "--cold-start-price 0: give the MB·minutes one cold start is worth",
        ),
        (
            &["--keep-alive-policy", "hazard", "--cold-start-objective", "apps"][..],
            "--cold-start-objective \"apps\": expected calls or functions",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:1"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_instances_fork_from_the_runtime_template_and_share_nothing() {
    templated_instances_share_nothing(&[("STRATA_FUNCTION_TEMPLATES", "0")], "runtime_template").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_instances_fork_from_function_templates_and_share_nothing() {
    templated_instances_share_nothing(&[], "function_template").await;
}

async fn templated_instances_share_nothing(env: &[(&str, &str)], path: &str) {
    let d = Daemon::start_env(&[], env);
    // Two functions: `a` changes the state it inherited from the template (a preloaded
    // module, /tmp), `b` looks for it.
    let a = function_dir(&[
        (
            "strata.toml",
            "name = \"tpl-a\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        (
            "main.py",
            "import json\njson.leak = 'a'\nopen('/tmp/a', 'w').write('a')\n\ndef handle(r):\n    return 'a'\n",
        ),
    ]);
    let b = function_dir(&[
        (
            "strata.toml",
            "name = \"tpl-b\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        (
            "main.py",
            "import json, os, sys\n\ndef handle(r):\n    return [hasattr(json, 'leak'), os.path.exists('/tmp/a'), 'urllib.parse' in sys.modules, os.getpid()]\n",
        ),
    ]);
    d.deploy(a.path());
    d.deploy(b.path());
    let c = d.client();
    assert_eq!(c.get(d.fn_url("tpl-a")).send().await.unwrap().status(), 200);
    let r = c.get(d.fn_url("tpl-b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        body_json(r).await,
        serde_json::json!([false, false, true, 1]),
        "nothing of tpl-a; the template's preloaded modules; pid 1 of its own namespace"
    );
    for name in ["tpl-a", "tpl-b"] {
        let recs = records(&d, name, 1).await;
        assert_eq!(recs[0]["cold_start"]["path"], path, "{name}: {}", recs[0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runtime_template_is_replaced_and_calls_go_on() {
    let d = Daemon::start_env(&[], &[("STRATA_FUNCTION_TEMPLATES", "0")]);
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"phoenix\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"0s\"\n",
        ),
        ("main.py", "def handle(r):\n    return 'up'\n"),
    ]);
    d.deploy(f.path());
    let c = d.client();
    assert_eq!(
        c.get(d.fn_url("phoenix")).send().await.unwrap().text().await.unwrap(),
        "up"
    );
    // The template: the daemon's child running zygote.py in the daemon's pid namespace (its
    // spare, also the daemon's child, leads a pid namespace of its own).
    let zygotes: Vec<i32> = children_with(d.pid_raw(), "zygote.py")
        .into_iter()
        .filter(|&pid| !own_pid_namespace(pid))
        .collect();
    assert_eq!(zygotes.len(), 1, "one runtime template");
    // SAFETY: kill(2) of the template process found above.
    unsafe { libc::kill(zygotes[0], libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let r = c.get(d.fn_url("phoenix")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "up");
    }
    let recs = records(&d, "phoenix", 4).await;
    assert_eq!(
        recs[0]["cold_start"]["path"], "runtime_template",
        "a new template: {}",
        recs[0]
    );
}

/// Whether process `pid` leads (or is in) a pid namespace below ours.
fn own_pid_namespace(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() > 2)
    })
}

/// The processes whose parent is `ppid` and whose command line contains `needle`.
fn children_with(ppid: i32, needle: &str) -> Vec<i32> {
    let ppid = ppid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let cmdline = std::fs::read_to_string(e.path().join("cmdline")).ok()?;
            let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().to_owned();
            (parent == ppid && cmdline.contains(needle)).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_on_a_cold_function_pays_one_import() {
    let d = Daemon::start();
    // The import takes 200 ms and says so in the log; each call holds its instance 300 ms,
    // so the burst needs many instances at once.
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"burst\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        (
            "main.py",
            "import time\ntime.sleep(0.2)\nprint('imported', flush=True)\nSTATE = []\n\ndef handle(r):\n    STATE.append(1)\n    time.sleep(0.3)\n    return len(STATE)\n",
        ),
    ]);
    d.deploy(f.path());
    let c = d.client();
    let calls = (0..20).map(|_| {
        let c = c.clone();
        let url = d.fn_url("burst");
        tokio::spawn(async move { c.post(url).send().await.unwrap() })
    });
    let mut bodies = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let r = call.await.unwrap();
        assert_eq!(r.status(), 200);
        bodies.push(r.text().await.unwrap());
    }
    let recs = records(&d, "burst", 20).await;
    let cold: Vec<&serde_json::Value> = recs.iter().filter(|r| r["cold"] == true).collect();
    assert!(cold.len() >= 2, "the burst scaled out: {} cold starts", cold.len());
    for r in &cold {
        assert_eq!(r["cold_start"]["path"], "function_template", "{r}");
    }
    let imports: Vec<f64> = cold
        .iter()
        .map(|r| r["cold_start"]["import_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(
        imports.iter().filter(|ms| **ms >= 200.0).count(),
        1,
        "one cold start paid the import, the others forked: {imports:?}"
    );
    let log = get_text(&d, "/api/v1/functions/burst/logs").await;
    assert_eq!(log.matches("imported").count(), 1, "{log}");
    // Each instance has its own state, though they forked from one import.
    let firsts = bodies.iter().filter(|b| b.as_str() == "1").count();
    assert_eq!(firsts, cold.len(), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_function_template_is_replaced_and_calls_go_on() {
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"hydra\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"0s\"\n",
        ),
        (
            "main.py",
            "print('imported', flush=True)\n\ndef handle(r):\n    return 'up'\n",
        ),
    ]);
    d.deploy(f.path());
    let c = d.client();
    assert_eq!(
        c.get(d.fn_url("hydra")).send().await.unwrap().text().await.unwrap(),
        "up"
    );
    // The function template: a child of the daemon (forked from the runtime template, so its
    // command line is the zygote's) that leads a pid namespace of its own, where the runtime
    // template is in the host's, and runs as the function's user, where the runtime
    // template's spare (also a child in a pid namespace of its own) is still root. With
    // keep_alive 0 no instance is left to confuse it with.
    let zygote_like = children_with(d.pid_raw(), "zygote.py");
    let templates: Vec<i32> = zygote_like
        .into_iter()
        .filter(|pid| {
            own_pid_namespace(*pid)
                && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    !s.lines()
                        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
                })
        })
        .collect();
    assert_eq!(templates.len(), 1, "one function template");
    // SAFETY: kill(2) of the template process found above.
    unsafe { libc::kill(templates[0], libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let r = c.get(d.fn_url("hydra")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "up");
    }
    let recs = records(&d, "hydra", 4).await;
    assert_eq!(recs[0]["cold_start"]["path"], "function_template", "{}", recs[0]);
    let log = get_text(&d, "/api/v1/functions/hydra/logs").await;
    assert_eq!(
        log.matches("imported").count(),
        2,
        "a new template imported again: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_whose_import_starts_a_thread_falls_back_to_the_runtime_template() {
    // A process with a second thread cannot move into a user namespace (or be forked
    // safely): its version gets no function template, and its calls still work.
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"threaded\"\nruntime = \"python\"\nhandler = \"main:handle\"\nkeep_alive = \"0s\"\n",
        ),
        (
            "main.py",
            "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n\ndef handle(r):\n    return threading.active_count()\n",
        ),
    ]);
    d.deploy(f.path());
    let c = d.client();
    for _ in 0..2 {
        let r = c.get(d.fn_url("threaded")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "2");
    }
    let recs = records(&d, "threaded", 2).await;
    for r in &recs {
        assert_eq!(r["cold_start"]["path"], "runtime_template", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wide_burst_on_a_small_function_template_loses_no_call() {
    // 40 instances of a 64 MiB function at once: what each instance's kernel allocated
    // before it moved to its own cgroup stays on the template's account, which once pushed
    // the template past its limit, and its death took every instance with it.
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"wide\"\nruntime = \"python\"\nhandler = \"main:handle\"\nmemory = \"64MiB\"\nmax_instances = 40\n",
        ),
        (
            "main.py",
            "import time\n\ndef handle(r):\n    time.sleep(1.0)\n    return 'ok'\n",
        ),
    ]);
    d.deploy(f.path());
    let c = d.client();
    assert_eq!(c.post(d.fn_url("wide")).send().await.unwrap().status(), 200);
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let c = c.clone();
            let url = d.fn_url("wide");
            tokio::spawn(async move { c.post(url).send().await.unwrap().status() })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let recs = records(&d, "wide", 41).await;
    let forked = recs
        .iter()
        .filter(|r| r["cold_start"]["path"] == "function_template")
        .count();
    assert!(
        forked >= 10,
        "the burst scaled out from the template: {forked} cold starts"
    );
}
