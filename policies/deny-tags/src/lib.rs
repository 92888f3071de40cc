//! Reject pulls and pushes by mutable tags (by default `latest`).
//!
//! Settings: `{"tags": ["latest", "main"]}`.

use portcullis_policy::{Decision, Policy, Request};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_tags")]
    tags: Vec<String>,
}

fn default_tags() -> Vec<String> {
    vec!["latest".into()]
}

struct DenyTags;

impl Policy for DenyTags {
    const NAME: &'static str = "deny-tags";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Settings = Settings;

    fn evaluate(request: &Request, s: &Settings) -> Decision {
        let tag = &request.reference;
        if s.tags.contains(tag) {
            return Decision::Reject(format!("the tag {tag:?} is mutable; pull by digest or a release tag"));
        }
        Decision::Admit
    }
}

portcullis_policy::export!(DenyTags);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{settings, testing::image};

    fn decide(reference: &str, settings: &str) -> Decision {
        portcullis_policy::evaluate::<DenyTags>(&image(reference), settings)
    }

    #[test]
    fn latest_is_denied_by_default() {
        assert!(matches!(decide("latest", "{}"), Decision::Reject(_)));
        assert!(matches!(decide("1.2.3", "{}"), Decision::Admit));
        assert!(matches!(decide("sha256:abc", ""), Decision::Admit));
    }

    #[test]
    fn configured_tags() {
        assert!(matches!(decide("main", r#"{"tags":["main"]}"#), Decision::Reject(_)));
        assert!(matches!(decide("latest", r#"{"tags":["main"]}"#), Decision::Admit));
        assert!(settings::<DenyTags>(r#"{"tag":"x"}"#).is_err());
    }
}
