//! Deploying a package: store it, validate its manifest, register and activate the version.

use std::sync::Arc;

use serde::Serialize;
use strata_instance::deps::{Built, DepsError, Ecosystem};
use strata_orchestrator::Orchestrator;
use strata_store::Store;
use strata_types::{ErrorCode, ExecMode, Manifest, Runtime};

use crate::ApiError;

/// Where a deploy's progress lines go.
pub type Progress = tokio::sync::mpsc::UnboundedSender<String>;

/// What a deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployResult {
    /// Function name.
    pub name: String,
    /// Version id (content hash prefix).
    pub version: String,
    /// False when this exact package was deployed before (it is re-activated).
    pub created: bool,
    /// Runtime.
    pub runtime: String,
    /// Always true: a deploy activates.
    pub active: bool,
    /// What the build step did (wasm: compiled, or found in the artifact cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// The unpacked size a package may reach: 4× the upload limit covers compression.
const UNPACK_FACTOR: u64 = 4;

/// Deploy `archive` (a gzip'd tar of a function folder) and route calls to it.
///
/// `progress`, when given, gets each line a dependency installer prints, as it prints it.
pub async fn deploy(
    store: &Store,
    orch: &Arc<Orchestrator>,
    archive: bytes::Bytes,
    max_package: usize,
    progress: Option<Progress>,
) -> Result<DeployResult, ApiError> {
    let blobs = store.blobs().clone();
    let limit = max_package as u64 * UNPACK_FACTOR;
    let (version, manifest) = crate::off_thread(move || blobs.put(&archive, limit))
        .await?
        .map_err(package_error)?;
    let spec = Manifest::parse("strata.toml", &manifest)
        .map_err(|e| ApiError::new(ErrorCode::InvalidManifest, e.to_string()))?
        .spec;
    let code = store.blobs().code_dir(&version);
    match spec.runtime {
        Runtime::Wasm => {
            if !code.join(&spec.handler).is_file() {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!("strata.toml: handler = {:?}: no such file in the package", spec.handler),
                ));
            }
            if let Some(files) = &spec.files
                && !code.join(files).is_dir()
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!("strata.toml: files = {files:?}: no such folder in the package"),
                ));
            }
        }
        Runtime::Exec => {
            let exe = code.join(&spec.handler);
            let ok = std::fs::metadata(&exe)
                .map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
            if !matches!(ok, Ok(true)) {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!(
                        "strata.toml: handler = {:?}: not an executable file in the package",
                        spec.handler
                    ),
                ));
            }
            if spec.mode == ExecMode::Stdio && spec.concurrency > 1 {
                tracing::debug!(function = %spec.name, "stdio functions run one process per call whatever the concurrency");
            }
        }
        Runtime::Python | Runtime::Node => {
            let module = spec.handler.split_once(':').map_or("", |(m, _)| m);
            let rel = if spec.runtime == Runtime::Python {
                format!("{}.py", module.replace('.', "/"))
            } else {
                module.to_owned()
            };
            let candidates = [
                code.join(&rel),
                code.join(format!("{rel}.js")),
                code.join(format!("{rel}.mjs")),
                code.join(&rel).join("__init__.py"),
            ];
            if !candidates.iter().any(|p| p.is_file()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!(
                        "strata.toml: handler = {:?}: module {module} is not in the package",
                        spec.handler
                    ),
                ));
            }
        }
    }
    let mut build = None;
    if spec.runtime == Runtime::Python {
        precompile_python(&code).await;
    }
    let eco = match spec.runtime {
        Runtime::Python => Some(Ecosystem::Python),
        Runtime::Node => Some(Ecosystem::Node),
        _ => None,
    };
    if let Some(eco) = eco.filter(|e| code.join(e.manifest()).is_file()) {
        build = Some(dependencies(orch, eco, &version, &code, progress).await?);
    }
    if spec.runtime == Runtime::Wasm {
        // Compile before anything is recorded: a component that does not compile or link
        // fails the deploy and leaves the active version as it was.
        let Some(tier) = orch.context().wasm.clone() else {
            return Err(ApiError::new(
                ErrorCode::InvalidManifest,
                "strata.toml: runtime = \"wasm\": this daemon has no wasm tier",
            ));
        };
        let (s2, c2) = (spec.clone(), code.clone());
        let summary = crate::off_thread(move || tier.prepare(&s2, &c2)).await?.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidManifest,
                format!("strata.toml: handler = {:?}: {e}", spec.handler),
            )
        })?;
        build = Some(summary);
    }
    let (st, v, sp) = (store.clone(), version.clone(), spec.clone());
    let created = crate::off_thread(move || st.activate_new(&v, &sp)).await??;
    // Off the HTTP thread, as the rollback's: loading reads and hashes the code, and compiles
    // it if the cache lost it meanwhile.
    let (o, sp, v) = (Arc::clone(orch), spec.clone(), version.clone());
    crate::off_thread(move || o.activate(sp, &v))
        .await?
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("activating {version}: {e}")))?;
    tracing::info!(function = %spec.name, %version, created, "deployed");
    Ok(DeployResult {
        name: spec.name,
        version,
        created,
        runtime: spec.runtime.as_str().into(),
        active: true,
        build,
    })
}

/// What a package that could not be stored answers: too big once unpacked is 413; an I/O
/// error is the daemon's trouble (500: a full disk, permissions, descriptors); the rest is the
/// package's (an unreadable archive, no manifest, entries outside it).
fn package_error(e: strata_store::PackageError) -> ApiError {
    let code = match &e {
        strata_store::PackageError::TooBig { .. } => ErrorCode::PayloadTooLarge,
        strata_store::PackageError::Io(_) => ErrorCode::Internal,
        _ => ErrorCode::InvalidManifest,
    };
    ApiError::new(code, e.to_string())
}

/// Byte-compile a Python function's modules at deploy: the code folder is read-only in the
/// sandbox, so otherwise every cold start compiles the handler again. Best effort.
async fn precompile_python(code: &std::path::Path) {
    let out = tokio::process::Command::new("/usr/bin/python3")
        .args(["-I", "-S", "-m", "compileall", "-q", "-j", "1"])
        .arg(code)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => readable_caches(code),
        Ok(o) => {
            tracing::debug!(stdout = %String::from_utf8_lossy(&o.stdout), "compileall found errors; the import will report them")
        }
        Err(e) => tracing::debug!(error = %e, "compileall did not run"),
    }
}

/// Make every `__pycache__` under `dir` readable by the sandbox user, whatever the umask.
fn readable_caches(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
                for f in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
                }
            } else {
                readable_caches(&path);
            }
        }
    }
}

/// Install (or find cached) the dependency layer of a function's `requirements.txt` or
/// `package.json`. A failed install fails the deploy with the installer's message; nothing is
/// activated.
async fn dependencies(
    orch: &Orchestrator,
    eco: Ecosystem,
    version: &str,
    code: &std::path::Path,
    progress: Option<Progress>,
) -> Result<String, ApiError> {
    let file = eco.manifest();
    let Some(layers) = orch.context().runtimes.layers.clone() else {
        return Err(ApiError::new(
            ErrorCode::InvalidManifest,
            format!("{file}: this daemon has no dependency layers"),
        ));
    };
    let (version, code) = (version.to_owned(), code.to_path_buf());
    let (info, built) = crate::off_thread(move || {
        let report = |line: &str| {
            if let Some(tx) = &progress {
                let _ = tx.send(line.to_owned());
            }
        };
        layers.ensure(eco, &version, &code, &report)
    })
    .await?
    .map_err(|e| match e {
        DepsError::Io(e) => ApiError::new(ErrorCode::Internal, format!("{file}: {e}")),
        other => ApiError::new(ErrorCode::InvalidManifest, format!("{file}: {other}")),
    })?;
    let how = match built {
        Built::Installed { secs } => format!("installed in {secs:.1} s"),
        Built::Cached => "cached, nothing installed".to_owned(),
    };
    Ok(format!(
        "dependencies {how}: layer {} ({} packages, {:.1} MiB): {}",
        info.name,
        info.packages.len(),
        info.size_bytes as f64 / (1 << 20) as f64,
        info.packages.join(" ")
    ))
}
