//! A guest that misbehaves on request, for the WebAssembly tier's end-to-end tests.
//!
//! - `/echo`: the body back, unchanged; method, path and query in `x-method`, `x-path` and
//!   `x-query`; every request header back with an `x-echo-` prefix.
//! - `/counter`: increments a global and answers its value (always 1 with fresh instances).
//! - `/loop`: spins forever.
//! - `/grow?mb=N`: allocates N MiB, touching every page; answers how much it got.
//! - `/bomb`: allocates until the allocator fails (a trap, or an abort).
//! - `/trap`: executes `unreachable`.
//! - `/log`: prints one line to stdout and one to stderr.
//! - `/fetch?url=http://host:port/path`: GETs the URL and answers its status and body, or
//!   502 with the `wasi:http` error.
//! - `/env?name=K`: the value of environment variable K.
//! - `/ls?dir=D`: lists a directory (there is none unless one was granted).
//! - `/hoard?n=N&kb=K`: makes N `fields` resources, each holding one K KiB value, and holds
//!   them all; answers how many it holds and the first refusal, if any (a value past the
//!   host's size limit, or no room left for resources, traps the call instead).
//! - `/budget`: how many bytes the host lets one write to an outgoing body carry
//!   (`check-write` on a fresh response body).

use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme};

wasip2::http::proxy::export!(Probe);

struct Probe;

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let req = common::read(request);
        match req.path() {
            "/echo" => {
                let mut headers: Vec<(String, Vec<u8>)> = vec![
                    ("x-method".into(), req.method.clone().into_bytes()),
                    ("x-path".into(), req.path().as_bytes().to_vec()),
                    ("x-query".into(), req.query().as_bytes().to_vec()),
                ];
                for (k, v) in &req.headers {
                    headers.push((format!("x-echo-{k}"), v.clone()));
                }
                let refs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                common::respond(out, 200, &refs, &req.body);
            }
            "/counter" => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
                common::respond(out, 200, &[], n.to_string().as_bytes());
            }
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/grow" => {
                let mb: usize = req.param("mb").and_then(|m| m.parse().ok()).unwrap_or(1);
                let mut held: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mb {
                    let mut v = Vec::new();
                    if v.try_reserve_exact(1 << 20).is_err() {
                        break;
                    }
                    v.resize(1 << 20, 1u8);
                    held.push(v);
                }
                let text = format!("{} MiB", held.len());
                common::respond(out, 200, &[], text.as_bytes());
            }
            "/bomb" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![1u8; 1 << 20]);
                }
            }
            "/trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                panic!("trap");
            }
            "/log" => {
                println!("to stdout");
                eprintln!("to stderr");
                common::respond(out, 200, &[], b"logged");
            }
            "/fetch" => match fetch(req.param("url").unwrap_or("")) {
                Ok((status, body)) => {
                    let mut text = format!("{status} ").into_bytes();
                    text.extend_from_slice(&body);
                    common::respond(out, 200, &[], &text);
                }
                Err(e) => common::respond(out, 502, &[], e.as_bytes()),
            },
            "/env" => {
                let value = std::env::var(req.param("name").unwrap_or("")).unwrap_or_default();
                common::respond(out, 200, &[], value.as_bytes());
            }
            "/ls" => match std::fs::read_dir(req.param("dir").unwrap_or("/")) {
                Ok(entries) => {
                    let names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    common::respond(out, 200, &[], names.join("\n").as_bytes());
                }
                Err(e) => common::respond(out, 500, &[], e.to_string().as_bytes()),
            },
            "/hoard" => {
                let n: usize = req.param("n").and_then(|v| v.parse().ok()).unwrap_or(1);
                let kb: usize = req.param("kb").and_then(|v| v.parse().ok()).unwrap_or(1);
                let value = vec![b'x'; kb << 10];
                let mut held = Vec::new();
                let mut refused = String::new();
                for _ in 0..n {
                    let fields = Fields::new();
                    if let Err(e) = fields.append("x-hoard", &value) {
                        refused = format!("; refused: {e:?}");
                        break;
                    }
                    held.push(fields);
                }
                let text = format!("held {}{refused}", held.len());
                common::respond(out, 200, &[], text.as_bytes());
            }
            "/budget" => {
                let response = OutgoingResponse::new(Fields::new());
                let text = match response.body().and_then(|b| b.write().map(|w| (b, w))) {
                    Ok((body, stream)) => {
                        let budget = stream.check_write();
                        drop(stream);
                        drop(body);
                        format!("{budget:?}")
                    }
                    Err(()) => "no body".to_owned(),
                };
                drop(response);
                common::respond(out, 200, &[], text.as_bytes());
            }
            _ => common::respond(out, 404, &[], b"no such probe"),
        }
    }
}

/// GET `url` (`http://authority/path`) through the host.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(&path)).map_err(|()| "path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map(common::read_body).unwrap_or_default();
    Ok((status, body))
}
