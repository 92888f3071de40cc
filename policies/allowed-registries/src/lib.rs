//! Admit only repositories matching the allowed globs over `<namespace>/<repository>`.
//!
//! Settings: `{"allowed": ["docker.io/library/*", "internal/*"]}`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });


#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allowed: Vec<String>,
}

fn settings(text: &str) -> Result<Settings, String> {
    let s: Settings = serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?;
    if s.allowed.is_empty() {
        return Err("settings: \"allowed\" is empty, which would reject everything".into());
    }
    Ok(s)
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

fn decide(name: &str, s: &Settings) -> Decision {
    if s.allowed.iter().any(|g| glob(g, name)) {
        Decision::Admit
    } else {
        Decision::Reject(format!("{name} is not in an allowed registry or repository"))
    }
}

struct AllowedRegistries;

impl Guest for AllowedRegistries {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "allowed-registries".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec![] }
    }

    fn validate_settings(text: String) -> Result<(), String> {
        settings(&text).map(|_| ())
    }

    fn evaluate(request: Request, text: String) -> Decision {
        match settings(&text) {
            Ok(s) => decide(&format!("{}/{}", request.namespace, request.repository), &s),
            Err(e) => Decision::Reject(e),
        }
    }
}

export!(AllowedRegistries);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_decide() {
        let s = settings(r#"{"allowed":["docker.io/library/*","internal/*"]}"#).unwrap();
        assert!(matches!(decide("docker.io/library/alpine", &s), Decision::Admit));
        assert!(matches!(decide("internal/team/app", &s), Decision::Admit));
        assert!(matches!(decide("docker.io/someone/app", &s), Decision::Reject(_)));
        assert!(settings(r#"{"allowed":[]}"#).is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob("a*c", "abbc"));
        assert!(!glob("a*c", "abb"));
        assert!(glob("*", ""));
    }
}
