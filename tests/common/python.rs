//! The Python venv of the gRPC suites (`tests/python`), created on first use by
//! `tests/python/ensure_venv.sh` (safe to run concurrently) and reused afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, creating the venv at `target/pyenv` (or under `CARGO_TARGET_DIR`) if needed.
pub fn python() -> PathBuf {
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = target_tmp.parent().expect("target dir").join("pyenv");
    let out = Command::new("bash")
        .arg(repo().join("tests/python/ensure_venv.sh"))
        .arg(&venv)
        .output()
        .expect("run tests/python/ensure_venv.sh");
    assert!(
        out.status.success(),
        "could not create the Python venv at {}:\n{}\n{}",
        venv.display(),
        super::stdout(&out),
        super::stderr(&out)
    );
    venv.join("bin/python")
}

/// Runs pytest on `target` (a file or directory under the repository) with `env` set.
pub fn pytest(target: &str, env: &[(&str, String)]) -> Output {
    let mut command = Command::new(python());
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", target])
        .current_dir(repo());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run pytest")
}
