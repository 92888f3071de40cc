//! Require a keyless (Fulcio certificate) signature from a given OIDC issuer and subject.
//!
//! Settings: `{"issuer": "https://token.actions.githubusercontent.com",
//! "subject_regexp": "^https://github.com/myorg/.*"}` (or `"subject"` for an exact match), and
//! optionally `"trust": "public-good"`, the `[trust.<name>]` whose trusted root the certificate
//! must chain to (every configured root when absent).

wit_bindgen::generate!({ world: "policy", path: "../../wit" });
include!("../../classify/src/guest.rs");

use portcullis::policy::types::{Identity, Requirements};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    issuer: String,
    subject: Option<String>,
    subject_regexp: Option<String>,
    trust: Option<String>,
}

fn settings(text: &str) -> Result<Settings, String> {
    let s: Settings = serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?;
    if s.subject.is_none() == s.subject_regexp.is_none() {
        return Err("settings: give exactly one of \"subject\" and \"subject_regexp\"".into());
    }
    Ok(s)
}

fn decide(request: &Request, s: &Settings) -> Decision {
    if is_attachment(request) {
        return Decision::Admit;
    }
    Decision::Verify(Requirements {
        trust: s.trust.iter().cloned().collect(),
        keys: vec![],
        identities: vec![Identity { issuer: Some(s.issuer.clone()), issuer_regexp: None, subject: s.subject.clone(), subject_regexp: s.subject_regexp.clone() }],
        attestations: vec![],
        threshold: 0,
    })
}

struct KeylessIdentity;

impl Guest for KeylessIdentity {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "keyless-identity".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec!["verify".into()] }
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

export!(KeylessIdentity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_want_one_subject_form() {
        assert!(settings(r#"{"issuer":"https://i","subject":"me@example.com"}"#).is_ok());
        assert!(settings(r#"{"issuer":"https://i","subject":"me@example.com","trust":"public-good"}"#).is_ok());
        assert!(settings(r#"{"issuer":"https://i"}"#).is_err());
        assert!(settings(r#"{"issuer":"https://i","subject":"a","subject_regexp":"b"}"#).is_err());
    }
}
