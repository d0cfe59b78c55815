//! Starting daemons, running the CLI, function fixtures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/functions").join(name)
}

pub fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

/// A function folder in a temp dir, from (path, content) pairs.
pub fn function_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c).unwrap();
    }
    d
}

pub struct Daemon {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Daemon {
        Self::start_env(args, &[])
    }

    /// Started with `args` and the environment variables `env`.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut d = Daemon {
            child: None,
            url: String::new(),
            data,
            _tmp: Some(tmp),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(&self.data)
            .args(&self.args)
            .env("STRATA_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not start listening");
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit status success.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        // SAFETY: kill(2) with the child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the daemon (no drain, no flush) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The daemon's pid (for killing it from another task).
    pub fn pid_raw(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Reap a daemon killed from elsewhere.
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Start the daemon again on the same data directory (after a kill).
    pub fn relaunch(&mut self) {
        self.launch();
    }

    pub fn restart(&mut self) {
        assert!(self.stop(), "daemon stops cleanly");
        self.launch();
    }

    /// Run the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("STRATA_GATEWAY", &self.url)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Deploy a folder with the CLI; panics on failure.
    pub fn deploy(&self, dir: &Path) -> String {
        let out = self.cli(&["deploy", dir.to_str().unwrap()]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "deploy {} failed: {text}", dir.display());
        text
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap()
    }

    pub fn fn_url(&self, name: &str) -> String {
        format!("{}/function/{name}", self.url)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn body_json(r: reqwest::Response) -> serde_json::Value {
    let t = r.text().await.unwrap();
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// Records are written in batches: poll until `n` are there (or 5 s pass).
pub async fn records(d: &Daemon, name: &str, n: usize) -> Vec<serde_json::Value> {
    let c = d.client();
    for _ in 0..100 {
        let v = body_json(
            c.get(format!("{}/api/v1/functions/{name}/invocations?limit=100", d.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let v = v.as_array().cloned().unwrap_or_default();
        if v.len() >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} records of {name}");
}

/// GET a daemon path and return the body as JSON.
pub async fn get_json(d: &Daemon, path: &str) -> serde_json::Value {
    body_json(d.client().get(format!("{}{path}", d.url)).send().await.unwrap()).await
}

/// GET a daemon path and return the body as text.
pub async fn get_text(d: &Daemon, path: &str) -> String {
    d.client()
        .get(format!("{}{path}", d.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
