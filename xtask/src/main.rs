//! Repository automation: `cargo xtask test | demo | bench | examples`.
//!
//! Kept as Rust (not a shell-script zoo) so it runs wherever cargo does.

mod bench;
mod bench_async;
mod bench_cold;
mod bench_wasm;
mod live_replay;
mod simulate;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("xtask lives in the repo")
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
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
    // pip for the interpreter sandboxes run: dependency layers (requirements.txt) are
    // installed with it.
    let has_pip = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pip {
        missing.push("python3-pip");
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

/// The WebAssembly guests in `guests/` (their own workspace), built for wasm32-wasip2 (and
/// `upper` and `preinit` for wasip1); the hello example is copied into `examples/hello-wasm`.
fn build_wasm_guests() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    let installed = String::from_utf8_lossy(&installed.stdout).into_owned();
    for target in ["wasm32-wasip2", "wasm32-wasip1"] {
        if !installed.lines().any(|l| l.trim() == target) {
            run(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    let guests = repo().join("guests");
    // Components (wasi:http) for wasip2; `upper` is a plain wasip1 command module.
    let build = |target: &str, packages: &[&str]| {
        let mut cargo = Command::new("cargo");
        cargo.current_dir(&guests).env_remove("CARGO_TARGET_DIR").args([
            "build",
            "--release",
            "-j2",
            "--target",
            target,
        ]);
        for p in packages {
            cargo.args(["-p", p]);
        }
        run(&mut cargo)
    };
    build("wasm32-wasip2", &["hello", "probe"])?;
    build("wasm32-wasip1", &["upper", "preinit"])?;
    let out = guests.join("target/wasm32-wasip2/release");
    std::fs::copy(out.join("hello.wasm"), repo().join("examples/hello-wasm/hello.wasm"))?;
    // An example only (no test needs it): a PyPI outage must not fail the build.
    if let Err(e) = build_python_component() {
        eprintln!("xtask: warning: examples/hello-wasm-python not built: {e:#}");
    }
    Ok(())
}

/// `examples/hello-wasm-python`: componentize-py (PyPI) makes a wasi:http component from
/// `app.py`, with the WASI HTTP WIT files of the wasmtime-wasi-http crate we build against.
/// Skipped when the component is newer than its source.
fn build_python_component() -> anyhow::Result<()> {
    let dir = repo().join("examples/hello-wasm-python");
    let (src, out) = (dir.join("app.py"), dir.join("hello.wasm"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(s), Some(o)) = (modified(&src), modified(&out))
        && o > s
    {
        return Ok(());
    }
    let tool = componentize_py()?;
    let wit = wasi_http_wit()?;
    let scratch = tempfile::tempdir()?;
    run(Command::new(&tool)
        .current_dir(&dir)
        // Bytecode caches stay out of the package.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-d")
        .arg(&wit)
        .args(["-w", "wasi:http/proxy@0.2.12", "componentize", "app", "-o"])
        .arg(scratch.path().join("hello.wasm")))?;
    std::fs::copy(scratch.path().join("hello.wasm"), &out)?;
    Ok(())
}

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Every file called `name` in the directories of `PATH`, in order.
pub(crate) fn on_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// The componentize-py command, installed with pip when missing.
fn componentize_py() -> anyhow::Result<PathBuf> {
    let found = |name: &str| on_path(name).into_iter().next();
    if let Some(p) = found("componentize-py") {
        return Ok(p);
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "-q"])
            .args(extra)
            .arg(COMPONENTIZE_PY)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !pip(&[]) && !pip(&["--break-system-packages"]) {
        // Debian's python3 comes without pip.
        run(Command::new("apt-get").args(["install", "-y", "-qq", "python3-pip"]))?;
        if !pip(&["--break-system-packages"]) {
            bail!("could not install {COMPONENTIZE_PY} with pip");
        }
    }
    found("componentize-py")
        .or_else(|| Some(PathBuf::from("/usr/local/bin/componentize-py")).filter(|p| p.is_file()))
        .context("componentize-py installed but not on PATH")
}

/// The `wit/` folder of the wasmtime-wasi-http crate in the cargo registry.
fn wasi_http_wit() -> anyhow::Result<PathBuf> {
    let meta = Command::new("cargo")
        .current_dir(repo())
        .args(["metadata", "--format-version", "1"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout).context("cargo metadata")?;
    let manifest = v["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wasmtime-wasi-http")
        .and_then(|p| p["manifest_path"].as_str())
        .context("wasmtime-wasi-http is not in the dependency graph")?;
    Ok(Path::new(manifest).with_file_name("wit"))
}

/// What a clean clone's `cargo xtask test` takes on disk at most (target/, the guests' builds,
/// the tests' scratch): 2.2 GB measured on a clean clone (2026-11-27), with room to spare.
const TEST_DISK_BYTES: u64 = 3 << 30;

/// Bytes free on the file system holding `path`, from `df` (coreutils).
fn disk_free(path: &Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.lines().nth(1)?.trim().parse().ok()
}

fn test() -> anyhow::Result<()> {
    let root = repo();
    // A build that runs out of disk fails deep in the linker ("Bus error"); say why up front.
    if let Some(free) = disk_free(&root).filter(|&f| f < TEST_DISK_BYTES) {
        eprintln!(
            "warning: {} MiB free on {}; cargo xtask test needs about {} MiB",
            free >> 20,
            root.display(),
            TEST_DISK_BYTES >> 20
        );
    }
    ensure_packages(false)?;
    build_examples()?;
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
        Some("bench-cold") => {
            ensure_packages(false)?;
            bench_cold::run(&repo(), &args[1..])
        }
        Some("replay") => {
            ensure_packages(false)?;
            live_replay::run(&repo(), &args[1..])
        }
        Some("bench-wasm") => {
            ensure_packages(true)?;
            build_examples()?;
            bench_wasm::run(&repo(), &args[1..])
        }
        Some("simulate") => simulate::run(&repo(), &args[1..]),
        Some("bench") => {
            ensure_packages(true)?;
            build_examples()?;
            bench::run(&repo(), &args[1..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test | demo | bench [--quick] | bench-async [--quick] | bench-cold [--quick] | bench-wasm [--quick] | simulate | replay [--quick] | examples | deps [--bench]>"
            );
            std::process::exit(2)
        }
    }
}
