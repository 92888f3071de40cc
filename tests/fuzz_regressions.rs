//! Replays every input a fuzz target once crashed on (`fuzz/regressions/<target>/`), and the
//! seed corpus, through the same checks the fuzz targets run: none may panic.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// A fuzz target's name and its checks.
type Target = (&'static str, fn(&[u8]));

#[test]
fn fuzz_regressions_and_seeds_replay_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let targets: [Target; 4] = [
        ("route", checks::route),
        ("names", checks::names),
        ("manifest", checks::manifest),
        ("attachments", checks::attachments),
    ];
    let mut replayed = 0;
    for (name, check) in targets {
        for kind in ["regressions", "seeds"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                check(&std::fs::read(entry.path()).unwrap());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 10, "the seed corpus is there: {replayed}");
}
