//! The client side of the `strata` CLI: the commands that talk to the daemon's
//! HTTP API (deploy, ls, describe, invoke, logs, ...), and the stdio adapter
//! run inside sandboxes.

mod stdio;

pub use stdio::stdio_adapter;

use std::fmt;
use std::io::{self, IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use comfy_table::{ContentArrangement, Table, presets};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cli::{Command, Global, Output};

/// Size of the chunks the deploy upload is streamed in (granularity of its progress bar).
const UPLOAD_CHUNK: usize = 64 << 10;
/// Pause between two polls of `strata logs --follow`.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Runs a client command and returns the process exit code.
///
/// Errors reported by the daemon (`{"code","message"}`) and an unreachable
/// daemon are printed on stderr here and give exit code 1; other failures
/// (bad arguments, unreadable files, ...) are returned as `Err`. `Up` and
/// `StdioAdapter` are not client commands and give an `Err`.
pub async fn run(cmd: Command) -> anyhow::Result<i32> {
    match dispatch(cmd).await {
        Ok(code) => Ok(code),
        Err(e) => {
            if let Some(failure) = e.downcast_ref::<Failure>() {
                eprintln!("error: {failure}");
                Ok(1)
            } else if e.downcast_ref::<StdoutClosed>().is_some() {
                // The reader of our output went away (`strata logs -f | head`).
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Up(_) => bail!("`strata up` runs the daemon, not a client command"),
        Command::StdioAdapter { .. } => bail!("`strata stdio-adapter` is not a client command"),
        Command::Deploy { dir, g } => deploy(&Api::new(&g)?, &dir).await,
        Command::Build { dir } => build(&dir).await,
        Command::Ls { g } => ls(&Api::new(&g)?).await,
        Command::Describe { name, g } => describe(&Api::new(&g)?, &name).await,
        Command::Invoke {
            name,
            data,
            data_file,
            header,
            method,
            path,
            r#async,
            verbose,
            g,
        } => {
            let req = InvokeRequest {
                name,
                data,
                data_file,
                headers: header,
                method,
                path,
                r#async,
                verbose,
            };
            invoke(&Api::new(&g)?, req).await
        }
        Command::Logs { name, follow, limit, g } => logs(&Api::new(&g)?, &name, follow, limit).await,
        Command::Rm { name, g } => rm(&Api::new(&g)?, &name).await,
        Command::Rollback { name, to, g } => rollback(&Api::new(&g)?, &name, to).await,
        Command::Versions { name, g } => versions(&Api::new(&g)?, &name).await,
        Command::Calls { name, limit, g } => calls(&Api::new(&g)?, &name, limit).await,
        Command::Call { id, g } => call(&Api::new(&g)?, &id).await,
        Command::Dlq { name, replay, g } => dlq(&Api::new(&g)?, &name, replay).await,
    }
}

// ------------------------------------------------------------------- errors

/// A failure printed as `error: ...` with exit code 1 by [`run`].
#[derive(Debug)]
enum Failure {
    /// The daemon could not be connected to.
    Unreachable { gateway: String },
    /// The daemon answered with an error.
    Api { code: String, message: String },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable { gateway } => {
                write!(
                    f,
                    "cannot reach the Strata daemon at {gateway}: is `strata up` running?"
                )
            }
            Failure::Api { code, message } => write!(f, "{message} ({code})"),
        }
    }
}

impl std::error::Error for Failure {}

/// Writing to stdout failed because its reader is gone.
#[derive(Debug)]
struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

// ---------------------------------------------------------------- API client

/// An HTTP client for one daemon.
struct Api {
    http: reqwest::Client,
    /// The daemon's base URL, without query or fragment.
    base: Url,
    /// The daemon's URL as given (for messages).
    gateway: String,
    output: Output,
}

impl Api {
    fn new(g: &Global) -> anyhow::Result<Self> {
        let gateway = g.gateway.trim().to_owned();
        let mut base = Url::parse(&gateway).with_context(|| format!("invalid gateway URL {gateway:?}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("invalid gateway URL {gateway:?}: expected http://HOST:PORT or https://HOST:PORT");
        }
        base.set_query(None);
        base.set_fragment(None);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("strata-cli/", env!("CARGO_PKG_VERSION")));
        let host = base.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            // An HTTP(S)_PROXY from the environment must not capture local traffic.
            builder = builder.no_proxy();
        }
        let http = builder.build().context("creating the HTTP client")?;
        Ok(Api {
            http,
            base,
            gateway,
            output: g.output,
        })
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// The daemon URL with the path segments `segments` appended (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `/api/v1/functions[/NAME[/rest...]]`.
    fn functions_url(&self, rest: &[&str]) -> Url {
        let mut segments = vec!["api", "v1", "functions"];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// Sends a request; a connection failure becomes [`Failure::Unreachable`].
    async fn send_raw(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::Error::new(Failure::Unreachable {
                    gateway: self.gateway.clone(),
                })
            } else {
                anyhow::Error::new(e).context(format!("request to the Strata daemon at {} failed", self.gateway))
            }
        })
    }

    /// Sends an API request; a non-2xx answer becomes [`Failure::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = self.send_raw(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |key: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = field("message").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("request failed").to_owned()
            } else {
                truncate(&text, 500)
            }
        });
        let code = field("code").unwrap_or_else(|| format!("http_{}", status.as_u16()));
        Err(Failure::Api { code, message }.into())
    }

    /// Sends an API request and parses the JSON answer.
    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(req).await?;
        let body = resp.bytes().await.context("reading the daemon's answer")?;
        serde_json::from_slice(&body).context("the daemon's answer is not valid JSON")
    }

    async fn get(&self, url: Url) -> anyhow::Result<Value> {
        self.call(self.http.get(url)).await
    }
}

// ------------------------------------------------------------------ commands

/// Read a streamed deploy answer: print each progress line (a dependency installer's output)
/// as it arrives, return the result or the error.
async fn deploy_outcome(resp: reqwest::Response) -> anyhow::Result<Value> {
    let streamed = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if !streamed {
        let body = resp.bytes().await.context("reading the daemon's answer")?;
        return serde_json::from_slice(&body).context("the daemon's answer is not valid JSON");
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("reading the daemon's answer")?);
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            let v: Value = serde_json::from_slice(&line).context("the daemon's answer is not valid JSON")?;
            if let Some(p) = v.get("progress") {
                eprintln!("  | {}", text(p));
            } else if let Some(r) = v.get("result") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(Failure::Api {
                    code: text(&e["code"]),
                    message: text(&e["message"]),
                }
                .into());
            }
        }
    }
    bail!("the daemon's deploy answer ended without a result")
}

/// `strata build DIR`: the folder's `[build]` command, as `strata deploy` runs it; exits
/// with the command's own code when it fails.
async fn build(dir: &Path) -> anyhow::Result<i32> {
    let d = dir.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        match crate::pack::build_of(&d)? {
            Some(b) => crate::pack::run_build(&d, &b).map(|()| true),
            None => Ok(false),
        }
    })
    .await
    .context("the build task failed")?;
    match outcome {
        Ok(true) => Ok(0),
        Ok(false) => {
            eprintln!("{}: no [build] in its strata.toml; nothing to do", dir.display());
            Ok(0)
        }
        Err(e) => match e.downcast_ref::<crate::pack::BuildFailed>() {
            Some(f) => {
                eprintln!("error: {f}");
                Ok(f.status.code().unwrap_or(1).clamp(1, 255))
            }
            None => Err(e),
        },
    }
}

async fn deploy(api: &Api, dir: &Path) -> anyhow::Result<i32> {
    {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || crate::pack::build_before_deploy(&dir))
            .await
            .context("the build task failed")?
            .context("nothing deployed")?;
    }
    let spinner = ProgressBar::new_spinner().with_style(style("{spinner} packaging {msg}"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let packaged = {
        let dir = dir.to_path_buf();
        let spinner = spinner.clone();
        // The daemon's own packaging (used by `strata up --demo`), so that the same
        // folder gives the same bytes, and so the same version, both ways.
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, usize, u64)> {
            let files = crate::pack::files(&dir)?;
            let mut size = 0u64;
            for (i, rel) in files.iter().enumerate() {
                size += std::fs::symlink_metadata(dir.join(rel)).map_or(0, |m| m.len());
                spinner.set_message(format!("{} files, {}", i + 1, fmt_bytes(size)));
            }
            let archive = crate::pack::package(&dir)?;
            Ok((archive, files.len(), size))
        })
        .await
        .context("the packaging task failed")?
    };
    spinner.finish_and_clear();
    let (archive, files, size) = packaged?;
    let digest = hex::encode(Sha256::digest(&archive));
    eprintln!(
        "packaged {} ({files} files, {}; {} compressed, sha256 {})",
        dir.display(),
        fmt_bytes(size),
        fmt_bytes(archive.len() as u64),
        digest.get(..12).unwrap_or(&digest),
    );

    let data = Bytes::from(archive);
    let total = data.len();
    let bar = ProgressBar::new(total as u64).with_style(
        style("{spinner} uploading [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})").progress_chars("=> "),
    );
    let chunks: Vec<Bytes> = (0..total)
        .step_by(UPLOAD_CHUNK)
        .map(|start| data.slice(start..(start + UPLOAD_CHUNK).min(total)))
        .collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        Ok::<Bytes, io::Error>(chunk)
    });
    let req = api
        .http
        .post(api.functions_url(&[]))
        .header(CONTENT_TYPE, "application/gzip")
        .header(CONTENT_LENGTH, total)
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream));
    let resp = api.send(req).await;
    bar.finish_and_clear();
    let v = deploy_outcome(resp?).await?;

    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let name = text(&v["name"]);
    let version = text(&v["version"]);
    if v["created"].as_bool() == Some(false) {
        emit(&format!(
            "{name}: version {version} is already deployed, activated it\n"
        ))?;
    } else {
        emit(&format!("deployed {name} version {version}\n"))?;
    }
    if let Some(build) = v["build"].as_str() {
        emit(&format!("  build: {build}\n"))?;
    }
    Ok(0)
}

async fn ls(api: &Api) -> anyhow::Result<i32> {
    let v = api.get(api.functions_url(&[])).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let functions = as_list(&v);
    if functions.is_empty() {
        eprintln!("no functions deployed (deploy one with `strata deploy DIR`)");
        return Ok(0);
    }
    let mut t = table(&["NAME", "RUNTIME", "VERSION", "INSTANCES", "INVOCATIONS"]);
    for f in functions {
        t.add_row(cells(f, &["name", "runtime", "version", "instances", "invocations"]));
    }
    print_table(&mut t)?;
    Ok(0)
}

/// Fields of `describe` shown first, in this order.
const DESCRIBE_FIELDS: &[&str] = &[
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
];

async fn describe(api: &Api, name: &str) -> anyhow::Result<i32> {
    let v = api.get(api.functions_url(&[name])).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let Some(obj) = v.as_object() else {
        bail!("unexpected answer from the daemon: {v}");
    };

    let mut kv = table(&[]);
    for key in DESCRIBE_FIELDS {
        if let Some(value) = obj.get(*key) {
            kv.add_row(vec![(*key).to_owned(), text(value)]);
        }
    }
    // Fields this client does not know yet, if they are simple values.
    for (key, value) in obj {
        let known = DESCRIBE_FIELDS.contains(&key.as_str())
            || matches!(
                key.as_str(),
                "env" | "versions" | "instances" | "memory_bytes" | "triggers"
            );
        if !known && !value.is_object() && !value.is_array() {
            kv.add_row(vec![key.clone(), text(value)]);
        }
    }
    let env = obj.get("env").and_then(Value::as_object);
    let env_text = match env {
        Some(env) if !env.is_empty() => env
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => "-".to_owned(),
    };
    kv.add_row(vec!["env".to_owned(), env_text]);
    let triggers = obj.get("triggers").map(as_list).unwrap_or_default();
    let triggers_text = triggers
        .iter()
        .map(|t| match t["type"].as_str() {
            Some("cron") => format!("cron {}", text(&t["schedule"])),
            Some("topic") => format!("topic {}", text(&t["topic"])),
            Some("event") => format!("event {}", t["filter"]),
            _ => t.to_string(),
        })
        .collect::<Vec<_>>();
    kv.add_row(vec![
        "triggers".to_owned(),
        if triggers_text.is_empty() {
            "-".to_owned()
        } else {
            triggers_text.join("\n")
        },
    ]);
    if let Some(deps) = obj.get("dependencies") {
        let packages = deps.get("packages").map(as_list).unwrap_or_default();
        kv.add_row(vec![
            "dependencies".to_owned(),
            format!(
                "{} ({})\n{}",
                text(&deps["layer"]),
                text(&deps["size"]),
                packages.iter().map(text).collect::<Vec<_>>().join("\n")
            ),
        ]);
    }
    let mut out = finish_table(&mut kv);
    out.push('\n');

    let versions = obj.get("versions").map(as_list).unwrap_or_default();
    out.push_str("VERSIONS\n");
    if versions.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut t = table(&["VERSION", "CREATED", "ACTIVE"]);
        for ver in versions {
            t.add_row(version_row(ver));
        }
        out.push_str(&indent(&finish_table(&mut t)));
    }
    out.push('\n');

    let instances = obj.get("instances").map(as_list).unwrap_or_default();
    out.push_str("INSTANCES\n");
    if instances.is_empty() {
        out.push_str("  none running\n");
    } else {
        // Optional columns, shown when the daemon reports them.
        let started = instances.iter().any(|i| i.get("started_at").is_some());
        let idle = instances.iter().any(|i| i.get("idle_ms").is_some());
        let mut header = vec!["ID", "STATE", "INFLIGHT"];
        if started {
            header.push("STARTED");
        }
        if idle {
            header.push("IDLE");
        }
        let mut t = table(&header);
        for inst in instances {
            let mut row = cells(inst, &["id", "state", "inflight"]);
            if started {
                row.push(short_ts(&text(&inst["started_at"])));
            }
            if idle {
                row.push(inst["idle_ms"].as_f64().map_or_else(|| "-".to_owned(), fmt_ms));
            }
            t.add_row(row);
        }
        out.push_str(&indent(&finish_table(&mut t)));
    }
    emit(&out)?;
    Ok(0)
}

/// The options of `strata invoke`.
struct InvokeRequest {
    name: String,
    data: Option<String>,
    data_file: Option<PathBuf>,
    headers: Vec<String>,
    method: Option<String>,
    path: String,
    r#async: bool,
    verbose: bool,
}

async fn invoke(api: &Api, req: InvokeRequest) -> anyhow::Result<i32> {
    let body: Option<Vec<u8>> = match (req.data, &req.data_file) {
        (Some(data), _) => Some(data.into_bytes()),
        (None, Some(file)) if file.as_os_str() == "-" => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .context("reading the request body from stdin")?;
            Some(buf)
        }
        (None, Some(file)) => Some(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?),
        (None, None) => None,
    };
    let method = match &req.method {
        Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid HTTP method {m:?}"))?,
        None if body.is_some() || req.r#async => Method::POST,
        None => Method::GET,
    };
    let mut headers = HeaderMap::new();
    for h in &req.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("invalid header {h:?}: expected \"Name: value\""))?;
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim()).with_context(|| format!("invalid header value in {h:?}"))?;
        headers.append(name, value);
    }
    let prefix = if req.r#async { "async-function" } else { "function" };
    let url = append_path(api.url(&[prefix, &req.name]), &req.path)?;

    let mut builder = api.http.request(method, url).headers(headers);
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let resp = api.send_raw(builder).await?;
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let body = resp.bytes().await.context("reading the function's response")?;
    let header_text = |name: &str| {
        resp_headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let call_id = header_text("x-call-id");

    if req.verbose {
        eprintln!("status: {status}");
        eprintln!("call id: {}", call_id.as_deref().unwrap_or("-"));
        match header_text("x-duration-seconds") {
            Some(d) => eprintln!("duration: {d} s"),
            None => eprintln!("duration: -"),
        }
    }
    let code = if status.is_success() { 0 } else { 1 };

    if api.json() {
        let mut hm = serde_json::Map::new();
        for (name, value) in &resp_headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match hm.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    hm.insert(name.as_str().to_owned(), Value::String(value));
                }
            }
        }
        print_json(&json!({
            "status": status.as_u16(),
            "headers": hm,
            "body": String::from_utf8_lossy(&body),
            "call_id": call_id,
        }))?;
        return Ok(code);
    }

    if status.is_success() {
        let mut out = body.to_vec();
        let textual = std::str::from_utf8(&body).is_ok();
        if textual && !out.is_empty() && !out.ends_with(b"\n") && io::stdout().is_terminal() {
            out.push(b'\n');
        }
        emit_bytes(&out)?;
    } else if body.is_empty() {
        eprintln!("error: HTTP {status}");
    } else if let Some((code, message)) = gateway_error(&body) {
        // The gateway's own errors (no such function, timeout, over capacity, ...).
        eprintln!("error: {message} ({code})");
    } else {
        let mut err = io::stderr().lock();
        // Nothing useful can be done if stderr itself fails.
        let _ = err.write_all(&body);
        if !body.ends_with(b"\n") {
            let _ = err.write_all(b"\n");
        }
        let _ = err.flush();
    }
    Ok(code)
}

/// The `code` and `message` of an error body in the gateway's `{"code","message"}` shape.
fn gateway_error(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_str()?;
    let message = v.get("message")?.as_str()?;
    Some((code.to_owned(), message.to_owned()))
}

/// Appends the user's `--path` (a path, optionally with a query string) to `url`.
fn append_path(url: Url, path: &str) -> anyhow::Result<Url> {
    let path = path.trim();
    if path.is_empty() {
        return Ok(url);
    }
    let sep = if path.starts_with('/') || path.starts_with('?') {
        ""
    } else {
        "/"
    };
    let full = format!("{}{sep}{path}", url.as_str().trim_end_matches('/'));
    Url::parse(&full).with_context(|| format!("invalid --path {path:?}"))
}

async fn logs(api: &Api, name: &str, follow: bool, limit: u32) -> anyhow::Result<i32> {
    let url = api.functions_url(&[name, "logs"]);
    let mut since: Option<u64> = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        let fetch = api.call(api.http.get(url.clone()).query(&query));
        let page = if follow {
            tokio::select! {
                page = fetch => page?,
                _ = &mut ctrl_c => return Ok(0),
            }
        } else {
            fetch.await?
        };
        if !follow && api.json() {
            print_json(&page)?;
            return Ok(0);
        }
        let lines = page.get("lines").map(as_list).unwrap_or_default();
        let mut out = String::new();
        for line in lines {
            if api.json() {
                out.push_str(&line.to_string());
            } else {
                let call = match line.get("call_id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.chars().take(8).collect(),
                    _ => "-".to_owned(),
                };
                out.push_str(&format!("{} {call} {}", text(&line["ts"]), text_raw(&line["line"])));
            }
            out.push('\n');
        }
        emit(&out)?;
        if !follow {
            return Ok(0);
        }
        let next = page.get("next").and_then(Value::as_u64).or_else(|| {
            // Without a cursor, continue after the last line seen.
            lines
                .iter()
                .filter_map(|l| l.get("seq").and_then(Value::as_u64))
                .max()
                .map(|s| s + 1)
        });
        if next.is_some() {
            since = next;
        }
        // A full page means more lines are waiting: fetch them right away.
        if lines.len() < limit as usize || next.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                _ = &mut ctrl_c => return Ok(0),
            }
        }
    }
}

async fn rm(api: &Api, name: &str) -> anyhow::Result<i32> {
    let v = api.call(api.http.delete(api.functions_url(&[name]))).await?;
    if api.json() {
        print_json(&v)?;
    } else {
        let deleted = v.get("name").and_then(Value::as_str).unwrap_or(name);
        emit(&format!("deleted {deleted}\n"))?;
    }
    Ok(0)
}

async fn rollback(api: &Api, name: &str, to: Option<String>) -> anyhow::Result<i32> {
    let req = api
        .http
        .post(api.functions_url(&[name, "rollback"]))
        .json(&json!({ "to": to }));
    let v = api.call(req).await?;
    if api.json() {
        print_json(&v)?;
    } else {
        let name = v.get("name").and_then(Value::as_str).unwrap_or(name);
        emit(&format!("{name} now at {}\n", text(&v["version"])))?;
    }
    Ok(0)
}

async fn call(api: &Api, id: &str) -> anyhow::Result<i32> {
    let v = api.get(api.url(&["api", "v1", "calls", id])).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let mut t = table(&["FIELD", "VALUE"]);
    for k in [
        "call_id",
        "function",
        "state",
        "status",
        "attempts",
        "enqueued_at",
        "completed_at",
        "duration_ms",
        "callback_url",
        "callback_delivered",
    ] {
        if let Some(x) = v.get(k) {
            t.add_row(vec![k.to_owned(), text(x)]);
        }
    }
    for e in as_list(&v["errors"]) {
        t.add_row(vec![
            format!("attempt {}", text(&e["attempt"])),
            truncate(&text(&e["error"]), 80),
        ]);
    }
    print_table(&mut t)?;
    if let Some(b) = v.get("body").and_then(Value::as_str) {
        emit(b)?;
        if !b.ends_with('\n') && !b.is_empty() {
            emit("\n")?;
        }
    }
    Ok(0)
}

async fn dlq(api: &Api, name: &str, replay: bool) -> anyhow::Result<i32> {
    if replay {
        let v = api
            .call(api.http.post(api.functions_url(&[name, "dlq", "replay"])))
            .await?;
        if api.json() {
            print_json(&v)?;
        } else {
            emit(&format!("replayed {} dead letters of {name}\n", text(&v["replayed"])))?;
        }
        return Ok(0);
    }
    let v = api.get(api.functions_url(&[name, "dlq"])).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let mut t = table(&["CALL ID", "ENQUEUED", "ATTEMPTS", "SOURCE", "LAST ERROR"]);
    for c in as_list(&v) {
        let last = as_list(&c["errors"])
            .last()
            .map_or("-".to_owned(), |e| truncate(&text(&e["error"]), 60));
        t.add_row(vec![
            text(&c["call_id"]),
            text(&c["enqueued_at"]),
            text(&c["attempts"]),
            text(&c["source"]),
            last,
        ]);
    }
    print_table(&mut t)?;
    Ok(0)
}

async fn versions(api: &Api, name: &str) -> anyhow::Result<i32> {
    let v = api.get(api.functions_url(&[name, "versions"])).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let mut t = table(&["VERSION", "CREATED", "ACTIVE"]);
    for ver in as_list(&v) {
        t.add_row(version_row(ver));
    }
    print_table(&mut t)?;
    Ok(0)
}

async fn calls(api: &Api, name: &str, limit: u32) -> anyhow::Result<i32> {
    let req = api
        .http
        .get(api.functions_url(&[name, "invocations"]))
        .query(&[("limit", limit)]);
    let v = api.call(req).await?;
    if api.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let records = as_list(&v);
    if records.is_empty() {
        eprintln!("no invocations of {name} recorded");
        return Ok(0);
    }
    let mut t = table(&[
        "CALL ID", "VERSION", "STARTED", "DURATION", "STATUS", "COLD", "CPU", "MEMORY", "ERROR",
    ]);
    for r in records {
        let error = match r.get("error").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => truncate(e.lines().next().unwrap_or_default(), 60),
            _ => "-".to_owned(),
        };
        t.add_row(vec![
            text(&r["call_id"]),
            text(&r["version"]),
            short_ts(&text(&r["started_at"])),
            r["duration_ms"].as_f64().map_or_else(|| "-".to_owned(), fmt_ms),
            text(&r["status"]),
            match r["cold"].as_bool() {
                Some(true) => "yes".to_owned(),
                Some(false) => "no".to_owned(),
                None => "-".to_owned(),
            },
            r["cpu_ms"].as_f64().map_or_else(|| "-".to_owned(), fmt_ms),
            r["memory_peak_bytes"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), fmt_bytes),
            error,
        ]);
    }
    print_table(&mut t)?;
    Ok(0)
}

// ------------------------------------------------------------------- output

/// A progress style from a constant template (the default style if it is invalid).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Writes `bytes` to stdout; a closed stdout becomes [`StdoutClosed`].
fn emit_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("writing to stdout")
        }
    })
}

fn emit(s: &str) -> anyhow::Result<()> {
    emit_bytes(s.as_bytes())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(v).context("formatting JSON")?;
    s.push('\n');
    emit(&s)
}

/// A borderless table with the given header (none if empty).
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(header.to_vec());
    }
    t
}

/// The table as text: columns separated by two spaces, no trailing whitespace.
fn finish_table(t: &mut Table) -> String {
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut s = t.trim_fmt();
    s.push('\n');
    s
}

fn print_table(t: &mut Table) -> anyhow::Result<()> {
    emit(&finish_table(t))
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// The elements of a JSON array (none for anything else).
fn as_list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A JSON value for a table cell: strings unquoted, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Like [`text`], but null is empty (for log lines).
fn text_raw(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => text(other),
    }
}

fn cells(obj: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| text(&obj[*k])).collect()
}

fn version_row(ver: &Value) -> Vec<String> {
    vec![
        text(&ver["version"]),
        short_ts(&text(&ver["created_at"])),
        String::from(if ver["active"].as_bool() == Some(true) { "*" } else { "" }),
    ]
}

/// An RFC 3339 timestamp without its fractional seconds.
fn short_ts(ts: &str) -> String {
    match ts.get(19..) {
        Some(rest) if ts.as_bytes().get(10) == Some(&b'T') && rest.starts_with('.') => {
            let frac = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
            format!("{}{}", &ts[..19], &rest[1 + frac..])
        }
        _ => ts.to_owned(),
    }
}

/// `s` cut to at most `max` characters (with "..." when cut).
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// A duration in milliseconds, human-readable.
fn fmt_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 60_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        let secs = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// A size in bytes, human-readable (binary units).
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_bytes(12), "12 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(6 << 20), "6.0 MiB");
        assert_eq!(fmt_ms(12.34), "12.3ms");
        assert_eq!(fmt_ms(1500.0), "1.50s");
        assert_eq!(fmt_ms(305_000.0), "5m05s");
        assert_eq!(short_ts("2025-01-02T03:04:05.123456Z"), "2025-01-02T03:04:05Z");
        assert_eq!(short_ts("2025-01-02T03:04:05+02:00"), "2025-01-02T03:04:05+02:00");
        assert_eq!(short_ts("x"), "x");
        assert_eq!(truncate("héllo", 2), "hé...");
        assert_eq!(truncate("hi", 2), "hi");
    }

    #[test]
    fn urls() {
        let g = Global {
            gateway: "http://127.0.0.1:8080".to_owned(),
            output: Output::Table,
        };
        let api = Api::new(&g).expect("api");
        assert_eq!(
            api.functions_url(&["a b", "logs"]).as_str(),
            "http://127.0.0.1:8080/api/v1/functions/a%20b/logs"
        );
        let url = append_path(api.url(&["function", "f"]), "/x/y?q=1").expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/function/f/x/y?q=1");
        let url = append_path(api.url(&["function", "f"]), "?q=1").expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/function/f?q=1");
        let url = append_path(api.url(&["function", "f"]), "").expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/function/f");

        let g = Global {
            gateway: "http://example.com/strata/".to_owned(),
            output: Output::Json,
        };
        let api = Api::new(&g).expect("api");
        assert_eq!(
            api.functions_url(&[]).as_str(),
            "http://example.com/strata/api/v1/functions"
        );
        assert!(
            Api::new(&Global {
                gateway: "ftp://x".to_owned(),
                output: Output::Json
            })
            .is_err()
        );
    }
}
