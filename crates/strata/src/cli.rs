//! Command-line interface of the `strata` binary (clap derive definitions).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Strata: a self-hosted serverless platform.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Strata: a self-hosted serverless platform")]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The `strata` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground
    Up(UpArgs),

    /// Run the [build] command of a function folder's strata.toml, as deploy does first
    Build {
        /// The function folder
        dir: PathBuf,
    },

    /// Build (its strata.toml's [build], if any), package and deploy a function folder
    Deploy {
        /// The function folder
        dir: PathBuf,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// List the deployed functions
    Ls {
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Show a function's configuration, versions and instances
    Describe {
        /// The function's name
        name: String,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Call a function through the gateway and print its response body
    Invoke {
        /// The function's name
        name: String,
        /// Request body
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the request body from a file ("-" for stdin)
        #[arg(long, value_name = "FILE")]
        data_file: Option<PathBuf>,
        /// Request header, as "Name: value" (repeatable)
        #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
        header: Vec<String>,
        /// HTTP method [default: POST if a body is given, else GET]
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// Path (and query string) appended to the function's URL, e.g. "/items?id=3"
        #[arg(long, default_value = "", hide_default_value = true)]
        path: String,
        /// Queue the call instead of waiting for its result (POST /async-function/NAME)
        #[arg(long)]
        r#async: bool,
        /// Print the response status, call id and duration on stderr
        #[arg(short, long)]
        verbose: bool,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Print a function's logs
    Logs {
        /// The function's name
        name: String,
        /// Keep printing new lines as they arrive (Ctrl-C ends)
        #[arg(short, long)]
        follow: bool,
        /// Maximum number of lines fetched per request
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Delete a function, all its versions and instances
    Rm {
        /// The function's name
        name: String,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Activate an earlier version of a function
    Rollback {
        /// The function's name
        name: String,
        /// The version to activate [default: the one before the active version]
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// List a function's versions
    Versions {
        /// The function's name
        name: String,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Show one asynchronous call: state, attempts, result
    Call {
        /// The call id (X-Call-Id of the 202 answer)
        id: String,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Show a function's dead-letter list, or replay it
    Dlq {
        /// The function's name
        name: String,
        /// Put every dead letter back on the queue with fresh attempts
        #[arg(long)]
        replay: bool,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Show a function's recent invocations
    Calls {
        /// The function's name
        name: String,
        /// Maximum number of invocations shown
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Options shared by all client commands.
        #[command(flatten)]
        g: Global,
    },

    /// Internal: the per-call stdio adapter run inside sandboxes (hidden)
    #[command(hide = true)]
    StdioAdapter {
        /// The command (and its arguments) run once per call
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "CMD"
        )]
        argv: Vec<String>,
    },
}

/// Options of `strata up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the gateway and API listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory holding the daemon's state (functions, versions, logs)
    #[arg(long, default_value = "./.strata")]
    pub data: PathBuf,
    /// Deploy the example functions at startup
    #[arg(long)]
    pub demo: bool,
    /// Directory of the example functions deployed by --demo
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    /// Largest accepted request body (e.g. "6MiB", "512KiB")
    #[arg(long, default_value = "6MiB")]
    pub max_body: String,
    /// Calls that may wait for an instance, per function, before the daemon answers 429
    #[arg(long, default_value_t = 1000)]
    pub queue_depth: usize,
    /// Asynchronous calls running at once (their own limit, so async load cannot starve
    /// synchronous calls)
    #[arg(long, default_value_t = 16)]
    pub async_workers: usize,
    /// Accepted asynchronous calls per function not yet finished before publishers get 429
    #[arg(long, default_value_t = 10_000)]
    pub async_queue_depth: usize,
    /// Which idle instances to keep: "manifest" (each function's `keep_alive`), or a
    /// daemon-wide policy: "fixed" (10 minutes, or --keep-alive), "hybrid" (the idle-time
    /// histogram of "Serverless in the Wild"), "greedy-dual" (FaasCache) or "hazard" (hold an
    /// instance while its chance of a call is worth its memory, see --cold-start-price)
    #[arg(long, default_value = "manifest")]
    pub keep_alive_policy: String,
    /// The fixed policy's keep-alive (e.g. "10m")
    #[arg(long, default_value = "10m")]
    pub keep_alive: String,
    /// The hazard policy's price of a cold start in idle memory, MB·minutes: an idle instance
    /// is held while memory / (chance of a call in the next minute) is at most this
    #[arg(long, default_value_t = 3_500)]
    pub cold_start_price: u64,
    /// What the hazard policy minimises: "calls" (cold starts per call) or "functions" (each
    /// function's share of cold calls, which spends memory on rarely called functions)
    #[arg(long, default_value = "calls")]
    pub cold_start_objective: String,
    /// Most memory idle instances may hold in all under a daemon-wide policy (e.g. "2GiB");
    /// over it the policy evicts. Default: no limit
    #[arg(long)]
    pub idle_memory_budget: Option<String>,
    /// Largest dependency layer a deploy may install (requirements.txt), e.g. "1GiB"
    #[arg(long, default_value = "1GiB")]
    pub max_layer_size: String,
    /// Policy seconds per real second (a trace replay runs the daemon fast-forwarded)
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub policy_time_scale: f64,
}

/// Options shared by the client commands.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// URL of the Strata daemon
    #[arg(long, env = "STRATA_GATEWAY", default_value = "http://127.0.0.1:8080", global = true)]
    pub gateway: String,
    /// Output format
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

/// Output format of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables and messages
    Table,
    /// The daemon's JSON, pretty-printed
    Json,
}
