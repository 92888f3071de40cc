//! Reject pulls and pushes by mutable tags (by default `latest`).
//!
//! Settings: `{"tags": ["latest", "main"]}`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });


#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_tags")]
    tags: Vec<String>,
}

fn default_tags() -> Vec<String> {
    vec!["latest".into()]
}

fn settings(text: &str) -> Result<Settings, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| format!("settings: {e}"))
}

fn decide(reference: &str, s: &Settings) -> Decision {
    if s.tags.iter().any(|t| t == reference) {
        return Decision::Reject(format!("the tag {reference:?} is mutable; pull by digest or a release tag"));
    }
    Decision::Admit
}

struct DenyTags;

impl Guest for DenyTags {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "deny-tags".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec![] }
    }

    fn validate_settings(text: String) -> Result<(), String> {
        settings(&text).map(|_| ())
    }

    fn evaluate(request: Request, text: String) -> Decision {
        match settings(&text) {
            Ok(s) => decide(&request.reference, &s),
            Err(e) => Decision::Reject(e),
        }
    }
}

export!(DenyTags);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_is_denied_by_default() {
        let s = settings("{}").unwrap();
        assert!(matches!(decide("latest", &s), Decision::Reject(_)));
        assert!(matches!(decide("1.2.3", &s), Decision::Admit));
        assert!(matches!(decide("sha256:abc", &s), Decision::Admit));
    }

    #[test]
    fn configured_tags() {
        let s = settings(r#"{"tags":["main"]}"#).unwrap();
        assert!(matches!(decide("main", &s), Decision::Reject(_)));
        assert!(matches!(decide("latest", &s), Decision::Admit));
        assert!(settings(r#"{"tag":"x"}"#).is_err());
    }
}
