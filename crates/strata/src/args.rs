//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Strata: a self-hosted serverless platform.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Strata: a self-hosted serverless platform")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The daemon to talk to.
    #[arg(long, env = "STRATA_GATEWAY", default_value = "http://127.0.0.1:8080", global = true)]
    pub gateway: String,
    /// Output format of listings.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Options of `strata up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// State directory (registry, code, records, logs).
    #[arg(long, default_value = "./.strata")]
    pub data: PathBuf,
    /// Also deploy every function folder under --examples.
    #[arg(long)]
    pub demo: bool,
    /// Folder of example functions for --demo.
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    /// Largest invocation body accepted.
    #[arg(long, default_value = "6MiB")]
    pub max_body: String,
    /// Calls that may wait for an instance, per function, before 429 (1000 absorbs a burst
    /// while instances start; bounded so overload becomes 429s, not memory growth).
    #[arg(long, default_value_t = 1000)]
    pub queue_depth: usize,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Up(UpArgs),
    /// Package a function folder, upload it and activate it as a new version.
    Deploy {
        /// The folder with strata.toml.
        dir: PathBuf,
        #[command(flatten)]
        g: Global,
    },
    /// List functions.
    Ls {
        #[command(flatten)]
        g: Global,
    },
    /// Show a function: configuration, versions, instances.
    Describe {
        /// Function name.
        name: String,
        #[command(flatten)]
        g: Global,
    },
    /// Call a function and print its response.
    Invoke {
        /// Function name.
        name: String,
        /// Request body.
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// Request body from a file.
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Header, as `name:value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// HTTP method (default POST with a body, GET without).
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// Path after the function name.
        #[arg(long, default_value = "")]
        path: String,
        /// Print the call id and duration on stderr.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        g: Global,
    },
    /// Print a function's logs.
    Logs {
        /// Function name.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        g: Global,
    },
    /// Remove a function.
    Rm {
        /// Function name.
        name: String,
        #[command(flatten)]
        g: Global,
    },
    /// Activate the previous version (or --to VERSION).
    Rollback {
        /// Function name.
        name: String,
        /// Version to activate.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        g: Global,
    },
    /// List a function's versions.
    Versions {
        /// Function name.
        name: String,
        #[command(flatten)]
        g: Global,
    },
    /// Recent invocations of a function.
    Calls {
        /// Function name.
        name: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        g: Global,
    },
    /// Internal: the per-call stdio adapter run inside sandboxes.
    #[command(hide = true)]
    StdioAdapter {
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}
