//! The hello example on the WebAssembly tier: `POST /` with a name answers `Hello, <name>!`;
//! `/json` echoes the request as JSON.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let req = common::read(request);
        if req.path() == "/json" {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
                .collect();
            let body = serde_json::from_slice::<serde_json::Value>(&req.body)
                .unwrap_or_else(|_| String::from_utf8_lossy(&req.body).into_owned().into());
            let echo = serde_json::json!({
                "method": req.method,
                "path": req.path(),
                "query": req.query(),
                "headers": headers,
                "body": body,
            });
            let text = serde_json::to_vec(&echo).expect("JSON values serialise");
            common::respond(out, 200, &[("content-type", b"application/json")], &text);
            return;
        }
        let name = String::from_utf8_lossy(&req.body);
        let name = if name.trim().is_empty() { "world".into() } else { name };
        println!("greeting {}", name.trim());
        let text = format!("Hello, {}!\n", name.trim());
        common::respond(out, 200, &[("content-type", b"text/plain")], text.as_bytes());
    }
}
