//! `portcullis policy new`: a policy project in Rust, JavaScript or Python that builds as it is
//! written and whose test passes (templates in `policies/templates/`; the Rust SDK and the WIT
//! world are copied in, so the project needs nothing from this repository).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The language of a new policy project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, on the `portcullis-policy` SDK (copied into `sdk/`).
    Rust,
    /// JavaScript, built with componentize-js.
    Js,
    /// Python, built with componentize-py.
    Python,
}

const WIT: &str = include_str!("../../wit/policy.wit");
const README: &str = include_str!("../../policies/templates/README.md");
const REQUEST: &str = include_str!("../../policies/templates/request.json");
const SETTINGS: &str = include_str!("../../policies/templates/settings.json");

/// The files of a project in `lang`, as (path, template).
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![
        ("README.md", README),
        ("request.json", REQUEST),
        ("settings.json", SETTINGS),
    ];
    files.extend(match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../policies/templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../policies/templates/rust/src/lib.rs"),
            ),
            (
                "sdk/Cargo.toml",
                include_str!("../../policies/sdk/Cargo.toml"),
            ),
            (
                "sdk/src/lib.rs",
                include_str!("../../policies/sdk/src/lib.rs"),
            ),
            ("sdk/wit/policy.wit", WIT),
            (
                "classify/Cargo.toml",
                include_str!("../../policies/classify/Cargo.toml"),
            ),
            (
                "classify/src/lib.rs",
                include_str!("../../policies/classify/src/lib.rs"),
            ),
        ],
        Lang::Js => vec![
            (
                "policy.js",
                include_str!("../../policies/templates/js/policy.js"),
            ),
            (
                "test.mjs",
                include_str!("../../policies/templates/js/test.mjs"),
            ),
            (
                "package.json",
                include_str!("../../policies/templates/js/package.json"),
            ),
            ("build.mjs", include_str!("../../policies/js/build.mjs")),
            ("wit/policy.wit", WIT),
        ],
        Lang::Python => vec![
            (
                "policy.py",
                include_str!("../../policies/templates/python/policy.py"),
            ),
            (
                "test_policy.py",
                include_str!("../../policies/templates/python/test_policy.py"),
            ),
            (
                "build.sh",
                include_str!("../../policies/templates/python/build.sh"),
            ),
            (
                "test.sh",
                include_str!("../../policies/templates/python/test.sh"),
            ),
            ("wit/policy.wit", WIT),
        ],
    });
    files
}

/// How the project is built and tested, and the module it builds (for its README).
fn commands(lang: Lang, name: &str) -> (String, String) {
    match lang {
        Lang::Rust => (
            "rustup target add wasm32-wasip2   # once\ncargo test\ncargo build --release --target wasm32-wasip2".into(),
            format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
        ),
        Lang::Js => (
            "npm install\nnpm test\nnpm run build".into(),
            format!("{name}.wasm"),
        ),
        Lang::Python => (
            "pip install componentize-py==0.25.1\n./test.sh\n./build.sh".into(),
            format!("{name}.wasm"),
        ),
    }
}

/// Checks a project name: lower-case letters, digits and `-`, starting with a letter (it names
/// a crate, an npm package and a file).
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        ok,
        "{name:?} is not a policy name: use lower-case letters, digits and '-', starting with a letter"
    );
    Ok(())
}

/// Writes a new policy project named `name` in `lang` into `dir` (which must not exist);
/// returns the files written.
pub fn new_project(dir: &Path, name: &str, lang: Lang) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    anyhow::ensure!(
        !dir.exists(),
        "{} exists already; choose another directory",
        dir.display()
    );
    let language = match lang {
        Lang::Rust => "Rust",
        Lang::Js => "JavaScript",
        Lang::Python => "Python",
    };
    let (build, module) = commands(lang, name);
    let mut written = Vec::new();
    for (path, template) in files(lang) {
        let text = template
            .replace("{{name}}", name)
            .replace("{{language}}", language)
            .replace("{{build}}", &build)
            .replace("{{module}}", &module);
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap_or(dir))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = std::env::temp_dir().join(format!("scaffold-{}", uuid::Uuid::new_v4()));
        for bad in ["", "My-Policy", "1st", "a/b", "../x", "a b"] {
            assert!(
                new_project(&dir.join("p"), bad, Lang::Rust).is_err(),
                "{bad}"
            );
        }
        let files = new_project(&dir, "no-root", Lang::Rust).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("const NAME: &'static str = \"no-root\";"));
        assert!(files
            .iter()
            .all(|f| !std::fs::read_to_string(f).unwrap().contains("{{")));
        assert!(new_project(&dir, "no-root", Lang::Js).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
