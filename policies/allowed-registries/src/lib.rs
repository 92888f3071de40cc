//! Admit only repositories matching the allowed globs over `<namespace>/<repository>`.
//!
//! Settings: `{"allowed": ["docker.io/library/*", "internal/*"]}`.

use portcullis_policy::{Decision, Policy, Request};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allowed: Vec<String>,
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head) && (0..=text.len() - head.len()).any(|i| glob(tail, &text[head.len() + i..]))
        }
    }
}

struct AllowedRegistries;

impl Policy for AllowedRegistries {
    const NAME: &'static str = "allowed-registries";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Settings = Settings;

    fn check(s: &Settings) -> Result<(), String> {
        match s.allowed.is_empty() {
            true => Err("\"allowed\" is empty, which would reject everything".into()),
            false => Ok(()),
        }
    }

    fn evaluate(request: &Request, s: &Settings) -> Decision {
        let name = format!("{}/{}", request.namespace, request.repository);
        if s.allowed.iter().any(|g| glob(g, &name)) {
            Decision::Admit
        } else {
            Decision::Reject(format!("{name} is not in an allowed registry or repository"))
        }
    }
}

portcullis_policy::export!(AllowedRegistries);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{request, FILESYSTEM};

    fn decide(namespace: &str, repository: &str) -> Decision {
        let settings = r#"{"allowed":["docker.io/library/*","internal/*"]}"#;
        portcullis_policy::evaluate::<AllowedRegistries>(&request(namespace, repository, "v1", FILESYSTEM), settings)
    }

    #[test]
    fn globs_decide() {
        assert!(matches!(decide("docker.io", "library/alpine"), Decision::Admit));
        assert!(matches!(decide("internal", "team/app"), Decision::Admit));
        assert!(matches!(decide("docker.io", "someone/app"), Decision::Reject(_)));
        assert!(portcullis_policy::settings::<AllowedRegistries>(r#"{"allowed":[]}"#).is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob("a*c", "abbc"));
        assert!(!glob("a*c", "abb"));
        assert!(glob("*", ""));
    }
}
