//! The per-call stdio adapter (OpenFaaS classic-watchdog style), run inside a sandbox as
//! `strata stdio-adapter PROGRAM [ARGS]`: it speaks the instance protocol on fd 3 and forks
//! PROGRAM for every call, with the body on stdin and stdout as the response.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn read_frame(s: &mut UnixStream) -> anyhow::Result<Option<(Value, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut h)?;
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(Some((serde_json::from_slice(&h).context("frame header")?, body)))
}

fn write_frame(s: &mut UnixStream, header: &Value, body: &[u8]) -> anyhow::Result<()> {
    let h = serde_json::to_vec(header)?;
    let mut out = Vec::with_capacity(8 + h.len() + body.len());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    s.write_all(&out)?;
    Ok(())
}

/// `Http_X_Custom_Header` from `x-custom-header`.
fn env_name(header: &str) -> String {
    let parts: Vec<String> = header
        .split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next().map_or(String::new(), |f| {
                f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect()
            })
        })
        .collect();
    format!("Http_{}", parts.join("_"))
}

/// Serve calls until shutdown or end of stream.
pub fn stdio_adapter(argv: Vec<String>) -> anyhow::Result<i32> {
    let Some((program, args)) = argv.split_first() else {
        bail!("stdio-adapter needs a program to run")
    };
    // SAFETY: fd 3 is the control socket the platform passes to every instance; nothing else
    // in this process owns it.
    let mut ctl = unsafe { UnixStream::from_raw_fd(3) };
    write_frame(&mut ctl, &json!({"t": "ready"}), b"")?;
    while let Some((h, body)) = read_frame(&mut ctl)? {
        match h["t"].as_str() {
            Some("invoke") => {}
            Some("shutdown") => return Ok(0),
            _ => continue,
        }
        let id = h["id"].as_str().unwrap_or_default().to_owned();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("Http_Method", h["method"].as_str().unwrap_or("GET"));
        cmd.env("Http_Path", h["path"].as_str().unwrap_or("/"));
        cmd.env("Http_Query", h["query"].as_str().unwrap_or(""));
        for pair in h["headers"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) {
                cmd.env(env_name(k), v);
            }
        }
        let result = cmd.spawn().and_then(|mut child| {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // Feed stdin from a thread so a program that writes before reading cannot
            // deadlock against us.
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&body);
            });
            let out = child.wait_with_output();
            let _ = feeder.join();
            out
        });
        match result {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    write_frame(
                        &mut ctl,
                        &json!({"t": "log", "id": id, "stream": "stderr", "line": line}),
                        b"",
                    )?;
                }
                let (status, body) = if out.status.success() {
                    (200, out.stdout)
                } else {
                    let mut b = out.stdout;
                    b.extend_from_slice(&out.stderr);
                    (500, b)
                };
                let header = json!({"t": "response", "id": id, "status": status,
                    "headers": [["content-type", "text/plain; charset=utf-8"]]});
                write_frame(&mut ctl, &header, &body)?;
            }
            Err(e) => {
                write_frame(
                    &mut ctl,
                    &json!({"t": "error", "id": id, "message": format!("running {program}: {e}")}),
                    b"",
                )?;
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_env_names_follow_the_classic_watchdog() {
        assert_eq!(super::env_name("x-custom-header"), "Http_X_Custom_Header");
        assert_eq!(super::env_name("content-type"), "Http_Content_Type");
    }
}
