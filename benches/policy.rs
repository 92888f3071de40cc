//! Policy decision cost: cold (fresh instance + evaluate; Rust, and the JavaScript and Python
//! examples when policies/build-guests.sh built them) and cached (through the proxy's decision
//! cache). Needs the example policies built (`tests/run.sh` builds them):
//! `cargo bench --bench policy`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::policy::{Policies, Standalone, Subject, TestRequest};
use portcullis::verify::Verifier;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn per_op(total: Duration, n: u32) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let module = root.join("policies/target/wasm32-wasip2/release/deny_tags.wasm");
    anyhow::ensure!(
        module.exists(),
        "build the policies first: (cd policies && cargo build --release --target wasm32-wasip2)"
    );
    // `cargo bench` passes --bench; anything else (`cargo test`, --quick) is a short smoke run
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--quick");
    let n: u32 = if quick { 200 } else { 5000 };

    let request: TestRequest = serde_json::from_str(&format!(
        r#"{{"namespace":"bench","repository":"app","reference":"v1","manifest":{MANIFEST}}}"#
    ))?;
    let standalone = Standalone::new(&module, r#"{"tags":["latest"]}"#, &request)?;
    for _ in 0..50 {
        standalone.evaluate();
    }
    let started = Instant::now();
    for _ in 0..n {
        let (decision, _) = standalone.evaluate();
        assert_eq!(decision, "decision: admit");
    }
    let cold = per_op(started.elapsed(), n);

    let dir = tempfile::tempdir()?;
    let text = format!(
        "[storage]\npath = \"data\"\n[[local]]\nname = \"bench\"\n[policies]\naudit = \"audit.log\"\n[[policy]]\nname = \"deny-tags\"\nmodule = \"{}\"\nscope = [\"bench/*\"]\n",
        module.display()
    );
    let config =
        Config::from_toml_str(&text, "bench.toml", dir.path()).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cached = runtime.block_on(async {
        let services = portcullis::server::services(&config, false).await?;
        let verifier = Verifier::new(
            Arc::clone(&services.cache),
            Arc::clone(&services.attachments),
            Duration::from_secs(1),
        );
        let policies = Policies::new(&config, services.cache, services.attachments, verifier)?;
        let subject = Subject {
            push: false,
            namespace: "bench".into(),
            repository: "app".into(),
            reference: "v1".into(),
            digest: portcullis::names::Digest::sha256_of(MANIFEST.as_bytes()).to_string(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: bytes::Bytes::from_static(MANIFEST.as_bytes()),
            attaches_to: None,
            client: "bench".into(),
            user: None,
            user_agent: None,
        };
        policies
            .check(&subject)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let started = Instant::now();
        for _ in 0..n {
            policies
                .check(&subject)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        anyhow::Ok(per_op(started.elapsed(), n))
    })?;

    let guests: Vec<(&str, String)> = [("JavaScript", "js"), ("Python", "py")]
        .into_iter()
        .map(|(lang, tag)| (lang, guest_cold(root, tag, &request, quick)))
        .collect();

    println!("| policy decision | per decision | goal |");
    println!("|---|---|---|");
    println!("| cold (fresh instance + evaluate), deny-tags (Rust) | {cold:.1} us | < 20 us |");
    for (lang, figure) in guests {
        println!("| cold (fresh instance + evaluate), deny-tags ({lang}) | {figure} | < 5 ms |");
    }
    println!("| cached (proxy decision path, incl. audit line; the same for every language: the module does not run) | {cached:.2} us | < 1 us |");
    Ok(())
}

/// The cold decision time of the JavaScript or Python deny-tags (`tag` js or py), or why none.
fn guest_cold(root: &Path, tag: &str, request: &TestRequest, quick: bool) -> String {
    let module = root.join(format!("policies/target/guests/deny-tags-{tag}.wasm"));
    if !module.exists() {
        return "not measured: run policies/build-guests.sh".into();
    }
    let standalone = match Standalone::new(&module, r#"{"tags":["latest"]}"#, request) {
        Ok(s) => s,
        Err(e) => return format!("not measured: {e:#}"),
    };
    for _ in 0..5 {
        standalone.evaluate();
    }
    let n = if quick { 5 } else { 200 };
    let started = Instant::now();
    for _ in 0..n {
        let (decision, _) = standalone.evaluate();
        assert_eq!(decision, "decision: admit", "{tag}");
    }
    format!("{:.0} us", per_op(started.elapsed(), n))
}
