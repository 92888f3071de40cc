//! Signatures written the way containers/image writes them (simple signing, tag in the
//! identity), signed with a P-256 key made in the test; optionally wrong on purpose.

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::EncodePublicKey;

use super::{push_blob, push_manifest, sha256, Registry};

/// A P-256 signing key and its PEM public key written to `dir/<name>.pub`.
pub fn p256_key(dir: &std::path::Path, name: &str, seed: u8) -> p256::ecdsa::SigningKey {
    let key = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.pub")), pem).unwrap();
    key
}

/// How to spoil a signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Spoil {
    /// A correct signature.
    None,
    /// The payload changed after signing.
    TamperedPayload,
    /// A correct signature over a payload naming another digest.
    OtherDigest,
}

/// Pushes `sha256-<hex>.sig` for `image_digest` in `repo`, one layer per key, claiming `identity`.
pub fn push_cimage_signature(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    identity: &str,
    keys: &[&p256::ecdsa::SigningKey],
    spoil: Spoil,
) {
    let named = if spoil == Spoil::OtherDigest {
        sha256(b"another manifest")
    } else {
        image_digest.to_string()
    };
    let mut signed = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{identity}"}},"image":{{"docker-manifest-digest":"{named}"}},"type":"cosign container image signature"}},"optional":{{"creator":"test","timestamp":{}}}}}"#,
            1795610943 + i
        );
        let sig: p256::ecdsa::Signature = key.sign(payload.as_bytes());
        let sig_b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        let stored = if spoil == Spoil::TamperedPayload {
            payload.replace("test", "evil")
        } else {
            payload
        };
        signed.push((stored, sig_b64));
    }
    push_signature_manifest(reg, repo, image_digest, &signed);
}

/// How an ECDSA signature is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// ASN.1 DER, as cosign writes it.
    Der,
    /// `r||s`, fixed size (IEEE P1363), as some KMS and HSM signers give it.
    P1363,
}

/// Pushes `sha256-<hex>.sig` for `image_digest` in `repo`: one simple-signing layer holding
/// `payload` exactly as given, signed by `key` (for payloads and encodings cosign does not
/// write itself).
pub fn push_payload_signature(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    payload: &str,
    key: &p256::ecdsa::SigningKey,
    encoding: Encoding,
) {
    let sig: p256::ecdsa::Signature = key.sign(payload.as_bytes());
    let bytes = match encoding {
        Encoding::Der => sig.to_der().as_bytes().to_vec(),
        Encoding::P1363 => sig.to_bytes().to_vec(),
    };
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    push_signature_manifest(reg, repo, image_digest, &[(payload.to_string(), sig_b64)]);
}

/// Pushes the signature manifest of `(payload, base64 signature)` layers.
fn push_signature_manifest(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    signed: &[(String, String)],
) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (stored, sig_b64) in signed {
        let d = push_blob(reg, repo, stored.as_bytes());
        diff_ids.push(format!("\"{d}\""));
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{d}","size":{},"annotations":{{"dev.cosignproject.cosign/signature":"{sig_b64}"}}}}"#,
            stored.len()
        ));
    }
    let config = format!(
        r#"{{"architecture":"","os":"","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = push_blob(reg, repo, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layers.join(",")
    );
    let tag = format!("{}.sig", image_digest.replace(':', "-"));
    push_manifest(
        reg,
        repo,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
}
