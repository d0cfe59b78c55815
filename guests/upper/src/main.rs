//! A plain `wasm32-wasip1` command module, the kind any WASI toolchain makes: the platform
//! adapts it to a component, gives it the request body on stdin and the request line in
//! `Http_*` environment variables, and answers with its stdout.
//!
//! Answers the body in upper case; a body of `fail` exits with status 3.

use std::io::{Read, Write};

fn main() {
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).expect("read stdin");
    let method = std::env::var("Http_Method").unwrap_or_default();
    eprintln!("{method} {} bytes", body.len());
    if body.trim() == "fail" {
        std::process::exit(3);
    }
    let mut out = std::io::stdout();
    write!(out, "{} {}", method, body.to_uppercase()).expect("write stdout");
}
