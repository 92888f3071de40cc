//! Policy decision cost, cold (fresh instance + evaluate) and cached (through the proxy's
//! decision cache), for the `deny-tags` example in Rust, JavaScript and Python (the last two
//! when policies/build-guests.sh built them). Needs the example policies built (`tests/run.sh`
//! builds them): `cargo bench --bench policy`.

use std::path::Path;

use portcullis::policy::{bench, TestRequest};

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rust = root.join("policies/target/wasm32-wasip2/release/deny_tags.wasm");
    anyhow::ensure!(
        rust.exists(),
        "build the policies first: (cd policies && cargo build --release --target wasm32-wasip2)"
    );
    // `cargo bench` passes --bench; anything else (`cargo test`, --quick) is a short smoke run
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--quick");
    let request: TestRequest = serde_json::from_str(&format!(
        r#"{{"namespace":"bench","repository":"app","reference":"v1","manifest":{MANIFEST}}}"#
    ))?;
    println!("| policy decision, deny-tags | cold (fresh instance + evaluate) | cached (the proxy's decision path, incl. audit line; the module does not run) |");
    println!("|---|---|---|");
    let modules = [
        ("Rust", rust, if quick { 200 } else { 5000 }),
        (
            "JavaScript",
            root.join("policies/target/guests/deny-tags-js.wasm"),
            if quick { 5 } else { 200 },
        ),
        (
            "Python",
            root.join("policies/target/guests/deny-tags-py.wasm"),
            if quick { 5 } else { 200 },
        ),
    ];
    for (lang, module, n) in modules {
        if !module.exists() {
            println!("| {lang} | not measured: run policies/build-guests.sh | |");
            continue;
        }
        let f = bench(&module, r#"{"tags":["latest"]}"#, &request, n)?;
        anyhow::ensure!(f.decision == "decision: admit", "{lang}: {}", f.decision);
        println!(
            "| {lang} | {:.1} us | {:.2} us |",
            f.cold.as_secs_f64() * 1e6,
            f.cached.as_secs_f64() * 1e6
        );
    }
    println!("goals: cold < 20 us in Rust and < 5 ms in JavaScript and Python; cached < 1 us (< 5 us for every language)");
    Ok(())
}
