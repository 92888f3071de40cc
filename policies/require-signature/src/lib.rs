//! Require a cosign signature, verified by the proxy with the trust named in the settings.
//!
//! Settings: `{"trust": "release-keys"}` (a `[trust.<name>]` of proxy.toml) and/or
//! `{"keys": ["-----BEGIN PUBLIC KEY-----..."]}`, optionally `"threshold": 2` and
//! `"signed_identity"`: which image names the signatures may claim, written as in
//! containers-policy.json (`{"type": "exactRepository", "dockerRepository": "..."}`,
//! `matchRepoDigestOrExact`, `matchRepository`, `exactReference` with `dockerReference`,
//! `remapIdentity` with `prefix` and `signedPrefix`; by default `matchRepository`).

use portcullis_policy::{is_attachment, Decision, Policy, Remap, Request, Requirements, SignedIdentity};

/// containers-policy.json's `signedIdentity`.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Identity {
    MatchRepoDigestOrExact,
    MatchRepository,
    #[serde(rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename_all = "camelCase")]
    RemapIdentity { prefix: String, signed_prefix: String },
}

impl Identity {
    fn rule(&self) -> SignedIdentity {
        match self {
            Identity::MatchRepoDigestOrExact => SignedIdentity::MatchRepoDigestOrExact,
            Identity::MatchRepository => SignedIdentity::MatchRepository,
            Identity::ExactReference { docker_reference } => SignedIdentity::ExactReference(docker_reference.clone()),
            Identity::ExactRepository { docker_repository } => SignedIdentity::ExactRepository(docker_repository.clone()),
            Identity::RemapIdentity { prefix, signed_prefix } => {
                SignedIdentity::RemapIdentity(Remap { prefix: prefix.clone(), signed_prefix: signed_prefix.clone() })
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    trust: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    threshold: u32,
    signed_identity: Option<Identity>,
}

struct RequireSignature;

impl Policy for RequireSignature {
    const NAME: &'static str = "require-signature";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &["verify"];
    type Settings = Settings;

    fn check(s: &Settings) -> Result<(), String> {
        match s.trust.is_none() && s.keys.is_empty() {
            true => Err("name a \"trust\" or give \"keys\"".into()),
            false => Ok(()),
        }
    }

    /// Attachments pass (they are what clients verify with); images must verify.
    fn evaluate(request: &Request, s: &Settings) -> Decision {
        if is_attachment(request) {
            return Decision::Admit;
        }
        Decision::Verify(Requirements {
            trust: s.trust.iter().cloned().collect(),
            keys: s.keys.clone(),
            threshold: s.threshold,
            signed_identity: s.signed_identity.as_ref().map(Identity::rule),
            ..Requirements::default()
        })
    }
}

portcullis_policy::export!(RequireSignature);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{image, request, signature, FILESYSTEM};

    fn decide(request: &Request, settings: &str) -> Decision {
        portcullis_policy::evaluate::<RequireSignature>(request, settings)
    }

    #[test]
    fn images_must_verify_with_the_named_trust() {
        match decide(&image("v1"), r#"{"trust":"release-keys","threshold":2}"#) {
            Decision::Verify(r) => {
                assert_eq!(r.trust, vec!["release-keys".to_string()]);
                assert_eq!(r.threshold, 2);
            }
            _ => panic!("expected verify"),
        }
    }

    #[test]
    fn the_signed_identity_is_written_as_in_policy_json() {
        let settings = r#"{"trust":"t","signed_identity":{"type":"exactRepository","dockerRepository":"docker.io/myorg/app"}}"#;
        match decide(&image("v1"), settings) {
            Decision::Verify(r) => {
                assert!(matches!(r.signed_identity, Some(SignedIdentity::ExactRepository(ref name)) if name == "docker.io/myorg/app"))
            }
            _ => panic!("expected verify"),
        }
        let unknown = r#"{"trust":"t","signed_identity":{"type":"matchEverything"}}"#;
        assert!(portcullis_policy::settings::<RequireSignature>(unknown).is_err());
    }

    #[test]
    fn attachments_are_admitted() {
        assert!(matches!(decide(&signature(), r#"{"trust":"t"}"#), Decision::Admit));
    }

    #[test]
    fn a_runnable_image_marked_as_an_attachment_must_still_verify() {
        let mut dressed = request("docker.io", "library/app", "sha256-00.sig", FILESYSTEM);
        dressed.attaches_to = Some("sha256:11".into());
        assert!(matches!(decide(&dressed, r#"{"trust":"t"}"#), Decision::Verify(_)));
    }

    #[test]
    fn settings_need_trust_or_keys() {
        assert!(portcullis_policy::settings::<RequireSignature>("{}").is_err());
        assert!(portcullis_policy::settings::<RequireSignature>(r#"{"trust":"t","colour":1}"#).is_err());
    }
}
