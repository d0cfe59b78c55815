//! The client subcommands: each is one or two calls to the daemon's HTTP API.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, anyhow};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use futures::StreamExt;
use serde_json::Value;

use crate::args::{Command, Global, Output};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(g: &Global) -> Self {
        Api {
            base: g.gateway.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Turn a response into JSON, or an error carrying the daemon's code and message.
    async fn json(&self, r: Result<reqwest::Response, reqwest::Error>) -> anyhow::Result<Value> {
        let r = r.map_err(|e| self.unreachable(e))?;
        let status = r.status();
        let text = r.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            return Err(api_error(status, &v));
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.http.get(self.url(path)).send().await).await
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the Strata daemon at {}: is `strata up` running?",
                self.base
            )
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }
}

fn api_error(status: reqwest::StatusCode, v: &Value) -> anyhow::Error {
    match (v["code"].as_str(), v["message"].as_str()) {
        (Some(code), Some(msg)) => anyhow!("{msg} ({code})"),
        _ => anyhow!("daemon answered {status}: {v}"),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.iter().copied());
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(0)
}

/// Run a client subcommand; returns the exit code.
pub async fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Deploy { dir, g } => deploy(&Api::new(&g), &dir, g.output).await,
        Command::Ls { g } => ls(&Api::new(&g), g.output).await,
        Command::Describe { name, g } => describe(&Api::new(&g), &name, g.output).await,
        Command::Invoke {
            name,
            data,
            data_file,
            headers,
            method,
            path,
            verbose,
            g,
        } => {
            let body = match (data, data_file) {
                (Some(d), _) => Some(d.into_bytes()),
                (None, Some(f)) => Some(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?),
                (None, None) => None,
            };
            invoke(&Api::new(&g), &name, body, &headers, method, &path, verbose, g.output).await
        }
        Command::Logs { name, follow, limit, g } => logs(&Api::new(&g), &name, follow, limit, g.output).await,
        Command::Rm { name, g } => {
            let api = Api::new(&g);
            let v = api
                .json(
                    api.http
                        .delete(api.url(&format!("/api/v1/functions/{name}")))
                        .send()
                        .await,
                )
                .await?;
            if g.output == Output::Json {
                return print_json(&v);
            }
            println!("removed {name}");
            Ok(0)
        }
        Command::Rollback { name, to, g } => {
            let api = Api::new(&g);
            let body = serde_json::json!({ "to": to });
            let r = api
                .http
                .post(api.url(&format!("/api/v1/functions/{name}/rollback")))
                .json(&body)
                .send()
                .await;
            let v = api.json(r).await?;
            if g.output == Output::Json {
                return print_json(&v);
            }
            println!("{name} now at version {}", s(&v["version"]));
            Ok(0)
        }
        Command::Versions { name, g } => {
            let v = Api::new(&g).get(&format!("/api/v1/functions/{name}/versions")).await?;
            if g.output == Output::Json {
                return print_json(&v);
            }
            let mut t = table(&["VERSION", "CREATED", "ACTIVE"]);
            for x in v.as_array().into_iter().flatten() {
                t.add_row([
                    s(&x["version"]),
                    s(&x["created_at"]),
                    if x["active"] == true { "*".into() } else { String::new() },
                ]);
            }
            println!("{t}");
            Ok(0)
        }
        Command::Calls { name, limit, g } => {
            let v = Api::new(&g)
                .get(&format!("/api/v1/functions/{name}/invocations?limit={limit}"))
                .await?;
            if g.output == Output::Json {
                return print_json(&v);
            }
            let mut t = table(&["CALL", "VERSION", "STARTED", "MS", "STATUS", "ERROR", "COLD", "CPU MS"]);
            for r in v.as_array().into_iter().flatten() {
                t.add_row([
                    s(&r["call_id"]),
                    s(&r["version"]),
                    s(&r["started_at"]),
                    format!("{:.2}", r["duration_ms"].as_f64().unwrap_or(0.0)),
                    s(&r["status"]),
                    s(&r["error"]),
                    if r["cold"] == true {
                        "cold".into()
                    } else {
                        "warm".into()
                    },
                    format!("{:.2}", r["cpu_ms"].as_f64().unwrap_or(0.0)),
                ]);
            }
            println!("{t}");
            Ok(0)
        }
        Command::Up(_) | Command::StdioAdapter { .. } => Err(anyhow!("not a client command")),
    }
}

async fn deploy(api: &Api, dir: &std::path::Path, output: Output) -> anyhow::Result<i32> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("packaging {}", dir.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let files = crate::pack::files(dir)?.len();
    let archive = crate::pack::package(dir)?;
    spinner.finish_and_clear();
    eprintln!("packaged {} ({files} files, {} bytes)", dir.display(), archive.len());
    let bar = indicatif::ProgressBar::new(archive.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("uploading [{bar:30}] {bytes}/{total_bytes}")
            .map_err(|e| anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    let chunks: Vec<Vec<u8>> = archive.chunks(64 << 10).map(<[u8]>::to_vec).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |c| {
        progress.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    });
    let r = api
        .http
        .post(api.url("/api/v1/functions"))
        .header("content-type", "application/gzip")
        .header("content-length", archive.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    bar.finish_and_clear();
    let v = api.json(r).await?;
    if output == Output::Json {
        return print_json(&v);
    }
    if v["created"] == true {
        println!("deployed {} version {}", s(&v["name"]), s(&v["version"]));
    } else {
        println!(
            "{}: version {} was deployed before; activated it",
            s(&v["name"]),
            s(&v["version"])
        );
    }
    Ok(0)
}

async fn ls(api: &Api, output: Output) -> anyhow::Result<i32> {
    let v = api.get("/api/v1/functions").await?;
    if output == Output::Json {
        return print_json(&v);
    }
    let mut t = table(&["NAME", "RUNTIME", "VERSION", "INSTANCES", "INVOCATIONS"]);
    for f in v.as_array().into_iter().flatten() {
        t.add_row([
            s(&f["name"]),
            s(&f["runtime"]),
            s(&f["version"]),
            s(&f["instances"]),
            s(&f["invocations"]),
        ]);
    }
    println!("{t}");
    Ok(0)
}

async fn describe(api: &Api, name: &str, output: Output) -> anyhow::Result<i32> {
    let v = api.get(&format!("/api/v1/functions/{name}")).await?;
    if output == Output::Json {
        return print_json(&v);
    }
    let mut t = table(&["FIELD", "VALUE"]);
    for k in [
        "name",
        "runtime",
        "handler",
        "version",
        "memory",
        "timeout",
        "concurrency",
        "min_instances",
        "max_instances",
        "keep_alive",
        "network",
        "cpu",
        "invocations",
        "cold_starts",
    ] {
        t.add_row([k.to_owned(), s(&v[k])]);
    }
    if let Some(env) = v["env"].as_object().filter(|e| !e.is_empty()) {
        let pairs: Vec<String> = env.iter().map(|(k, x)| format!("{k}={}", s(x))).collect();
        t.add_row(["env".to_owned(), pairs.join("\n")]);
    }
    println!("{t}");
    let mut vt = table(&["VERSION", "CREATED", "ACTIVE"]);
    for x in v["versions"].as_array().into_iter().flatten() {
        vt.add_row([
            s(&x["version"]),
            s(&x["created_at"]),
            if x["active"] == true { "*".into() } else { String::new() },
        ]);
    }
    println!("{vt}");
    let mut it = table(&["INSTANCE", "STATE", "IN FLIGHT", "IDLE MS"]);
    for x in v["instances"].as_array().into_iter().flatten() {
        it.add_row([s(&x["id"]), s(&x["state"]), s(&x["inflight"]), s(&x["idle_ms"])]);
    }
    println!("{it}");
    Ok(0)
}

#[allow(clippy::too_many_arguments)] // the flags of one subcommand
async fn invoke(
    api: &Api,
    name: &str,
    body: Option<Vec<u8>>,
    headers: &[String],
    method: Option<String>,
    path: &str,
    verbose: bool,
    output: Output,
) -> anyhow::Result<i32> {
    let method = method.unwrap_or_else(|| if body.is_some() { "POST".into() } else { "GET".into() });
    let method =
        reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).map_err(|_| anyhow!("bad method {method}"))?;
    let path = if path.is_empty() || path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut req = api.http.request(method, api.url(&format!("/function/{name}{path}")));
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("header {h:?} is not name:value"))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let r = req.send().await.map_err(|e| api.unreachable(e))?;
    let status = r.status();
    let hdr = |k: &str| {
        r.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let (call_id, duration) = (hdr("x-call-id"), hdr("x-duration-seconds"));
    let response_headers: serde_json::Map<String, Value> = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let bytes = r.bytes().await?;
    if verbose {
        eprintln!("status {status}, call {call_id}, {duration} s");
    }
    if output == Output::Json {
        print_json(&serde_json::json!({
            "status": status.as_u16(),
            "headers": response_headers,
            "body": String::from_utf8_lossy(&bytes),
            "call_id": call_id,
        }))?;
        return Ok(if status.is_success() { 0 } else { 1 });
    }
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match (v["code"].as_str(), v["message"].as_str()) {
            (Some(code), Some(msg)) => eprintln!("error: {msg} ({code})"),
            _ => eprintln!("error: {status}: {}", String::from_utf8_lossy(&bytes)),
        }
        return Ok(1);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    if out.is_terminal() && !bytes.ends_with(b"\n") && std::str::from_utf8(&bytes).is_ok() {
        out.write_all(b"\n")?;
    }
    Ok(0)
}

async fn logs(api: &Api, name: &str, follow: bool, limit: usize, output: Output) -> anyhow::Result<i32> {
    let mut v = api.get(&format!("/api/v1/functions/{name}/logs?limit={limit}")).await?;
    loop {
        for l in v["lines"].as_array().into_iter().flatten() {
            if output == Output::Json {
                println!("{l}");
            } else {
                let call = l["call_id"]
                    .as_str()
                    .map_or("-".to_owned(), |c| c.chars().take(8).collect());
                println!("{} {call:8} {}", s(&l["ts"]), s(&l["line"]));
            }
        }
        if !follow {
            return Ok(0);
        }
        let next = v["next"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        v = api
            .get(&format!("/api/v1/functions/{name}/logs?since={next}&limit=1000"))
            .await?;
    }
}
