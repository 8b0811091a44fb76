//! Build script: records the git commit for `relay_build_info`.
//!
//! `RELAY_GIT_SHA` in the build environment wins (for builds without `.git`,
//! e.g. a container build given the commit as a build argument); otherwise
//! `git rev-parse`, re-run whenever the checked-out commit changes.
fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_GIT_SHA");
    let from_env = std::env::var("RELAY_GIT_SHA")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let sha = from_env.unwrap_or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    });
    println!("cargo:rustc-env=RELAY_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    // HEAD usually names a branch: its ref file (or packed-refs) changes on
    // every commit, HEAD itself does not.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            // Only existing paths: a missing one would re-run this script
            // (and rebuild the crate) on every build.
            for path in [format!(".git/{branch}"), ".git/packed-refs".to_owned()] {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
}
