//! Function dependencies: `requirements.txt` installed once per set into a shared, read-only
//! layer (real pip, real PyPI).

use crate::harness::*;

const JINJA: &str = "\
from jinja2 import Template

def handle(req):
    return Template('Hello, {{ name }}! {{ items|join(\",\") }}').render(name=req.text(), items=[1, 2, 3])
";

const GRAPH: &str = "\
import networkx as nx

def handle(req):
    g = nx.Graph([(1, 2), (2, 3), (3, 4), (1, 5)])
    return {'bfs': [int(n) for n in nx.bfs_tree(g, 1)], 'version': nx.__version__}
";

#[tokio::test(flavor = "multi_thread")]
async fn requirements_are_installed_once_per_set_and_imported_from_the_layer() {
    let d = Daemon::start();
    let jinja = function_dir(&[
        (
            "strata.toml",
            "name = \"render\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("requirements.txt", "# templates\njinja2==3.1.4\n"),
        ("main.py", JINJA),
    ]);
    let out = d.deploy(jinja.path());
    assert!(out.contains("dependencies installed"), "{out}");
    assert!(out.contains("jinja2==3.1.4") && out.contains("markupsafe=="), "{out}");
    let c = d.client();
    let r = c.post(d.fn_url("render")).body("strata").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello, strata! 1,2,3");

    // The same set in another function (comments and blank lines aside): the cached layer.
    let again = function_dir(&[
        (
            "strata.toml",
            "name = \"render2\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("requirements.txt", "\njinja2==3.1.4   # same set\n"),
        ("main.py", JINJA),
    ]);
    let out = d.deploy(again.path());
    assert!(out.contains("cached, nothing installed"), "{out}");
    let r = c.post(d.fn_url("render2")).body("again").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello, again! 1,2,3");
    let described = body_json(
        c.get(format!("{}/api/v1/functions/render2", d.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let deps = &described["dependencies"];
    assert!(deps["layer"].as_str().unwrap().starts_with("py-"), "{described}");
    assert!(deps["size_bytes"].as_u64().unwrap() > 100_000, "{described}");
    assert!(
        deps["packages"].as_array().unwrap().contains(&"jinja2==3.1.4".into()),
        "{described}"
    );

    let graph = function_dir(&[
        (
            "strata.toml",
            "name = \"graph\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("requirements.txt", "networkx==3.2.1\n"),
        ("main.py", GRAPH),
    ]);
    d.deploy(graph.path());
    let r = c.get(d.fn_url("graph")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        body_json(r).await,
        serde_json::json!({"bfs": [1, 2, 5, 3, 4], "version": "3.2.1"})
    );

    // Isolation: a function without requirements sees no layer, cannot import another
    // function's packages, and cannot reach the network to fetch them.
    let other = function_dir(&[
        (
            "strata.toml",
            "name = \"nodeps\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        (
            "main.py",
            "import os, socket, subprocess, sys\n\ndef handle(req):\n    try:\n        import jinja2\n        imported = True\n    except ImportError:\n        imported = False\n    try:\n        socket.create_connection(('pypi.org', 443), timeout=2).close()\n        net = 'reached'\n    except OSError as e:\n        net = type(e).__name__\n    pip = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--retries', '0', '--timeout', '2', '-d', '/tmp/dl', 'six==1.16.0'], capture_output=True, text=True)\n    if pip.returncode == 0:\n        net = 'pip downloaded'\n    layer = os.listdir('/strata/deps') if os.path.isdir('/strata/deps') else []\n    return {'layer': layer, 'jinja2': imported, 'net': net}\n",
        ),
    ]);
    d.deploy(other.path());
    let r = c.get(d.fn_url("nodeps")).send().await.unwrap();
    let v = body_json(r).await;
    // (An empty mount point may exist: the root template holds every mount point.)
    assert_eq!(v["layer"], serde_json::json!([]), "no layer is mounted: {v}");
    assert_eq!(v["jinja2"], false, "{v}");
    assert!(
        v["net"] != "reached" && v["net"] != "pip downloaded",
        "no network from a sandbox, for sockets or pip: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_requirement_fails_the_deploy_and_the_active_version_keeps_serving() {
    let d = Daemon::start();
    let good = function_dir(&[
        (
            "strata.toml",
            "name = \"steady\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("main.py", "def handle(req):\n    return 'v1'\n"),
    ]);
    d.deploy(good.path());
    let bad = function_dir(&[
        (
            "strata.toml",
            "name = \"steady\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("requirements.txt", "strata-no-such-package-anywhere==0.0.1\n"),
        ("main.py", "def handle(req):\n    return 'v2'\n"),
    ]);
    let out = d.cli(&["deploy", bad.path().to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("requirements.txt"), "{text}");
    assert!(
        text.contains("No matching distribution found for strata-no-such-package-anywhere"),
        "the installer's own message: {text}"
    );
    // Installer options never reach pip: they would read host files or change the index.
    std::fs::write(bad.path().join("requirements.txt"), "six\n-r /etc/shadow\n").unwrap();
    let out = d.cli(&["deploy", bad.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("requirements.txt: line 2 \"-r /etc/shadow\": installer options are not allowed"),
        "{text}"
    );
    let r = d.client().get(d.fn_url("steady")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_function_uses_a_package_from_npm() {
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"ids\"\nruntime = \"node\"\nhandler = \"index:handle\"\n",
        ),
        (
            "package.json",
            "{\"name\": \"ids\", \"version\": \"1.0.0\", \"dependencies\": {\"uuid\": \"9.0.1\"}}\n",
        ),
        (
            "index.js",
            "const { v4, validate, version } = require('uuid');\nexports.handle = async () => { const id = v4(); return { valid: validate(id), v: version(id) }; };\n",
        ),
    ]);
    let out = d.deploy(f.path());
    assert!(
        out.contains("dependencies installed") && out.contains("uuid==9.0.1"),
        "{out}"
    );
    assert!(
        out.contains("  | added 1 package"),
        "npm's output streams to the CLI: {out}"
    );
    let r = d.client().get(d.fn_url("ids")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await, serde_json::json!({"valid": true, "v": 4}));
    // Redeploying the same set (a new version: the code changed) installs nothing.
    std::fs::write(
        f.path().join("index.js"),
        "const { validate } = require('uuid');\nexports.handle = async () => validate('not-a-uuid');\n",
    )
    .unwrap();
    let out = d.deploy(f.path());
    assert!(out.contains("cached, nothing installed"), "{out}");
    let r = d.client().get(d.fn_url("ids")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "false");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_over_the_size_limit_fails_the_deploy() {
    let d = Daemon::start_with(&["--max-layer-size", "64KiB"]);
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"big\"\nruntime = \"python\"\nhandler = \"main:handle\"\n",
        ),
        ("requirements.txt", "jinja2==3.1.4\n"),
        ("main.py", "def handle(req):\n    return 'x'\n"),
    ]);
    let out = d.cli(&["deploy", f.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("over the limit of 65536 bytes"), "{text}");
    let r = d.client().get(d.fn_url("big")).send().await.unwrap();
    assert_eq!(r.status(), 404, "nothing was activated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_native_addon_loads_inside_the_sandbox() {
    // @node-rs/crc32 is a compiled addon (a `.node` shared library), shipped prebuilt for
    // each platform as an optional dependency: no install script needed.
    let d = Daemon::start();
    let f = function_dir(&[
        (
            "strata.toml",
            "name = \"crc\"\nruntime = \"node\"\nhandler = \"index:handle\"\n",
        ),
        (
            "package.json",
            "{\"name\": \"crc\", \"version\": \"1.0.0\", \"dependencies\": {\"@node-rs/crc32\": \"1.10.6\"}}\n",
        ),
        (
            "index.js",
            "const { crc32 } = require('@node-rs/crc32');\nconst addon = require.resolve('@node-rs/crc32-linux-x64-gnu');\nexports.handle = async (req) => ({ crc: crc32(req.text()), addon: addon.endsWith('.node') });\n",
        ),
    ]);
    d.deploy(f.path());
    let r = d.client().post(d.fn_url("crc")).body("hello").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        body_json(r).await,
        serde_json::json!({"crc": 907060870u32, "addon": true})
    );
}
