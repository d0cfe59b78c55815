//! Repository automation: `cargo xtask test | demo | bench | examples`.
//!
//! Kept as Rust (not a shell-script zoo) so it runs wherever cargo does.

mod bench;
mod bench_async;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("xtask lives in the repo")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn have(bin: &str) -> bool {
    Path::new(bin).exists()
}

/// Install what the tests and benchmarks need that a fresh machine lacks.
fn ensure_packages(with_bench_tools: bool) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for (bin, pkg) in [
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/node", "nodejs"),
        ("/usr/bin/gcc", "gcc"),
    ] {
        if !have(bin) {
            missing.push(pkg);
        }
    }
    // libc.a for the static test binary of the sandbox benchmark.
    if !have("/usr/lib/x86_64-linux-gnu/libc.a") {
        missing.push("libc6-dev");
    }
    if with_bench_tools {
        for (bin, pkg) in [("/usr/bin/crun", "crun"), ("/usr/bin/wrk", "wrk")] {
            if !have(bin) {
                missing.push(pkg);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Build the example functions that need compiling (the C protocol example).
fn build_examples() -> anyhow::Result<()> {
    let dir = repo().join("examples/hello-c");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(dir.join("hello"))
        .arg(dir.join("main.c")))?;
    build_wasm_guests()
}

/// The WebAssembly guests in `guests/` (their own workspace), built for wasm32-wasip2; the
/// hello example is copied into `examples/hello-wasm`.
fn build_wasm_guests() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    let guests = repo().join("guests");
    run(Command::new("cargo")
        .current_dir(&guests)
        .env_remove("CARGO_TARGET_DIR")
        .args(["build", "--release", "--target", "wasm32-wasip2", "-j2"]))?;
    let out = guests.join("target/wasm32-wasip2/release");
    std::fs::copy(out.join("hello.wasm"), repo().join("examples/hello-wasm/hello.wasm"))?;
    Ok(())
}

fn test() -> anyhow::Result<()> {
    ensure_packages(false)?;
    build_examples()?;
    let root = repo();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--workspace", "--all-targets", "-j2"]))?;
    run(Command::new("/usr/bin/python3")
        .current_dir(&root)
        .arg("runtimes/test_runtimes.py"))?;
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["test", "--workspace", "-j2"]))?;
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    ensure_packages(false)?;
    build_examples()?;
    let root = repo();
    run(Command::new("cargo").current_dir(&root).args([
        "run",
        "--release",
        "-j2",
        "-p",
        "strata",
        "--",
        "up",
        "--demo",
    ]))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("examples") => build_examples(),
        Some("deps") => ensure_packages(args.iter().any(|a| a == "--bench")),
        Some("bench-async") => {
            ensure_packages(false)?;
            bench_async::run(&repo(), &args[1..])
        }
        Some("bench") => {
            ensure_packages(true)?;
            build_examples()?;
            bench::run(&repo(), &args[1..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test | demo | bench [--quick] | bench-async [--quick] | examples | deps [--bench]>"
            );
            std::process::exit(2)
        }
    }
}
