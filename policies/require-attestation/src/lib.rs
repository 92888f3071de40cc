//! Require a verified attestation of a predicate type, optionally from a given builder.
//!
//! Settings: `{"trust": "release-keys", "predicate_type": "slsaprovenance",
//! "builder_id": "https://ci.example/builder"}`.

use portcullis_policy::{host, is_attachment, Decision, Policy, Request, Requirements};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    trust: String,
    predicate_type: String,
    builder_id: Option<String>,
}

fn requirements(s: &Settings) -> Requirements {
    Requirements { attestations: vec![s.predicate_type.clone()], ..Requirements::trust(&s.trust) }
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

struct RequireAttestation;

impl Policy for RequireAttestation {
    const NAME: &'static str = "require-attestation";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &["attestation", "verify"];
    type Settings = Settings;

    fn evaluate(request: &Request, s: &Settings) -> Decision {
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
}

portcullis_policy::export!(RequireAttestation);

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
        assert!(portcullis_policy::settings::<RequireAttestation>(r#"{"trust":"t","predicate_type":"slsaprovenance"}"#).is_ok());
        assert!(portcullis_policy::settings::<RequireAttestation>(r#"{"trust":"t"}"#).is_err());
    }

    #[test]
    fn without_a_builder_the_host_verifies() {
        let settings = r#"{"trust":"t","predicate_type":"slsaprovenance"}"#;
        match portcullis_policy::evaluate::<RequireAttestation>(&portcullis_policy::testing::image("v1"), settings) {
            Decision::Verify(r) => assert_eq!((r.trust, r.attestations), (vec!["t".to_string()], vec!["slsaprovenance".to_string()])),
            _ => panic!("expected verify"),
        }
    }
}
