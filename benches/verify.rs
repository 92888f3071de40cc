//! Key-based signature verification cost: one cold ECDSA P-256 verification of a cosign
//! simple-signing payload, through the sigstore crate; and a cached verdict (cache key over the
//! requirement and the attachment set, then the lookup). `cargo bench --bench verify`.

use std::time::Instant;

use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePublicKey;
use std::sync::Arc;

use portcullis::attachments::{Attachment, AttachmentSet, Kind};
use portcullis::manifest::Descriptor;
use portcullis::verify::{ImageRef, Requirement, TrustedKey, Verdict, VerdictCache};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; anything else (`cargo test`, --quick) is a short smoke run
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--quick");
    let n = if quick { 200 } else { 5000 };
    let key = p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into())?;
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)?;
    let payload = br#"{"critical":{"identity":{"docker-reference":"registry.example/app"},"image":{"docker-manifest-digest":"sha256:2ea0dac098f62fc0da932e532218e1ae21fd3956320c69225acff8c1e9ac0622"},"type":"cosign container image signature"},"optional":null}"#;
    let sig: p256::ecdsa::Signature = key.sign(payload);
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sig.to_der().as_bytes(),
    );
    let trusted = TrustedKey::from_pem("bench", pem.as_bytes()).map_err(anyhow::Error::msg)?;
    assert!(trusted.check(&b64, payload));
    let started = Instant::now();
    for _ in 0..n {
        assert!(trusted.check(&b64, payload));
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("| verification | per signature | goal |");
    println!("|---|---|---|");
    println!("| key-based ECDSA P-256, cold | {us:.1} us | < 300 us |");
    println!("| verifications per second | {:.0} | |", 1e6 / us);
    let cached = cached_verdict_us(trusted, if quick { 2000 } else { 200_000 })?;
    println!("| cached verdict (key + lookup) | {cached:.2} us | |");
    println!("| cached verdicts per second | {:.0} | |", 1e6 / cached);
    Ok(())
}

/// Microseconds per cached verdict lookup for a requirement with one key and an image with a
/// signature and an attestation.
fn cached_verdict_us(key: TrustedKey, n: usize) -> anyhow::Result<f64> {
    let digest: portcullis::names::Digest =
        "sha256:2ea0dac098f62fc0da932e532218e1ae21fd3956320c69225acff8c1e9ac0622"
            .parse()
            .map_err(|e: portcullis::error::RegistryError| anyhow::anyhow!(e.message))?;
    let item = |kind, tag: &str| Attachment {
        kind,
        tag: Some(tag.to_string()),
        descriptor: Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.clone(),
            size: 400,
            artifact_type: None,
            annotations: None,
            platform: None,
        },
    };
    let set = AttachmentSet {
        items: vec![item(Kind::Signature, "sig"), item(Kind::Attestation, "att")],
    };
    let requested = ImageRef::parse("registry.example/app:v1");
    let req = Requirement {
        keys: vec![key],
        ..Requirement::default()
    };
    let cache = VerdictCache::new();
    let verdict = Arc::new(Verdict {
        ok: true,
        reason: "verified".into(),
        signatures: vec![],
        attestations: vec![],
        statements: vec![],
    });
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        cache
            .insert(
                VerdictCache::key("docker.io/app", &requested, &digest, &req, &set),
                verdict,
            )
            .await;
        let started = Instant::now();
        for _ in 0..n {
            let key = VerdictCache::key("docker.io/app", &requested, &digest, &req, &set);
            assert!(cache.get(&key).await.is_some());
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
    })
}
