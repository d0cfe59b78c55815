//! `cargo xtask bench`: the end-to-end benchmark (filled in below).

use std::path::Path;

pub fn run(_repo: &Path, _args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
