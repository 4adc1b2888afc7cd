//! Where the external binaries are. In CI (`CI=true`) a missing tool fails
//! the test; elsewhere the test says it skipped and returns.

use std::path::{Path, PathBuf};

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// The `ferrocd` binary: `FERROCD_BIN`, else the one built next to the test.
pub fn ferrocd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERROCD_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("ferrocd")
}

/// A program of this workspace, from the same build as the running test
/// (`ferrocdutl` next to `$FERROCD_BIN` when that is set).
pub fn sibling_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("FERROCD_BIN") {
        return PathBuf::from(p).with_file_name(name);
    }
    // Test executables live in target/<profile>/deps/, programs such as
    // ferrocd-bench in target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()];
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "{} is missing: run `cargo build -p ferrocd -p ferrocd-operator` first (scripts/test.sh does)",
            candidates[1].display()
        )
    })
}

/// An installed external tool (`etcdctl-3.4`, `etcdctl-3.5`, `etcd-3.5`,
/// `etcdutl-3.5`), from its env override or `.tools/bin`.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let env_name = name.to_uppercase().replace(['-', '.'], "_");
    let path = std::env::var_os(&env_name)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin").join(name));
    if path.exists() {
        return Some(path);
    }
    missing(&format!("{name} not installed at {} (or ${env_name}); run scripts/install-test-deps.sh", path.display()));
    None
}

/// Something a test needs is not here: in CI (`CI=true`) the test fails;
/// elsewhere it says so and the caller skips.
pub fn missing(msg: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
}
