//! Checks of the packaging files that CI cannot build here (there is no
//! Docker on these machines): the Dockerfile's dependency-caching stage
//! must stub every bench and example target that Cargo.toml names (cargo
//! refuses a manifest whose target files are missing, even to build only
//! `--bin relay`), and the real-sources stage must copy their folders.

use std::path::Path;

/// The `name` of every `[[section]]` table in a Cargo manifest.
fn target_names(manifest: &str, section: &str) -> Vec<String> {
    let header = format!("[[{section}]]");
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "name" {
                names.push(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    names
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn the_dockerfile_stubs_and_copies_every_named_target() {
    let manifest = read("Cargo.toml");
    let dockerfile = read("docker/Dockerfile");
    let ignored = read(".dockerignore");
    let mut checked = 0;
    for (section, dir) in [("bench", "benches"), ("example", "examples")] {
        for name in target_names(&manifest, section) {
            let stub = format!("> {dir}/{name}.rs");
            assert!(
                dockerfile.contains(&stub),
                "docker/Dockerfile's stub stage must create {dir}/{name}.rs \
                 (Cargo.toml names the {section} `{name}`)"
            );
            let copy = format!("COPY {dir}/ {dir}/");
            assert!(
                dockerfile.contains(&copy),
                "docker/Dockerfile must `{copy}`"
            );
            assert!(
                !ignored
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == dir),
                ".dockerignore must not leave {dir}/ out of the build context"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the bench and the example are named in Cargo.toml"
    );
}

#[test]
fn target_names_reads_only_the_asked_section() {
    let manifest = "[package]\nname = \"relay\"\n\n[[bench]]\nname = \"hot_path\"\nharness = false\n\n[[example]]\nname = \"floor\"\ntest = true\n";
    assert_eq!(target_names(manifest, "bench"), ["hot_path"]);
    assert_eq!(target_names(manifest, "example"), ["floor"]);
    assert!(target_names(manifest, "bin").is_empty());
}
