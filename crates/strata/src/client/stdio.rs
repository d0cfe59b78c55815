//! `strata stdio-adapter CMD [ARGS...]`: runs inside a sandbox and turns any
//! stdin/stdout program into a Strata function (the OpenFaaS "classic
//! watchdog" model: one process per call).
//!
//! It speaks the instance protocol on fd 3, a connected unix stream socket.
//! Every message is a frame: `u32 BE header length, JSON header, u32 BE body
//! length, body`. The adapter sends `{"t":"ready"}` at start, then for every
//! `{"t":"invoke",...}` frame runs the command with the request body on stdin,
//! forwards each stderr line as a `{"t":"log",...}` frame and answers with a
//! `{"t":"response",...}` frame whose body is the command's stdout. A
//! `{"t":"shutdown"}` frame or the end of the channel ends the adapter.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The control channel's file descriptor.
const CTRL_FD: RawFd = 3;
/// Largest accepted frame header.
const MAX_HEADER: usize = 16 << 20;
/// Largest accepted frame body.
const MAX_BODY: usize = 1 << 30;
/// Bodies up to this size are written together with their header.
const SMALL_BODY: usize = 64 << 10;

/// Runs the stdio adapter for the command `argv` (program and arguments) and
/// returns the process exit code: 0 when the platform shuts the adapter down
/// or closes the control channel.
pub fn stdio_adapter(argv: Vec<String>) -> anyhow::Result<i32> {
    let Some((program, args)) = argv.split_first() else {
        bail!("stdio-adapter: no command given (usage: strata stdio-adapter -- CMD [ARGS...])");
    };
    check_ctrl_fd()?;
    // SAFETY: the platform starts the adapter with fd 3 open as the control
    // channel (checked above through /proc when it is mounted) and nothing
    // else in this process uses fd 3, so this stream becomes its only owner.
    let inherited = unsafe { UnixStream::from_raw_fd(CTRL_FD) };
    inherited
        .local_addr()
        .context("fd 3 (the control channel) is not a unix socket")?;
    // Move the channel to a close-on-exec descriptor (try_clone dups with
    // F_DUPFD_CLOEXEC) and close fd 3, so that the commands run for the calls
    // do not inherit it.
    let ctrl = inherited
        .try_clone()
        .context("duplicating fd 3 (the control channel)")?;
    drop(inherited);

    match serve(&ctrl, program, args) {
        Ok(()) => Ok(0),
        // The platform closed the channel: nobody is left to answer to.
        Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context("stdio-adapter")),
    }
}

/// Fails if /proc shows that fd 3 is not open; passes when /proc is not mounted.
fn check_ctrl_fd() -> anyhow::Result<()> {
    match std::fs::symlink_metadata(format!("/proc/self/fd/{CTRL_FD}")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new("/proc/self/fd").is_dir() => {
            bail!("stdio-adapter: fd 3 (the control channel) is not open")
        }
        _ => Ok(()),
    }
}

/// Answers frames until a shutdown frame or the end of the channel.
fn serve(ctrl: &UnixStream, program: &str, args: &[String]) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, ctrl);
    send_frame(ctrl, &json!({"t": "ready"}), &[])?;
    while let Some((header, body)) = read_frame(&mut reader)? {
        match header.get("t").and_then(Value::as_str) {
            Some("invoke") => invoke(ctrl, program, args, &header, body)?,
            Some("shutdown") => break,
            other => eprintln!("strata stdio-adapter: ignoring a frame of type {other:?}"),
        }
    }
    Ok(())
}

/// Reads one frame; `None` at the end of the channel.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(Value, Vec<u8>)>> {
    let mut len = [0u8; 4];
    if !read_full(r, &mut len)? {
        return Ok(None);
    }
    let header_len = u32::from_be_bytes(len) as usize;
    if header_len > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame header of {header_len} bytes is too large"),
        ));
    }
    let mut header = vec![0u8; header_len];
    if !read_full(r, &mut header)? || !read_full(r, &mut len)? {
        return Ok(None);
    }
    let body_len = u32::from_be_bytes(len) as usize;
    if body_len > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame body of {body_len} bytes is too large"),
        ));
    }
    let mut body = vec![0u8; body_len];
    if !read_full(r, &mut body)? {
        return Ok(None);
    }
    let header = serde_json::from_slice(&header)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame header: {e}")))?;
    Ok(Some((header, body)))
}

/// Fills `buf`; `false` if the channel ended (or was reset) first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes one frame.
fn send_frame(mut w: &UnixStream, header: &Value, body: &[u8]) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    let header_len = u32::try_from(header.len()).map_err(|_| io::Error::other("frame header too large"))?;
    let body_len = u32::try_from(body.len()).map_err(|_| io::Error::other("response body too large (4 GiB max)"))?;
    let small = body.len() <= SMALL_BODY;
    let mut buf = Vec::with_capacity(8 + header.len() + if small { body.len() } else { 0 });
    buf.extend_from_slice(&header_len.to_be_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&body_len.to_be_bytes());
    if small {
        buf.extend_from_slice(body);
        w.write_all(&buf)
    } else {
        w.write_all(&buf)?;
        w.write_all(body)
    }
}

fn response_header(id: &Value, status: u16) -> Value {
    json!({
        "t": "response",
        "id": id,
        "status": status,
        "headers": [["content-type", "text/plain; charset=utf-8"]],
    })
}

fn log_header(id: &Value, line: &str) -> Value {
    json!({"t": "log", "id": id, "stream": "stderr", "line": line})
}

/// Runs the command for one invoke frame and sends its log and response frames.
fn invoke(ctrl: &UnixStream, program: &str, args: &[String], msg: &Value, body: Vec<u8>) -> io::Result<()> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let text = |key: &str, default: &'static str| msg.get(key).and_then(Value::as_str).unwrap_or(default).to_owned();

    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let env = strata_types::cgi::request_env(
        &text("method", "GET"),
        &text("path", "/"),
        &text("query", ""),
        &request_headers(msg),
    );
    cmd.envs(env);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("strata stdio-adapter: cannot run {program:?}: {e}");
            send_frame(ctrl, &log_header(&id, &message), &[])?;
            return send_frame(ctrl, &response_header(&id, 500), message.as_bytes());
        }
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let (stdout_result, (stderr_bytes, log_result)) = std::thread::scope(|s| {
        // Feed stdin and drain stderr concurrently with reading stdout, so that
        // no pipe can fill up and block the command.
        let writer = s.spawn(move || {
            if let Some(mut stdin) = stdin {
                // The command may exit without reading its input: ignore EPIPE.
                let _ = stdin.write_all(&body);
            }
        });
        let id = &id;
        let logger = s.spawn(move || forward_stderr(ctrl, id, stderr));
        let mut out = Vec::new();
        let stdout_result = match stdout {
            Some(mut stdout) => stdout.read_to_end(&mut out).map(|_| out),
            None => Ok(out),
        };
        // Neither thread panics; a panic would only lose its side output.
        let _ = writer.join();
        let logged = logger
            .join()
            .unwrap_or_else(|_| (Vec::new(), Err(io::Error::other("stderr reader panicked"))));
        (stdout_result, logged)
    });
    let status = child.wait()?;
    log_result?;

    let (status, body) = match stdout_result {
        Ok(out) if status.success() => (200, out),
        Ok(mut out) => {
            out.extend_from_slice(&stderr_bytes);
            (500, out)
        }
        Err(e) => {
            let mut out = format!("strata stdio-adapter: reading the output of {program:?}: {e}\n").into_bytes();
            out.extend_from_slice(&stderr_bytes);
            (500, out)
        }
    };
    send_frame(ctrl, &response_header(&id, status), &body)
}

/// Sends each line of `stderr` as a log frame; returns all of stderr, and the
/// first error sending a frame (stderr is still drained after it).
fn forward_stderr(ctrl: &UnixStream, id: &Value, stderr: Option<ChildStderr>) -> (Vec<u8>, io::Result<()>) {
    let mut all = Vec::new();
    let mut result = Ok(());
    let Some(stderr) = stderr else {
        return (all, result);
    };
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        all.extend_from_slice(&line);
        if result.is_ok() {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            result = send_frame(ctrl, &log_header(id, &String::from_utf8_lossy(text)), &[]);
        }
    }
    (all, result)
}

/// The request headers of an invoke frame; malformed pairs are skipped.
fn request_headers(msg: &Value) -> Vec<(String, String)> {
    let pairs = msg
        .get("headers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    pairs
        .iter()
        .filter_map(|pair| {
            let name = pair.get(0)?.as_str()?;
            let value = pair.get(1)?.as_str()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_header_pairs_are_skipped() {
        let msg = json!({"headers": [["x-a", "1"], ["bad"], ["x-b", 2], ["x-a", "2"]]});
        assert_eq!(
            request_headers(&msg),
            vec![("x-a".to_owned(), "1".to_owned()), ("x-a".to_owned(), "2".to_owned())]
        );
    }

    #[test]
    fn frames_round_trip() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_frame(&a, &json!({"t": "x", "n": 1}), b"body").expect("send");
        send_frame(&a, &json!({"t": "y"}), &vec![7u8; SMALL_BODY + 1]).expect("send");
        drop(a);
        let mut r = BufReader::new(&b);
        let (h, body) = read_frame(&mut r).expect("read").expect("frame");
        assert_eq!(h, json!({"t": "x", "n": 1}));
        assert_eq!(body, b"body");
        let (h, body) = read_frame(&mut r).expect("read").expect("frame");
        assert_eq!(h["t"], "y");
        assert_eq!(body.len(), SMALL_BODY + 1);
        assert!(read_frame(&mut r).expect("read").is_none());
    }

    #[test]
    fn invoke_runs_the_command() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let args = [
            "-c".to_owned(),
            "echo \"$Http_Method $Http_X_Name\"; cat; echo oops >&2".to_owned(),
        ];
        let msg =
            json!({"t": "invoke", "id": "c1", "method": "PUT", "path": "/", "query": "", "headers": [["x-name", "v"]]});
        invoke(&a, "/bin/sh", &args, &msg, b"in".to_vec()).expect("invoke");
        let mut r = BufReader::new(&b);
        let (log, _) = read_frame(&mut r).expect("read").expect("log frame");
        assert_eq!(log, json!({"t": "log", "id": "c1", "stream": "stderr", "line": "oops"}));
        let (resp, body) = read_frame(&mut r).expect("read").expect("response frame");
        assert_eq!(resp["status"], 200);
        assert_eq!(resp["id"], "c1");
        assert_eq!(body, b"PUT v\nin");

        let args = ["-c".to_owned(), "echo out; echo err >&2; exit 3".to_owned()];
        invoke(&a, "/bin/sh", &args, &msg, Vec::new()).expect("invoke");
        let (log, _) = read_frame(&mut r).expect("read").expect("log frame");
        assert_eq!(log["line"], "err");
        let (resp, body) = read_frame(&mut r).expect("read").expect("response frame");
        assert_eq!(resp["status"], 500);
        assert_eq!(body, b"out\nerr\n");
    }
}
