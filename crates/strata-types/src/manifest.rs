//! The developer manifest `strata.toml` and its locked, validated form.
//!
//! Parsing goes through a generic TOML table so every error names the file, the field and
//! the offending value on one line ("strata.toml: memory = \"12XB\": not a size …"), which
//! serde's derive errors do not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration_ms, format_size, parse_duration_ms, parse_size};

/// A language runtime (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// CPython 3, `module:function` handlers.
    Python,
    /// Node.js, `module:export` handlers.
    Node,
    /// Any executable.
    Exec,
    /// A `wasi:http/proxy` WebAssembly component; the handler is its path.
    Wasm,
}

impl Runtime {
    /// Name as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Exec => "exec",
            Runtime::Wasm => "wasm",
        }
    }
}

/// How an `exec` function is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    /// The executable speaks the instance protocol (docs/protocol.md) and serves many calls.
    #[default]
    Protocol,
    /// One process per call: the body is its stdin, its stdout the response.
    Stdio,
}

/// Network access of the function's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback only.
    #[default]
    None,
    /// The host's network.
    Host,
}

/// The locked form of a manifest: validated, units resolved, immutable per version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// `[a-z0-9-]`, 1 to 63 characters, not starting or ending with `-`.
    pub name: String,
    /// Runtime.
    pub runtime: Runtime,
    /// python/node: `module:function`; exec: path of the executable in the code folder.
    pub handler: String,
    /// exec only: protocol or per-call stdio.
    pub mode: ExecMode,
    /// Memory limit of one instance, bytes.
    pub memory_bytes: u64,
    /// Per-invocation timeout, milliseconds.
    pub timeout_ms: u64,
    /// Concurrent calls one instance serves.
    pub concurrency: u32,
    /// Instances kept warm always.
    pub min_instances: u32,
    /// Upper bound on instances.
    pub max_instances: u32,
    /// Idle time before an instance is stopped, milliseconds; 0 = never reused.
    pub keep_alive_ms: u64,
    /// Network access.
    pub network: Network,
    /// CPU quota of one instance in millicores, if limited.
    pub cpu_millis: Option<u32>,
    /// Environment variables given to the function.
    pub env: BTreeMap<String, String>,
    /// Attempts of an asynchronous call before it goes to the dead-letter list.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay of an asynchronous call, ms (doubles per attempt, with jitter).
    #[serde(default = "default_backoff")]
    pub retry_backoff_ms: u64,
    /// Triggers that invoke the function asynchronously.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// wasm only: where outbound HTTP may go (see [`crate::AllowedHosts`]); empty = nowhere.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// wasm only: a folder of the package the guest may read, seen at `/`.
    #[serde(default)]
    pub files: Option<String>,
}

/// What invokes a function besides HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Trigger {
    /// A cron schedule (5 fields, or 6 with seconds), evaluated in UTC.
    Cron {
        /// The pattern.
        schedule: String,
    },
    /// Messages published to a topic.
    Topic {
        /// Topic name.
        topic: String,
    },
    /// CloudEvents whose attributes equal every entry of the filter.
    Event {
        /// Attribute → required value.
        filter: BTreeMap<String, String>,
    },
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

fn default_backoff() -> u64 {
    DEFAULT_BACKOFF_MS
}

/// A manifest that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not TOML at all.
    #[error("{file}: not valid TOML: {message}")]
    Syntax {
        /// The manifest's path.
        file: String,
        /// The parser's message (one line).
        message: String,
    },
    /// A key the manifest does not have.
    #[error("{file}: unknown key `{key}`")]
    UnknownKey {
        /// The manifest's path.
        file: String,
        /// The key (dotted for tables).
        key: String,
    },
    /// A required key is absent.
    #[error("{file}: missing required key `{key}`")]
    Missing {
        /// The manifest's path.
        file: String,
        /// The key.
        key: String,
    },
    /// A key has an unusable value.
    #[error("{file}: {key} = {value}: {reason}")]
    Invalid {
        /// The manifest's path.
        file: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The manifest as parsed (before defaults).
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The locked form.
    pub spec: FunctionSpec,
    /// `[build]`, if any: for the CLI, not part of the locked form.
    pub build: Option<Build>,
}

/// `[build]`: a command that produces the function's code (a WebAssembly component from
/// its sources, say), run by `strata deploy` and `strata build` in the function folder before
/// packaging it, on the developer's machine with their rights. The daemon never runs it: a
/// package's files are all it deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The program and its arguments; a command written as one string runs as
    /// `sh -c COMMAND`.
    pub command: Vec<String>,
    /// Where it runs, relative to the function folder (the folder itself when `None`).
    pub workdir: Option<String>,
}

// Defaults, each with the reason for its number.
/// 128 MiB: enough for a Python or Node runtime with a small handler (Lambda's minimum).
const DEFAULT_MEMORY: u64 = 128 << 20;
/// 10 s: long enough for ordinary request handlers, short enough to free a stuck instance.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// 10 min: the industry's fixed keep-alive (Lambda, OpenWhisk).
const DEFAULT_KEEP_ALIVE_MS: u64 = 600_000;
/// 10: bounds one function's share of a small machine.
const DEFAULT_MAX_INSTANCES: u32 = 10;
/// 3 attempts: Lambda's asynchronous default (the call and two retries).
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// 1 s first retry delay, doubling: rides out a restart without hammering a broken dependency.
const DEFAULT_BACKOFF_MS: u64 = 1000;
/// Below this no language runtime starts.
const MIN_MEMORY: u64 = 16 << 20;
/// Timeouts beyond 15 minutes belong to async work, not a held HTTP request (Lambda's cap).
const MAX_TIMEOUT_MS: u64 = 900_000;

const KEYS: &[&str] = &[
    "name",
    "runtime",
    "handler",
    "mode",
    "memory",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "keep_alive",
    "network",
    "cpu",
    "env",
    "max_attempts",
    "retry_backoff",
    "trigger",
    "allowed_outbound_hosts",
    "files",
    "build",
];

/// Whether `name` is a valid topic name.
pub fn valid_topic(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

struct Ctx<'a> {
    file: &'a str,
    table: &'a toml::Table,
}

impl Ctx<'_> {
    fn invalid(&self, key: &str, value: &toml::Value, reason: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.into(),
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(key, v, "expected a string")),
        }
    }

    fn required(&self, key: &str) -> Result<&str, ManifestError> {
        self.string(key)?.ok_or_else(|| ManifestError::Missing {
            file: self.file.into(),
            key: key.into(),
        })
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<u32>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(v @ toml::Value::Integer(i)) => {
                if (min..=max).contains(i) {
                    Ok(Some(*i as u32))
                } else {
                    Err(self.invalid(key, v, format!("must be between {min} and {max}")))
                }
            }
            Some(v) => Err(self.invalid(key, v, "expected an integer")),
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ManifestError> {
        let Some(s) = self.string(key)? else { return Ok(None) };
        parse_size(s)
            .map(Some)
            .ok_or_else(|| self.invalid(key, &self.table[key], "not a size (use e.g. \"128MiB\", \"1GiB\")"))
    }

    fn duration(&self, key: &str) -> Result<Option<u64>, ManifestError> {
        let Some(s) = self.string(key)? else { return Ok(None) };
        parse_duration_ms(s).map(Some).ok_or_else(|| {
            self.invalid(
                key,
                &self.table[key],
                "not a duration (use e.g. \"500ms\", \"10s\", \"10m\")",
            )
        })
    }
}

/// Whether `name` is a valid function name.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Manifest {
    /// Parse and validate `text`; `file` names the manifest in errors.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ManifestError::Syntax {
            file: file.into(),
            message: e.message().replace('\n', " "),
        })?;
        if let Some(k) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(ManifestError::UnknownKey {
                file: file.into(),
                key: k.clone(),
            });
        }
        let c = Ctx { file, table: &table };
        let name = c.required("name")?;
        if !valid_name(name) {
            return Err(c.invalid(
                "name",
                &table["name"],
                "use 1 to 63 of a-z, 0-9 and -, not starting or ending with -",
            ));
        }
        let runtime = match c.required("runtime")? {
            "python" => Runtime::Python,
            "node" => Runtime::Node,
            "exec" => Runtime::Exec,
            "wasm" => Runtime::Wasm,
            _ => {
                return Err(c.invalid("runtime", &table["runtime"], "expected one of python, node, exec, wasm"));
            }
        };
        let handler = c.required("handler")?;
        // It reaches the instance as an argument or an environment variable: a NUL or another
        // control character cannot be one (and failed every start of the function, after its
        // sandbox's cgroup was made).
        if handler.chars().any(char::is_control) {
            return Err(c.invalid("handler", &table["handler"], "control characters are not allowed"));
        }
        match runtime {
            Runtime::Python | Runtime::Node => {
                let ok = handler
                    .split_once(':')
                    .is_some_and(|(m, f)| !m.is_empty() && !f.is_empty() && !m.contains("..") && !m.starts_with('/'));
                if !ok {
                    return Err(c.invalid(
                        "handler",
                        &table["handler"],
                        "expected module:function, e.g. \"main:handle\"",
                    ));
                }
            }
            Runtime::Exec | Runtime::Wasm => {
                if !inside_folder(handler) {
                    return Err(c.invalid(
                        "handler",
                        &table["handler"],
                        "expected a path inside the function folder",
                    ));
                }
            }
        }
        let mode = match c.string("mode")? {
            None => ExecMode::Protocol,
            Some(_) if runtime != Runtime::Exec => {
                return Err(c.invalid("mode", &table["mode"], "only exec functions have a mode"));
            }
            Some("protocol") => ExecMode::Protocol,
            Some("stdio") => ExecMode::Stdio,
            Some(_) => return Err(c.invalid("mode", &table["mode"], "expected protocol or stdio")),
        };
        let memory_bytes = c.size("memory")?.unwrap_or(DEFAULT_MEMORY);
        if memory_bytes < MIN_MEMORY {
            return Err(c.invalid(
                "memory",
                &table["memory"],
                format!("below the minimum {}", format_size(MIN_MEMORY)),
            ));
        }
        let timeout_ms = c.duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(c.invalid(
                "timeout",
                &table["timeout"],
                format!("must be above 0 and at most {}", format_duration_ms(MAX_TIMEOUT_MS)),
            ));
        }
        let concurrency = c.int("concurrency", 1, 1000)?.unwrap_or(1);
        let min_instances = c.int("min_instances", 0, 1000)?.unwrap_or(0);
        let max_instances = c
            .int("max_instances", 1, 1000)?
            .unwrap_or(DEFAULT_MAX_INSTANCES.max(min_instances));
        if max_instances < min_instances {
            return Err(c.invalid(
                "max_instances",
                &table["max_instances"],
                format!("is below min_instances = {min_instances}"),
            ));
        }
        let keep_alive_ms = c.duration("keep_alive")?.unwrap_or(DEFAULT_KEEP_ALIVE_MS);
        let network = match c.string("network")? {
            None | Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(_) => return Err(c.invalid("network", &table["network"], "expected none or host")),
        };
        let cpu_millis = match c.string("cpu")? {
            None => None,
            Some(s) => {
                let parsed = s.strip_suffix('m').and_then(|n| n.parse::<u32>().ok()).or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .map(|f| (f * 1000.0) as u32)
                });
                match parsed {
                    Some(m) if (10..=64_000).contains(&m) => Some(m),
                    _ => {
                        return Err(c.invalid(
                            "cpu",
                            &table["cpu"],
                            "expected cores (\"0.5\") or millicores (\"500m\")",
                        ));
                    }
                }
            }
        };
        let mut env = BTreeMap::new();
        match table.get("env") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (k, v) in t {
                    let key = format!("env.{k}");
                    if k.is_empty() || k.contains('=') || k.contains('\0') || k.starts_with("STRATA_") {
                        return Err(c.invalid(&key, v, "not a usable variable name (STRATA_ is reserved)"));
                    }
                    let value = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => return Err(c.invalid(&key, v, "expected a string, number or boolean")),
                    };
                    if value.contains('\0') {
                        return Err(c.invalid(&key, v, "contains a NUL byte"));
                    }
                    env.insert(k.clone(), value);
                }
            }
            Some(v) => return Err(c.invalid("env", v, "expected a table")),
        }
        let max_attempts = c.int("max_attempts", 1, 100)?.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        let retry_backoff_ms = c.duration("retry_backoff")?.unwrap_or(DEFAULT_BACKOFF_MS);
        let triggers = parse_triggers(&c)?;
        let build = parse_build(&c)?;
        let (allowed_outbound_hosts, files) = parse_wasm_keys(&c, runtime)?;
        if runtime == Runtime::Wasm {
            if network == Network::Host {
                return Err(c.invalid(
                    "network",
                    &table["network"],
                    "wasm functions reach the network only through allowed_outbound_hosts",
                ));
            }
            if cpu_millis.is_some() {
                return Err(c.invalid(
                    "cpu",
                    &table["cpu"],
                    "wasm functions are bounded by their timeout, not a CPU quota",
                ));
            }
        }
        Ok(Manifest {
            spec: FunctionSpec {
                max_attempts,
                retry_backoff_ms,
                triggers,
                allowed_outbound_hosts,
                files,
                name: name.into(),
                runtime,
                handler: handler.into(),
                mode,
                memory_bytes,
                timeout_ms,
                concurrency,
                min_instances,
                max_instances,
                keep_alive_ms,
                network,
                cpu_millis,
                env,
            },
            build,
        })
    }
}

/// Whether `path` is a relative path that stays inside the function folder.
fn inside_folder(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|p| p == "..")
}

/// `allowed_outbound_hosts` and `files`, which only wasm functions have.
fn parse_wasm_keys(c: &Ctx<'_>, runtime: Runtime) -> Result<(Vec<String>, Option<String>), ManifestError> {
    for key in ["allowed_outbound_hosts", "files"] {
        if runtime != Runtime::Wasm
            && let Some(v) = c.table.get(key)
        {
            return Err(c.invalid(key, v, "only wasm functions have it (process functions use network)"));
        }
    }
    let hosts = match c.table.get("allowed_outbound_hosts") {
        None => Vec::new(),
        Some(v @ toml::Value::Array(a)) => {
            let mut hosts = Vec::new();
            for item in a {
                let toml::Value::String(h) = item else {
                    return Err(c.invalid("allowed_outbound_hosts", v, "expected a list of strings"));
                };
                if crate::AllowedHosts::parse(&[h]).is_err() {
                    return Err(c.invalid(
                        "allowed_outbound_hosts",
                        item,
                        "not a host pattern (want host, host:port, or http[s]://host[:port]; * and *. wildcards)",
                    ));
                }
                hosts.push(h.clone());
            }
            hosts
        }
        Some(v) => return Err(c.invalid("allowed_outbound_hosts", v, "expected a list of strings")),
    };
    let files = match c.string("files")? {
        None => None,
        Some(f) if inside_folder(f) => Some(f.trim_end_matches('/').to_owned()),
        Some(_) => {
            return Err(c.invalid(
                "files",
                &c.table["files"],
                "expected a folder inside the function folder",
            ));
        }
    };
    Ok((hosts, files))
}

/// `[build]`: `command` (a string for `sh -c`, or the program and its arguments) and an
/// optional `workdir` inside the function folder.
fn parse_build(c: &Ctx<'_>) -> Result<Option<Build>, ManifestError> {
    let Some(v) = c.table.get("build") else {
        return Ok(None);
    };
    let toml::Value::Table(t) = v else {
        return Err(c.invalid("build", v, "expected a table: [build] with command = \"...\""));
    };
    if let Some(k) = t.keys().find(|k| !["command", "workdir"].contains(&k.as_str())) {
        return Err(ManifestError::UnknownKey {
            file: c.file.into(),
            key: format!("build.{k}"),
        });
    }
    const COMMAND: &str = "expected a command string, or its program and arguments as a list of strings";
    let command = match t.get("command") {
        None => {
            return Err(ManifestError::Missing {
                file: c.file.into(),
                key: "build.command".into(),
            });
        }
        Some(toml::Value::String(cmd)) if !cmd.trim().is_empty() => {
            vec!["sh".to_owned(), "-c".to_owned(), cmd.clone()]
        }
        Some(v @ toml::Value::Array(items)) => {
            let argv: Vec<String> = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| c.invalid("build.command", v, COMMAND))?;
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(c.invalid("build.command", v, COMMAND));
            }
            argv
        }
        Some(v) => return Err(c.invalid("build.command", v, COMMAND)),
    };
    let workdir = match t.get("workdir") {
        None => None,
        Some(toml::Value::String(w)) if inside_folder(w) => Some(w.trim_end_matches('/').to_owned()),
        Some(v) => return Err(c.invalid("build.workdir", v, "expected a folder inside the function folder")),
    };
    Ok(Some(Build { command, workdir }))
}

fn parse_triggers(c: &Ctx<'_>) -> Result<Vec<Trigger>, ManifestError> {
    let list = match c.table.get("trigger") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a,
        Some(v) => return Err(c.invalid("trigger", v, "expected [[trigger]] tables")),
    };
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let key = |k: &str| format!("trigger[{i}].{k}");
        let toml::Value::Table(t) = t else {
            return Err(c.invalid(&format!("trigger[{i}]"), t, "expected a table"));
        };
        let string = |k: &str| -> Result<&str, ManifestError> {
            match t.get(k) {
                Some(toml::Value::String(s)) => Ok(s),
                Some(v) => Err(c.invalid(&key(k), v, "expected a string")),
                None => Err(ManifestError::Missing {
                    file: c.file.into(),
                    key: key(k),
                }),
            }
        };
        let allowed: &[&str] = match string("type")? {
            "cron" => &["type", "schedule", "timezone"],
            "topic" => &["type", "topic"],
            "event" => &["type", "filter"],
            _ => return Err(c.invalid(&key("type"), &t["type"], "expected one of cron, topic, event")),
        };
        if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ManifestError::UnknownKey {
                file: c.file.into(),
                key: key(k),
            });
        }
        let trigger = match string("type")? {
            "cron" => {
                let schedule = string("schedule")?;
                if let Err(e) = schedule.parse::<croner::Cron>() {
                    return Err(c.invalid(&key("schedule"), &t["schedule"], format!("not a cron schedule: {e}")));
                }
                if let Some(tz) = t.get("timezone")
                    && tz.as_str() != Some("UTC")
                {
                    return Err(c.invalid(&key("timezone"), tz, "only UTC is supported"));
                }
                Trigger::Cron {
                    schedule: schedule.to_owned(),
                }
            }
            "topic" => {
                let topic = string("topic")?;
                if !valid_topic(topic) {
                    return Err(c.invalid(&key("topic"), &t["topic"], "use 1 to 128 of A-Z, a-z, 0-9, -, _ and ."));
                }
                Trigger::Topic {
                    topic: topic.to_owned(),
                }
            }
            _ => {
                let Some(toml::Value::Table(f)) = t.get("filter") else {
                    let v = t.get("filter").cloned().unwrap_or(toml::Value::String(String::new()));
                    return Err(c.invalid(&key("filter"), &v, "expected a table of attribute = value"));
                };
                let mut filter = BTreeMap::new();
                for (k, v) in f {
                    let Some(v) = v.as_str() else {
                        return Err(c.invalid(&key(&format!("filter.{k}")), v, "expected a string"));
                    };
                    filter.insert(k.clone(), v.to_owned());
                }
                if filter.is_empty() {
                    return Err(c.invalid(&key("filter"), &t["filter"], "an empty filter would match every event"));
                }
                Trigger::Event { filter }
            }
        };
        out.push(trigger);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hello"
runtime = "python"
handler = "main:handle"
memory = "128MiB"
timeout = "10s"
concurrency = 1
min_instances = 0
max_instances = 10
keep_alive = "10m"
network = "none"
[env]
GREETING = "hi"
"#;

    #[test]
    fn the_documented_example_parses() {
        let m = Manifest::parse("strata.toml", GOOD).unwrap().spec;
        assert_eq!(m.name, "hello");
        assert_eq!(m.runtime, Runtime::Python);
        assert_eq!(m.memory_bytes, 128 << 20);
        assert_eq!(m.timeout_ms, 10_000);
        assert_eq!(m.keep_alive_ms, 600_000);
        assert_eq!(m.env["GREETING"], "hi");
    }

    #[test]
    fn wasm_functions() {
        let m = Manifest::parse(
            "f",
            "name='w'\nruntime='wasm'\nhandler='app.wasm'\nallowed_outbound_hosts=['https://*.example.com', '127.0.0.1:8080']\nfiles='static/'\n",
        )
        .unwrap()
        .spec;
        assert_eq!(m.runtime, Runtime::Wasm);
        assert_eq!(m.handler, "app.wasm");
        assert_eq!(m.allowed_outbound_hosts, ["https://*.example.com", "127.0.0.1:8080"]);
        assert_eq!(m.files.as_deref(), Some("static"));
    }

    #[test]
    fn defaults() {
        let m = Manifest::parse("f", "name='a'\nruntime='node'\nhandler='index:handle'\n")
            .unwrap()
            .spec;
        assert_eq!(
            (
                m.memory_bytes,
                m.timeout_ms,
                m.concurrency,
                m.min_instances,
                m.max_instances
            ),
            (128 << 20, 10_000, 1, 0, 10)
        );
        assert_eq!(m.network, Network::None);
        assert_eq!(m.mode, ExecMode::Protocol);
    }

    /// Every malformed manifest gives one line naming the field and the value.
    #[test]
    fn malformed_manifests_table() {
        let base = "name = \"ok\"\nruntime = \"python\"\nhandler = \"main:handle\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "name = \"ok\"\nruntime = \"python\"\nhandler = \"main:handle\"\nmemroy = \"1GiB\"\n",
                "fn/strata.toml: unknown key `memroy`",
            ),
            (
                "name = \"Bad_Name\"\nruntime = \"python\"\nhandler = \"m:h\"\n",
                "fn/strata.toml: name = \"Bad_Name\": use 1 to 63 of a-z, 0-9 and -, not starting or ending with -",
            ),
            (
                "name = \"-x\"\nruntime = \"python\"\nhandler = \"m:h\"\n",
                "fn/strata.toml: name = \"-x\": use 1 to 63 of a-z, 0-9 and -, not starting or ending with -",
            ),
            (
                "name = 5\nruntime = \"python\"\nhandler = \"m:h\"\n",
                "fn/strata.toml: name = 5: expected a string",
            ),
            (
                "runtime = \"python\"\nhandler = \"m:h\"\n",
                "fn/strata.toml: missing required key `name`",
            ),
            (
                "name = \"a\"\nruntime = \"ruby\"\nhandler = \"m:h\"\n",
                "fn/strata.toml: runtime = \"ruby\": expected one of python, node, exec, wasm",
            ),
            (
                "name = \"a\"\nruntime = \"python\"\n",
                "fn/strata.toml: missing required key `handler`",
            ),
            (
                "name = \"a\"\nruntime = \"python\"\nhandler = \"main\"\n",
                "fn/strata.toml: handler = \"main\": expected module:function, e.g. \"main:handle\"",
            ),
            (
                "name = \"a\"\nruntime = \"node\"\nhandler = \"index:h\\u0000\"\n",
                "fn/strata.toml: handler = \"index:h\\u0000\": control characters are not allowed",
            ),
            (
                "name = \"a\"\nruntime = \"exec\"\nhandler = \"../x\"\n",
                "fn/strata.toml: handler = \"../x\": expected a path inside the function folder",
            ),
            (
                "memory = \"12XB\"\n",
                "fn/strata.toml: memory = \"12XB\": not a size (use e.g. \"128MiB\", \"1GiB\")",
            ),
            (
                "memory = \"1MiB\"\n",
                "fn/strata.toml: memory = \"1MiB\": below the minimum 16MiB",
            ),
            (
                "timeout = \"10\"\n",
                "fn/strata.toml: timeout = \"10\": not a duration (use e.g. \"500ms\", \"10s\", \"10m\")",
            ),
            (
                "timeout = \"0s\"\n",
                "fn/strata.toml: timeout = \"0s\": must be above 0 and at most 15m",
            ),
            (
                "keep_alive = \"forever\"\n",
                "fn/strata.toml: keep_alive = \"forever\": not a duration (use e.g. \"500ms\", \"10s\", \"10m\")",
            ),
            (
                "min_instances = 5\nmax_instances = 2\n",
                "fn/strata.toml: max_instances = 2: is below min_instances = 5",
            ),
            (
                "concurrency = 0\n",
                "fn/strata.toml: concurrency = 0: must be between 1 and 1000",
            ),
            (
                "concurrency = \"2\"\n",
                "fn/strata.toml: concurrency = \"2\": expected an integer",
            ),
            (
                "network = \"bridge\"\n",
                "fn/strata.toml: network = \"bridge\": expected none or host",
            ),
            (
                "mode = \"stdio\"\n",
                "fn/strata.toml: mode = \"stdio\": only exec functions have a mode",
            ),
            (
                "cpu = \"lots\"\n",
                "fn/strata.toml: cpu = \"lots\": expected cores (\"0.5\") or millicores (\"500m\")",
            ),
            (
                "[env]\nSTRATA_X = \"1\"\n",
                "fn/strata.toml: env.STRATA_X = \"1\": not a usable variable name (STRATA_ is reserved)",
            ),
            (
                "[env]\nA = [1]\n",
                "fn/strata.toml: env.A = [1]: expected a string, number or boolean",
            ),
            ("env = 3\n", "fn/strata.toml: env = 3: expected a table"),
            (
                "[[trigger]]\ntype = \"cron\"\nschedule = \"nope\"\n",
                "fn/strata.toml: trigger[0].schedule = \"nope\": not a cron schedule: Invalid pattern: Pattern must have between 5 and 7 fields.",
            ),
            (
                "[[trigger]]\ntype = \"carrier-pigeon\"\n",
                "fn/strata.toml: trigger[0].type = \"carrier-pigeon\": expected one of cron, topic, event",
            ),
            (
                "[[trigger]]\ntype = \"topic\"\n",
                "fn/strata.toml: missing required key `trigger[0].topic`",
            ),
            (
                "[[trigger]]\ntype = \"topic\"\ntopic = \"a\"\nschedule = \"x\"\n",
                "fn/strata.toml: unknown key `trigger[0].schedule`",
            ),
            (
                "[[trigger]]\ntype = \"event\"\nfilter = {}\n",
                "fn/strata.toml: trigger[0].filter = {}: an empty filter would match every event",
            ),
            (
                "max_attempts = 0\n",
                "fn/strata.toml: max_attempts = 0: must be between 1 and 100",
            ),
            (
                "allowed_outbound_hosts = [\"a.com\"]\n",
                "fn/strata.toml: allowed_outbound_hosts = [\"a.com\"]: only wasm functions have it (process functions use network)",
            ),
            (
                "name = \"a\"\nruntime = \"wasm\"\nhandler = \"x.wasm\"\nallowed_outbound_hosts = [\"ok.com\", \"ftp://x\"]\n",
                "fn/strata.toml: allowed_outbound_hosts = \"ftp://x\": not a host pattern (want host, host:port, or http[s]://host[:port]; * and *. wildcards)",
            ),
            (
                "name = \"a\"\nruntime = \"wasm\"\nhandler = \"x.wasm\"\nallowed_outbound_hosts = \"ok.com\"\n",
                "fn/strata.toml: allowed_outbound_hosts = \"ok.com\": expected a list of strings",
            ),
            (
                "name = \"a\"\nruntime = \"wasm\"\nhandler = \"x.wasm\"\nnetwork = \"host\"\n",
                "fn/strata.toml: network = \"host\": wasm functions reach the network only through allowed_outbound_hosts",
            ),
            (
                "name = \"a\"\nruntime = \"wasm\"\nhandler = \"x.wasm\"\nfiles = \"../etc\"\n",
                "fn/strata.toml: files = \"../etc\": expected a folder inside the function folder",
            ),
            (
                "name = \"a\"\nruntime = \"wasm\"\nhandler = \"/abs.wasm\"\n",
                "fn/strata.toml: handler = \"/abs.wasm\": expected a path inside the function folder",
            ),
            (
                "build = \"make\"\n",
                "fn/strata.toml: build = \"make\": expected a table: [build] with command = \"...\"",
            ),
            (
                "[build]\nworkdir = \"src\"\n",
                "fn/strata.toml: missing required key `build.command`",
            ),
            (
                "[build]\ncommand = \"  \"\n",
                "fn/strata.toml: build.command = \"  \": expected a command string, or its program and arguments as a list of strings",
            ),
            (
                "[build]\ncommand = [\"cargo\", 1]\n",
                "fn/strata.toml: build.command = [\"cargo\", 1]: expected a command string, or its program and arguments as a list of strings",
            ),
            (
                "[build]\ncommand = []\n",
                "fn/strata.toml: build.command = []: expected a command string, or its program and arguments as a list of strings",
            ),
            (
                "[build]\ncommand = \"make\"\nworkdir = \"../up\"\n",
                "fn/strata.toml: build.workdir = \"../up\": expected a folder inside the function folder",
            ),
            (
                "[build]\ncommand = \"make\"\nwatch = [\"src\"]\n",
                "fn/strata.toml: unknown key `build.watch`",
            ),
        ];
        for (text, want) in cases {
            let text = if text.contains("name") || text.contains("runtime") {
                text.to_string()
            } else {
                format!("{base}{text}")
            };
            let err = Manifest::parse("fn/strata.toml", &text).unwrap_err().to_string();
            assert_eq!(&err, want, "manifest:\n{text}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_build_command_is_a_shell_line_or_a_program_with_arguments() {
        let base = "name = \"a\"\nruntime = \"wasm\"\nhandler = \"app.wasm\"\n";
        let m = Manifest::parse("f", base).unwrap();
        assert_eq!(m.build, None);
        let m = Manifest::parse("f", &format!("{base}[build]\ncommand = \"cargo build && cp a b\"\n")).unwrap();
        let want = Build {
            command: vec!["sh".into(), "-c".into(), "cargo build && cp a b".into()],
            workdir: None,
        };
        assert_eq!(m.build, Some(want));
        let m = Manifest::parse(
            "f",
            &format!("{base}[build]\ncommand = [\"cargo\", \"build\", \"--release\"]\nworkdir = \"src/\"\n"),
        )
        .unwrap();
        let want = Build {
            command: vec!["cargo".into(), "build".into(), "--release".into()],
            workdir: Some("src".into()),
        };
        assert_eq!(m.build, Some(want));
        // Not part of the locked form: the same function with or without it.
        assert_eq!(m.spec, Manifest::parse("f", base).unwrap().spec);
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let err = Manifest::parse("f.toml", "name = \n").unwrap_err().to_string();
        assert!(err.starts_with("f.toml: not valid TOML"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn exec_stdio_and_cpu() {
        let m = Manifest::parse(
            "f",
            "name='s'\nruntime='exec'\nhandler='run.sh'\nmode='stdio'\ncpu='0.5'\n",
        )
        .unwrap()
        .spec;
        assert_eq!(m.mode, ExecMode::Stdio);
        assert_eq!(m.cpu_millis, Some(500));
        let m = Manifest::parse("f", "name='s'\nruntime='exec'\nhandler='bin/x'\ncpu='250m'\n")
            .unwrap()
            .spec;
        assert_eq!(m.cpu_millis, Some(250));
    }
}

#[cfg(test)]
mod trigger_tests {
    use super::*;

    #[test]
    fn triggers_parse() {
        let m = Manifest::parse(
            "f",
            r#"
name = "t"
runtime = "python"
handler = "main:handle"
max_attempts = 5
retry_backoff = "100ms"

[[trigger]]
type = "cron"
schedule = "*/2 * * * * *"

[[trigger]]
type = "topic"
topic = "orders"

[[trigger]]
type = "event"
filter = { type = "com.example.order.created", source = "/shop" }
"#,
        )
        .unwrap()
        .spec;
        assert_eq!(m.max_attempts, 5);
        assert_eq!(m.retry_backoff_ms, 100);
        assert_eq!(m.triggers.len(), 3);
        assert_eq!(m.triggers[1], Trigger::Topic { topic: "orders".into() });
        let json = serde_json::to_value(&m.triggers[2]).unwrap();
        assert_eq!(json["type"], "event");
        assert_eq!(json["filter"]["source"], "/shop");
    }
}
