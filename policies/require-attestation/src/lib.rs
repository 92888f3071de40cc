//! Require a verified attestation of a predicate type, optionally from a given builder.
//!
//! Settings: `{"trust": "release-keys", "predicate_type": "slsaprovenance",
//! "builder_id": "https://ci.example/builder"}`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });
include!("../../classify/src/guest.rs");

use portcullis::policy::host;
use portcullis::policy::types::Requirements;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    trust: String,
    predicate_type: String,
    builder_id: Option<String>,
}

fn settings(text: &str) -> Result<Settings, String> {
    serde_json::from_str(text).map_err(|e| format!("settings: {e}"))
}

fn requirements(s: &Settings) -> Requirements {
    Requirements { trust: vec![s.trust.clone()], keys: vec![], identities: vec![], attestations: vec![s.predicate_type.clone()], threshold: 0 }
}

/// Checks the builder of a SLSA provenance statement (v0.2 `builder.id`, v1 `runDetails.builder.id`).
fn builder_matches(statement: &str, wanted: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(statement).map_err(|e| format!("statement: {e}"))?;
    let p = &v["predicate"];
    let id = p["builder"]["id"].as_str().or(p["runDetails"]["builder"]["id"].as_str()).unwrap_or("");
    if id == wanted {
        Ok(())
    } else {
        Err(format!("built by {id:?}, not {wanted:?}"))
    }
}

fn decide(request: &Request, s: &Settings) -> Decision {
    if is_attachment(request) {
        return Decision::Admit;
    }
    let Some(builder) = &s.builder_id else {
        return Decision::Verify(requirements(s));
    };
    match host::attestation(&s.predicate_type, &requirements(s)) {
        Ok(Some(statement)) => match builder_matches(&statement, builder) {
            Ok(()) => Decision::Admit,
            Err(e) => Decision::Reject(e),
        },
        Ok(None) => Decision::Reject(format!("no verified {} attestation", s.predicate_type)),
        Err(e) => Decision::Reject(e),
    }
}

struct RequireAttestation;

impl Guest for RequireAttestation {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "require-attestation".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec!["attestation".into(), "verify".into()] }
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

export!(RequireAttestation);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        let v02 = r#"{"predicate":{"builder":{"id":"https://ci.example/b"}}}"#;
        let v1 = r#"{"predicate":{"runDetails":{"builder":{"id":"https://ci.example/b"}}}}"#;
        assert!(builder_matches(v02, "https://ci.example/b").is_ok());
        assert!(builder_matches(v1, "https://ci.example/b").is_ok());
        assert!(builder_matches(v02, "https://evil.example").is_err());
    }

    #[test]
    fn settings_are_checked() {
        assert!(settings(r#"{"trust":"t","predicate_type":"slsaprovenance"}"#).is_ok());
        assert!(settings(r#"{"trust":"t"}"#).is_err());
    }
}
