//! Who may read and write: HTTP Basic credentials checked against bcrypt htpasswd entries,
//! and per-scope rules over `<namespace>/<repository>`.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use sha2::Digest as _;

use crate::config::AuthConfig;
use crate::error::{Code, RegistryError, Result};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Pull: manifests, blobs, tags, referrers.
    Read,
    /// Push: uploads, manifest and signature writes, deletes.
    Write,
}

/// The authorisation policy of the proxy.
pub struct Auth {
    users: HashMap<String, String>,
    /// A hash of a password nobody has, at the users' bcrypt cost: checked for unknown users so
    /// that a wrong user name costs the same time as a wrong password (empty without users).
    dummy_hash: String,
    config: AuthConfig,
    verified: moka::sync::Cache<[u8; 32], String>,
}

impl Auth {
    /// Builds the policy from `[auth]`.
    pub fn new(config: &AuthConfig) -> Auth {
        let cost = config.users.first().and_then(|(_, h)| h.get(4..6)).and_then(|c| c.parse().ok()).unwrap_or(10);
        Auth {
            users: config.users.iter().cloned().collect(),
            dummy_hash: if config.users.is_empty() {
                String::new()
            } else {
                bcrypt::hash("portcullis: no such user", cost).unwrap_or_default()
            },
            config: config.clone(),
            verified: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(300)).build(),
        }
    }

    /// Whether any user can sign in (then `/v2/` challenges clients without credentials).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The signed-in user from an `Authorization` header: `Ok(None)` for none (or empty
    /// credentials), `Err(UNAUTHORIZED)` for wrong ones.
    pub async fn authenticate(&self, header: Option<&str>, client: &str) -> Result<Option<String>> {
        let Some(h) = header else { return Ok(None) };
        let Some(encoded) = h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")) else {
            return Err(unauthorized("only HTTP Basic credentials are accepted"));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthorized("malformed credentials"))?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        if user.is_empty() && password.is_empty() {
            return Ok(None);
        }
        let key: [u8; 32] = sha2::Sha256::digest(format!("{user}\0{password}")).into();
        if let Some(u) = self.verified.get(&key) {
            return Ok(Some(u));
        }
        if self.users.is_empty() {
            tracing::warn!(%client, user = %user, "failed sign-in: no users are configured");
            return Err(unauthorized("authentication failed"));
        }
        let known = self.users.get(user);
        let hash = known.unwrap_or(&self.dummy_hash).clone();
        let pw = password.to_string();
        // bcrypt is slow on purpose: keep it off the async workers
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false)).await.unwrap_or(false);
        let ok = matches && known.is_some();
        if !ok {
            tracing::warn!(%client, user = %user, "failed sign-in");
            return Err(unauthorized("authentication failed"));
        }
        self.verified.insert(key, user.to_string());
        Ok(Some(user.to_string()))
    }

    /// Decides whether `user` may do `access` on `<namespace>/<repository>`.
    pub fn authorize(&self, user: Option<&str>, scope: &str, access: Access) -> Result<()> {
        let rule = self.config.rules.iter().find(|r| glob_match(&r.scope, scope));
        let list = rule.and_then(|r| match access {
            Access::Read => r.read.as_ref(),
            Access::Write => r.write.as_ref(),
        });
        let allowed = match (list, access) {
            (Some(names), _) => names.iter().any(|n| n == "anonymous" && access == Access::Read)
                || user.is_some_and(|u| names.iter().any(|n| n == "*" || n == u)),
            (None, Access::Read) => self.config.anonymous_read || user.is_some(),
            (None, Access::Write) => user.is_some(),
        };
        match (allowed, user) {
            (true, _) => Ok(()),
            (false, None) => Err(unauthorized("authentication required")),
            (false, Some(u)) => Err(RegistryError::of(Code::Denied, format!("user {u:?} may not {} {scope}", verb(access)))),
        }
    }
}

impl Auth {
    /// The scope of the rule that lets `user` override upstream tags in `scope` (`override =
    /// true`, and the user may write there), if any.
    pub fn override_rule(&self, user: Option<&str>, scope: &str) -> Option<&str> {
        let rule = self.config.rules.iter().find(|r| glob_match(&r.scope, scope))?;
        (rule.override_upstream && self.authorize(user, scope, Access::Write).is_ok()).then_some(rule.scope.as_str())
    }
}

fn verb(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write to",
    }
}

fn unauthorized(message: &str) -> RegistryError {
    RegistryError::of(Code::Unauthorized, message)
}

/// Matches a glob where `*` stands for any run of characters (including `/`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthRule;

    fn auth(rules: Vec<AuthRule>, anonymous_read: bool) -> Auth {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = vec![("alice".to_string(), hash.clone()), ("ci".to_string(), hash)];
        Auth::new(&AuthConfig { htpasswd: None, anonymous_read, rules, users })
    }

    fn basic(u: &str, p: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
    }

    #[test]
    fn globs() {
        assert!(glob_match("internal/*", "internal/a/b"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("docker.io/myorg/*", "docker.io/myorg/app"));
        assert!(!glob_match("docker.io/myorg/*", "docker.io/other/app"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abde"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[tokio::test]
    async fn credentials() {
        let a = auth(vec![], true);
        assert_eq!(a.authenticate(Some(&basic("alice", "pw")), "t").await.unwrap().as_deref(), Some("alice"));
        assert_eq!(a.authenticate(Some(&basic("alice", "pw")), "t").await.unwrap().as_deref(), Some("alice"), "cached");
        assert_eq!(a.authenticate(Some(&basic("alice", "nope")), "t").await.unwrap_err().code, Code::Unauthorized);
        assert_eq!(a.authenticate(Some(&basic("mallory", "pw")), "t").await.unwrap_err().code, Code::Unauthorized);
        assert_eq!(a.authenticate(Some(&basic("", "")), "t").await.unwrap(), None);
        assert_eq!(a.authenticate(None, "t").await.unwrap(), None);
        assert!(a.authenticate(Some("Bearer x"), "t").await.is_err());
    }

    #[test]
    fn rules() {
        let rules = vec![
            AuthRule { scope: "internal/secret/*".into(), read: Some(vec!["alice".into()]), write: Some(vec!["alice".into()]), override_upstream: false },
            AuthRule { scope: "internal/*".into(), read: Some(vec!["anonymous".into()]), write: Some(vec!["ci".into()]), override_upstream: false },
            AuthRule { scope: "docker.io/ours/*".into(), read: None, write: Some(vec!["ci".into()]), override_upstream: true },
        ];
        let a = auth(rules, true);
        assert!(a.authorize(None, "internal/app", Access::Read).is_ok());
        assert_eq!(a.authorize(None, "internal/app", Access::Write).unwrap_err().code, Code::Unauthorized);
        assert_eq!(a.authorize(Some("alice"), "internal/app", Access::Write).unwrap_err().code, Code::Denied);
        assert!(a.authorize(Some("ci"), "internal/app", Access::Write).is_ok());
        assert_eq!(a.authorize(None, "internal/secret/x", Access::Read).unwrap_err().code, Code::Unauthorized);
        assert_eq!(a.authorize(Some("ci"), "internal/secret/x", Access::Read).unwrap_err().code, Code::Denied);
        assert!(a.authorize(Some("alice"), "internal/secret/x", Access::Read).is_ok());
        // no rule: anonymous reads, any signed-in user writes
        assert!(a.authorize(None, "docker.io/library/alpine", Access::Read).is_ok());
        assert!(a.authorize(Some("alice"), "docker.io/library/alpine", Access::Write).is_ok());
        assert_eq!(a.authorize(None, "docker.io/library/alpine", Access::Write).unwrap_err().code, Code::Unauthorized);
        // overriding upstream tags takes a rule saying so, and the right to write there
        assert_eq!(a.override_rule(Some("ci"), "docker.io/ours/app"), Some("docker.io/ours/*"));
        assert_eq!(a.override_rule(Some("alice"), "docker.io/ours/app"), None);
        assert_eq!(a.override_rule(Some("ci"), "docker.io/library/alpine"), None);
        assert_eq!(a.override_rule(Some("ci"), "internal/app"), None);
        let closed = auth(vec![], false);
        assert_eq!(closed.authorize(None, "docker.io/x", Access::Read).unwrap_err().code, Code::Unauthorized);
        assert!(closed.authorize(Some("ci"), "docker.io/x", Access::Read).is_ok());
    }
}
