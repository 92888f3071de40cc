//! Registry authentication challenges: parsing `WWW-Authenticate` and the token response.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: send the configured credentials.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: get a token from the realm.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service parameter, if any.
        service: Option<String>,
        /// The scope parameter, if any.
        scope: Option<String>,
    },
}

/// Parses a challenge header; `None` for schemes we do not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            let realm = params.get("realm")?.clone();
            Some(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// Parses `key="value",key2=value2` auth parameters (quoted values may hold commas).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key, value.trim().to_string());
    }
}

/// A bearer token and when it stops being usable.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token value.
    pub value: String,
    /// When to stop using it (a little before the server's expiry).
    pub expires: Instant,
}

/// The longest a token is used, in seconds.
const MAX_TOKEN_LIFETIME: u64 = 86_400;

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Parses a token endpoint's JSON answer (`token` or `access_token`, `expires_in` seconds).
pub fn parse_token(body: &[u8]) -> Option<Token> {
    let t: TokenResponse = serde_json::from_slice(body).ok()?;
    let value = t.token.or(t.access_token).filter(|v| !v.is_empty())?;
    // Docker's token spec: 60 s when unspecified; renew 10% early; a day at most, whatever the
    // upstream says (the number is the upstream's, and Instant arithmetic must not overflow)
    let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(1, MAX_TOKEN_LIFETIME));
    Some(Token {
        value,
        expires: Instant::now() + lifetime.mul_f32(0.9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn quoted_commas_and_basic() {
        let c = parse_challenge(r#"Bearer realm="https://x/t",scope="repository:a:pull,push""#)
            .unwrap();
        let Challenge::Bearer { scope, service, .. } = c else {
            panic!()
        };
        assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(service, None);
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn token_bodies() {
        assert_eq!(
            parse_token(br#"{"token":"abc","expires_in":300}"#)
                .unwrap()
                .value,
            "abc"
        );
        assert_eq!(
            parse_token(br#"{"access_token":"xyz"}"#).unwrap().value,
            "xyz"
        );
        assert!(parse_token(br#"{"token":""}"#).is_none());
        assert!(parse_token(b"not json").is_none());
        let huge = parse_token(br#"{"token":"t","expires_in":18446744073709551615}"#).unwrap();
        assert!(
            huge.expires <= Instant::now() + Duration::from_secs(MAX_TOKEN_LIFETIME),
            "saturates"
        );
    }
}
