//! Require a cosign signature, verified by the proxy with the trust named in the settings.
//!
//! Settings: `{"trust": "release-keys"}` (a `[trust.<name>]` of proxy.toml) and/or
//! `{"keys": ["-----BEGIN PUBLIC KEY-----..."]}`, optionally `"threshold": 2`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });
include!("../../classify/src/guest.rs");

use portcullis::policy::types::Requirements;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    trust: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    threshold: u32,
}

fn settings(text: &str) -> Result<Settings, String> {
    let s: Settings = serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?;
    if s.trust.is_none() && s.keys.is_empty() {
        return Err("settings: name a \"trust\" or give \"keys\"".into());
    }
    Ok(s)
}

/// The decision: attachments pass (they are what clients verify with); images must verify.
fn decide(request: &Request, s: &Settings) -> Decision {
    if is_attachment(request) {
        return Decision::Admit;
    }
    Decision::Verify(Requirements {
        trust: s.trust.iter().cloned().collect(),
        keys: s.keys.clone(),
        identities: vec![],
        attestations: vec![],
        threshold: s.threshold,
    })
}

struct RequireSignature;

impl Guest for RequireSignature {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "require-signature".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec!["verify".into()] }
    }

    fn validate_settings(text: String) -> Result<(), String> {
        settings(&text).map(|_| ())
    }

    fn evaluate(request: Request, text: String) -> Decision {
        match settings(&text) {
            Ok(s) => decide(&request, &s),
            Err(e) => Decision::Reject(e),
        }
    }
}

export!(RequireSignature);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::policy::types::{Client, Descriptor, ManifestInfo, Operation};

    fn layer(media_type: &str) -> Descriptor {
        Descriptor { media_type: media_type.into(), digest: "sha256:22".into(), size: 2, artifact_type: None, annotations: vec![] }
    }

    fn request(attaches_to: Option<&str>, layer_type: &str) -> Request {
        let config = layer("application/vnd.oci.image.config.v1+json");
        Request {
            operation: Operation::Pull,
            namespace: "docker.io".into(),
            repository: "myorg/app".into(),
            reference: "v1".into(),
            digest: "sha256:00".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 2,
            manifest: ManifestInfo {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                config: Some(config),
                layers: vec![layer(layer_type)],
                manifests: vec![],
                annotations: vec![],
                subject: None,
                artifact_type: None,
            },
            attachments: vec![],
            attaches_to: attaches_to.map(String::from),
            client: Client { address: "127.0.0.1".into(), user: None, user_agent: None },
        }
    }

    const SIGNATURE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    const FILESYSTEM: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn images_must_verify_with_the_named_trust() {
        let s = settings(r#"{"trust":"release-keys","threshold":2}"#).unwrap();
        match decide(&request(None, FILESYSTEM), &s) {
            Decision::Verify(r) => {
                assert_eq!(r.trust, vec!["release-keys".to_string()]);
                assert_eq!(r.threshold, 2);
            }
            _ => panic!("expected verify"),
        }
    }

    #[test]
    fn attachments_are_admitted() {
        let s = settings(r#"{"trust":"t"}"#).unwrap();
        assert!(matches!(decide(&request(Some("sha256:11"), SIGNATURE), &s), Decision::Admit));
    }

    #[test]
    fn a_runnable_image_marked_as_an_attachment_must_still_verify() {
        let s = settings(r#"{"trust":"t"}"#).unwrap();
        assert!(matches!(decide(&request(Some("sha256:11"), FILESYSTEM), &s), Decision::Verify(_)));
    }

    #[test]
    fn settings_need_trust_or_keys() {
        assert!(settings("{}").is_err());
        assert!(settings(r#"{"trust":"t","colour":1}"#).is_err());
    }
}
