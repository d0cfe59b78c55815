//! The tier alone behind a minimal HTTP/1 server: no gateway, no records, no logs, no
//! metrics. What a wasm call plus HTTP costs on this machine: the ceiling the daemon's
//! figures are compared with (`cargo xtask bench-wasm` runs it beside the daemon). One
//! single-threaded runtime per core, each with its own `SO_REUSEPORT` listener (`PERCORE=0`:
//! one work-stealing runtime instead), and mimalloc, as the daemon has.
//!
//! `cargo xtask examples && cargo run --release -p strata-sandbox-wasm --example serve -- 127.0.0.1:7002 [component.wasm]`,
//! then `POST /` with a name.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use strata_sandbox_wasm::{EngineConfig, HttpCall, Limits, WasmEngine, WasmFunction};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7002".into())
        .parse()
        .expect("an address such as 127.0.0.1:7002");
    let wasm = std::env::args().nth(2).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/target/wasm32-wasip2/release/hello.wasm"),
        PathBuf::from,
    );
    let engine = WasmEngine::new(EngineConfig::new(std::env::temp_dir().join("strata-serve-example"))).expect("engine");
    let limits = Limits::default();
    let f = Arc::new(engine.load(&wasm, limits).expect("load"));
    if std::env::var("PERCORE").as_deref() == Ok("0") {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move { accept(tokio::net::TcpListener::bind(addr).await.expect("bind"), f).await });
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                    sock.set_reuseport(true).expect("SO_REUSEPORT");
                    sock.bind(addr).expect("bind");
                    accept(sock.listen(1024).expect("listen"), f).await
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn accept(listener: tokio::net::TcpListener, f: Arc<WasmFunction>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let f = Arc::clone(&f);
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let f = Arc::clone(&f);
                async move {
                    let (parts, body) = req.into_parts();
                    let call = HttpCall {
                        method: parts.method.to_string(),
                        path_with_query: parts
                            .uri
                            .path_and_query()
                            .map_or_else(|| "/".into(), ToString::to_string),
                        headers: parts
                            .headers
                            .iter()
                            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                            .collect(),
                        body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
                    };
                    let (status, body) = match f.call(call).await.result {
                        Ok(r) => (r.status, r.body),
                        Err(e) => (502, Bytes::from(e.to_string())),
                    };
                    let mut resp = hyper::Response::new(Full::new(body));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
