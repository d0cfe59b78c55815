//! `strata up`: the daemon in the foreground.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strata_gateway::{AppState, GatewayConfig, Metrics};
use strata_instance::Runtimes;
use strata_orchestrator::queue::AsyncQueue;
use strata_orchestrator::{Context, Orchestrator};
use strata_sandbox::{Backend, BackendConfig};
use strata_store::Store;

/// The language bootstraps, compiled into the binary so it is self-contained.
const RUNTIME_FILES: &[(&str, &str)] = &[
    (
        "python/bootstrap.py",
        include_str!("../../../runtimes/python/bootstrap.py"),
    ),
    ("python/strata.py", include_str!("../../../runtimes/python/strata.py")),
    ("python/zygote.py", include_str!("../../../runtimes/python/zygote.py")),
    (
        "python/fntemplate.py",
        include_str!("../../../runtimes/python/fntemplate.py"),
    ),
    ("node/bootstrap.js", include_str!("../../../runtimes/node/bootstrap.js")),
    ("node/strata.js", include_str!("../../../runtimes/node/strata.js")),
];

/// Options of `strata up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory.
    pub data: PathBuf,
    /// Deploy the example functions at start.
    pub demo: Option<PathBuf>,
    /// Invocation body limit.
    pub max_body: usize,
    /// Calls that may wait per function before 429.
    pub queue_depth: usize,
    /// Asynchronous calls running at once.
    pub async_workers: usize,
    /// Accepted asynchronous calls per function before 429.
    pub async_queue_depth: usize,
    /// A daemon-wide keep-alive policy; `None`: each function's manifest `keep_alive`.
    pub keep_alive: Option<strata_orchestrator::keepalive::KeepAliveConfig>,
    /// Largest dependency layer a deploy may install.
    pub max_layer_bytes: u64,
}

/// The keep-alive settings of `strata up`, each bad value named with its flag.
pub fn keep_alive_config(
    policy: &str,
    keep_alive: &str,
    budget: Option<&str>,
    cold_start_price: u64,
    cold_start_objective: &str,
    time_scale: f64,
) -> Result<Option<strata_orchestrator::keepalive::KeepAliveConfig>, String> {
    if policy == "manifest" {
        return Ok(None);
    }
    let kind = policy
        .parse::<strata_policy::PolicyKind>()
        .map_err(|e| format!("--keep-alive-policy: {e} or manifest"))?;
    let keep_alive_ms = strata_types::units::parse_duration_ms(keep_alive)
        .ok_or_else(|| format!("--keep-alive {keep_alive:?} is not a duration (use e.g. 10m)"))?;
    let budget_mb = match budget {
        None => None,
        Some(b) => Some(
            strata_types::units::parse_size(b)
                .ok_or_else(|| format!("--idle-memory-budget {b:?} is not a size (use e.g. 2GiB)"))?
                >> 20,
        ),
    };
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Err(format!("--policy-time-scale {time_scale} is not a positive number"));
    }
    if cold_start_price == 0 {
        return Err("--cold-start-price 0: give the MB·minutes one cold start is worth (e.g. 3500)".to_owned());
    }
    let app_weight = match cold_start_objective {
        "calls" => 0.0,
        "functions" => 1.0,
        other => {
            return Err(format!("--cold-start-objective {other:?}: expected calls or functions"));
        }
    };
    let config = strata_policy::Config {
        keep_alive: keep_alive_ms,
        budget_mb,
        hazard: strata_policy::HazardConfig {
            worth_mb_min: cold_start_price,
            app_weight,
            ..strata_policy::HazardConfig::default()
        },
        ..strata_policy::Config::default()
    };
    Ok(Some(strata_orchestrator::keepalive::KeepAliveConfig {
        kind,
        config,
        time_scale,
    }))
}

fn write_runtimes(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, content) in RUNTIME_FILES {
        let path = dir.join(rel);
        let parent = path.parent().context("runtime file has a parent")?;
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(&path, content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    compile_python(&dir.join("python"));
    Ok(())
}

/// Byte-compile the Python bootstrap with the interpreter sandboxes run, so instances load
/// it from `__pycache__` (read-only inside the sandbox) instead of compiling it at every
/// cold start (~10 ms). Failure only costs that time, so it is logged, not fatal.
fn compile_python(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-I",
            "-S",
            "-c",
            "import py_compile, sys\nfor f in sys.argv[1:]: py_compile.compile(f, doraise=True)",
        ])
        .arg(dir.join("bootstrap.py"))
        .arg(dir.join("strata.py"))
        .arg(dir.join("zygote.py"))
        .arg(dir.join("fntemplate.py"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let cache = dir.join("__pycache__");
            let _ = std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755));
            for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644));
            }
        }
        Ok(o) => {
            tracing::warn!(stderr = %String::from_utf8_lossy(&o.stderr), "byte-compiling the Python bootstrap failed")
        }
        Err(e) => tracing::warn!(error = %e, "byte-compiling the Python bootstrap failed"),
    }
}

/// Run the daemon until SIGINT or SIGTERM.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    let http_threads = crate::http::threads_wanted()?;
    std::fs::create_dir_all(&opts.data).with_context(|| format!("creating {}", opts.data.display()))?;
    let data = opts.data.canonicalize()?;
    let store = Store::open(&data).with_context(|| format!("opening state in {}", data.display()))?;
    let runtime_dir = data.join("runtime");
    write_runtimes(&runtime_dir).context("writing runtime bootstraps")?;
    let backend = Backend::new(BackendConfig::default()).context("preparing the process sandbox (run as root)")?;
    tracing::info!(cgroups = backend.cgroup_version(), "sandbox backend ready");
    let wasm = crate::wasm::Tier::new(&data).context("preparing the wasm tier")?;
    // STRATA_RUNTIME_TEMPLATES=0 starts every Python instance from scratch (for comparisons).
    let templates = (std::env::var("STRATA_RUNTIME_TEMPLATES").as_deref() != Ok("0")).then(|| {
        let mut t = strata_instance::Templates::new(backend.clone(), &runtime_dir);
        // STRATA_FUNCTION_TEMPLATES=0: Python instances fork from the runtime template only.
        if std::env::var("STRATA_FUNCTION_TEMPLATES").as_deref() != Ok("0") {
            t = t.with_function_templates(strata_instance::FUNCTION_TEMPLATE_IDLE);
        }
        let t = Arc::new(t);
        let sweeper = Arc::clone(&t);
        tokio::spawn(async move {
            // Function templates unused for their idle time go even when nothing launches.
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Some(f) = sweeper.functions() {
                    f.sweep();
                }
            }
        });
        // Started now, so the first cold start does not wait for it.
        let _ = t.python();
        t
    });
    let keep_alive = match &opts.keep_alive {
        Some(k) => {
            let ka = strata_orchestrator::keepalive::KeepAlive::new(k)
                .map_err(|e| anyhow::anyhow!("keep-alive policy: {e}"))?;
            tracing::info!(policy = %ka.kind(), budget_mb = ?k.config.budget_mb, "daemon-wide keep-alive policy");
            Some(Arc::new(ka))
        }
        None => None,
    };
    let layers = Arc::new(
        strata_instance::deps::Layers::new(data.join("layers"), opts.max_layer_bytes)
            .context("preparing the dependency layers")?,
    );
    let live: Vec<String> = store
        .functions()?
        .into_iter()
        .flat_map(|f| f.versions.into_iter().map(|v| v.version))
        .collect();
    let removed = layers.collect_garbage(&live);
    if !removed.is_empty() {
        tracing::info!(?removed, "removed dependency layers no version uses");
    }
    let orch = Orchestrator::new(Context {
        backend,
        runtimes: Runtimes {
            dir: runtime_dir,
            strata_bin: std::env::current_exe()?,
            templates,
            layers: Some(layers),
        },
        store: store.clone(),
        queue_depth: opts.queue_depth,
        wasm: Some(Arc::new(wasm)),
        keep_alive,
    });
    for f in store.functions()? {
        match store.spec(&f.name, &f.active) {
            Ok(spec) => {
                if let Err(e) = orch.activate(spec, &f.active) {
                    tracing::error!(function = %f.name, error = %e, "cannot restore function");
                }
            }
            Err(e) => tracing::error!(function = %f.name, error = %e, "cannot restore function"),
        }
    }
    tokio::spawn(Arc::clone(&orch).run_ticks());
    let queue = AsyncQueue::start(Arc::clone(&orch), opts.async_workers, opts.async_queue_depth)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(strata_orchestrator::triggers::run_cron(
        Arc::clone(&queue),
        Arc::clone(&orch),
    ));
    let config = GatewayConfig {
        max_body: opts.max_body,
        ..GatewayConfig::default()
    };
    let state = AppState {
        orch: Arc::clone(&orch),
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        queue,
        config: config.clone(),
    };
    if let Some(examples) = &opts.demo {
        deploy_examples(&state, examples).await;
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    eprintln!(
        "strata: listening on http://{} (state in {})",
        listener.local_addr()?,
        data.display()
    );
    let mut server = crate::http::Server::start(strata_gateway::router(state), http_threads)?;
    // Calls in flight get the same grace as the instances below.
    server.run(listener, shutdown_signal(), Duration::from_secs(30)).await;
    eprintln!("strata: draining calls in flight and stopping instances");
    orch.shutdown(Duration::from_secs(30)).await;
    store.flush();
    server.finish();
    eprintln!("strata: stopped");
    Ok(())
}

async fn deploy_examples(state: &AppState, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "no examples folder");
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("strata.toml").is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        let res = match crate::pack::package(&d) {
            Ok(archive) => strata_gateway::deploy(
                &state.store,
                &state.orch,
                archive.into(),
                state.config.max_package,
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code)),
            Err(e) => Err(e),
        };
        match res {
            Ok(r) => eprintln!("strata: deployed example {} version {}", r.name, r.version),
            Err(e) => eprintln!("strata: example {} not deployed: {e:#}", d.display()),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
