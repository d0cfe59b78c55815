//! The `strata` binary: `strata up` runs the daemon; every other subcommand is a client of a
//! running daemon's HTTP API; `stdio-adapter` is the per-call adapter run inside sandboxes.

mod cli;
mod client;
mod daemon;
mod http;
mod pack;
mod wasm;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a wasm call allocates and frees many small objects
/// (the store, WASI context, resource tables, hyper's and the gateway's buffers), and malloc
/// and free were a tenth of the HTTP threads' time. Two daemons side by side, 32 clients:
/// 27.2–27.7k against 23.2–25.1k requests/s, 56 against 63 µs of CPU a request; it holds
/// ~65 MB more after a load run (docs/benchmarks.md, "mimalloc").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::StdioAdapter { argv } => exit(client::stdio_adapter(argv)),
        cli::Command::Up(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                        .unwrap_or_else(|_| "strata=info,warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let max_body = match strata_types::units::parse_size(&args.max_body) {
                Some(b) => b as usize,
                None => {
                    eprintln!("error: --max-body {:?} is not a size (use e.g. 6MiB)", args.max_body);
                    return std::process::ExitCode::from(2);
                }
            };
            let keep_alive = match daemon::keep_alive_config(
                &args.keep_alive_policy,
                &args.keep_alive,
                args.idle_memory_budget.as_deref(),
                args.cold_start_price,
                &args.cold_start_objective,
                args.policy_time_scale,
            ) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let Some(max_layer_bytes) = strata_types::units::parse_size(&args.max_layer_size) else {
                eprintln!(
                    "error: --max-layer-size {:?} is not a size (use e.g. 1GiB)",
                    args.max_layer_size
                );
                return std::process::ExitCode::from(2);
            };
            let opts = daemon::UpOptions {
                keep_alive,
                max_layer_bytes,
                listen: args.listen,
                data: args.data,
                demo: args.demo.then_some(args.examples),
                max_body,
                queue_depth: args.queue_depth,
                async_workers: args.async_workers,
                async_queue_depth: args.async_queue_depth,
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return exit(Err(e.into())),
            };
            exit(rt.block_on(daemon::up(opts)).map(|()| 0))
        }
        command => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return exit(Err(e.into())),
            };
            exit(rt.block_on(client::run(command)))
        }
    }
}

fn exit(r: anyhow::Result<i32>) -> std::process::ExitCode {
    match r {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
