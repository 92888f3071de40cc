//! Who may read and write: HTTP Basic credentials checked against bcrypt htpasswd entries,
//! and per-scope rules over `<namespace>/<repository>`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::Digest as _;

use crate::config::AuthConfig;
use crate::error::{Code, RegistryError, Result};
use crate::metrics::Metrics;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Pull: manifests, blobs, tags, referrers.
    Read,
    /// Push: uploads, manifest and signature writes, deletes.
    Write,
}

/// Failed sign-ins one client address may make as one user within [`FAILURE_WINDOW`] before its
/// further attempts as that user are answered 429 until the window ends.
const FAILURES_PER_WINDOW: u32 = 10;
/// Failed sign-ins one client address may make as anyone within [`FAILURE_WINDOW`].
const ADDRESS_FAILURES_PER_WINDOW: u32 = 100;
/// The window of [`FAILURES_PER_WINDOW`].
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long credentials found wrong are answered wrong again without a bcrypt check.
const REMEMBER_FAILURE: Duration = Duration::from_secs(60);

/// The authorisation policy of the proxy.
pub struct Auth {
    users: HashMap<String, String>,
    /// A hash of a password nobody has, at the users' bcrypt cost: checked for unknown users so
    /// that a wrong user name costs the same time as a wrong password (empty without users).
    dummy_hash: String,
    config: AuthConfig,
    /// Credentials found right (by a hash of them), answered without bcrypt.
    verified: moka::sync::Cache<[u8; 32], String>,
    /// Credentials found wrong lately (by a hash of them), answered without bcrypt.
    failed: moka::sync::Cache<[u8; 32], ()>,
    /// Failed sign-ins per client address and user name, and per address, in the current window.
    /// Keyed by a hash of the user name, so long names cost no more memory than short ones.
    failures: moka::sync::Cache<(IpAddr, Option<[u8; 32]>), Arc<Window>>,
    checker: Checker,
    metrics: Arc<Metrics>,
}

/// A client address's failed sign-ins since `started`.
struct Window {
    started: Instant,
    count: AtomicU32,
}

impl Auth {
    /// Builds the policy from `[auth]`.
    pub fn new(config: &AuthConfig, metrics: Arc<Metrics>) -> Auth {
        let cost = config
            .users
            .first()
            .and_then(|(_, h)| h.get(4..6))
            .and_then(|c| c.parse().ok())
            .unwrap_or(10);
        Auth {
            users: config.users.iter().cloned().collect(),
            dummy_hash: if config.users.is_empty() {
                String::new()
            } else {
                bcrypt::hash("portcullis: no such user", cost).unwrap_or_default()
            },
            config: config.clone(),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REMEMBER_FAILURE)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            checker: Checker::start(),
            metrics,
        }
    }

    /// Whether any user can sign in (then `/v2/` challenges clients without credentials).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The signed-in user from an `Authorization` header: `Ok(None)` for none (or empty
    /// credentials), `Err(UNAUTHORIZED)` for wrong ones, `Err(TOOMANYREQUESTS)` for a client
    /// address that failed too often lately.
    pub async fn authenticate(&self, header: Option<&str>, client: &str) -> Result<Option<String>> {
        let Some(h) = header else { return Ok(None) };
        let (scheme, encoded) = h.trim().split_once(' ').unwrap_or((h, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(unauthorized("only HTTP Basic credentials are accepted"));
        }
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
        let address = client_address(client);
        self.check_rate(address, user)?;
        if self.failed.contains_key(&key) {
            return Err(self.failure(
                address,
                client,
                user,
                "failed sign-in (the same credentials again)",
            ));
        }
        let Some(hash) = self
            .users
            .get(user)
            .or((!self.users.is_empty()).then_some(&self.dummy_hash))
        else {
            return Err(self.failure(
                address,
                client,
                user,
                "failed sign-in: no users are configured",
            ));
        };
        let matches = self
            .checker
            .verify(password.to_string(), hash.clone())
            .await?;
        if !(matches && self.users.contains_key(user)) {
            self.failed.insert(key, ());
            return Err(self.failure(address, client, user, "failed sign-in"));
        }
        self.verified.insert(key, user.to_string());
        Ok(Some(user.to_string()))
    }

    /// Refuses a client address that failed too often in the current window, as this user or
    /// as anyone.
    fn check_rate(&self, address: IpAddr, user: &str) -> Result<()> {
        for (key, limit) in [
            ((address, Some(user_key(user))), FAILURES_PER_WINDOW),
            ((address, None), ADDRESS_FAILURES_PER_WINDOW),
        ] {
            let Some(w) = self.failures.get(&key) else {
                continue;
            };
            if w.count.load(Ordering::Relaxed) >= limit {
                let wait = FAILURE_WINDOW
                    .saturating_sub(w.started.elapsed())
                    .as_secs()
                    .max(1);
                self.metrics.auth.rate_limited.inc();
                return Err(RegistryError::of(
                    Code::TooManyRequests,
                    "too many failed sign-ins from this address; try again later",
                )
                .with_retry_after(Some(wait)));
            }
        }
        Ok(())
    }

    /// Counts and logs a failed sign-in (user and client, never the password); the error.
    fn failure(&self, address: IpAddr, client: &str, user: &str, what: &str) -> RegistryError {
        for key in [(address, Some(user_key(user))), (address, None)] {
            let window = self.failures.get_with(key, || {
                Arc::new(Window {
                    started: Instant::now(),
                    count: AtomicU32::new(0),
                })
            });
            window.count.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.auth.failures.inc();
        tracing::warn!(%client, user = %user, "{what}");
        unauthorized("authentication failed")
    }

    /// Decides whether `user` may do `access` on `<namespace>/<repository>`.
    pub fn authorize(&self, user: Option<&str>, scope: &str, access: Access) -> Result<()> {
        let rule = self
            .config
            .rules
            .iter()
            .find(|r| glob_match(&r.scope, scope));
        let list = rule.and_then(|r| match access {
            Access::Read => r.read.as_ref(),
            Access::Write => r.write.as_ref(),
        });
        let allowed = match (list, access) {
            (Some(names), _) => {
                names
                    .iter()
                    .any(|n| n == "anonymous" && access == Access::Read)
                    || user.is_some_and(|u| names.iter().any(|n| n == "*" || n == u))
            }
            (None, Access::Read) => self.config.anonymous_read || user.is_some(),
            (None, Access::Write) => user.is_some(),
        };
        match (allowed, user) {
            (true, _) => Ok(()),
            (false, None) => Err(unauthorized("authentication required")),
            (false, Some(u)) => Err(RegistryError::of(
                Code::Denied,
                format!("user {u:?} may not {} {scope}", verb(access)),
            )),
        }
    }
}

impl Auth {
    /// The scope of the rule that lets `user` override upstream tags in `scope` (`override =
    /// true`, and the user may write there), if any.
    pub fn override_rule(&self, user: Option<&str>, scope: &str) -> Option<&str> {
        let rule = self
            .config
            .rules
            .iter()
            .find(|r| glob_match(&r.scope, scope))?;
        (rule.override_upstream && self.authorize(user, scope, Access::Write).is_ok())
            .then_some(rule.scope.as_str())
    }
}

/// The key of a user name in the failure counts.
fn user_key(user: &str) -> [u8; 32] {
    sha2::Sha256::digest(user.as_bytes()).into()
}

/// The IP address of a client's `ip:port` (failures are counted per address, not per port).
fn client_address(client: &str) -> IpAddr {
    client
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| client.parse::<IpAddr>())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Runs bcrypt checks on a thread of its own: slow on purpose, they never take the threads that
/// pulls read files and fill caches with; beyond [`CHECK_QUEUE`] waiting checks, sign-ins are
/// refused for a moment rather than queued without bound.
struct Checker {
    jobs: std::sync::mpsc::SyncSender<(String, String, tokio::sync::oneshot::Sender<bool>)>,
    /// bcrypt checks asked for so far.
    asked: std::sync::atomic::AtomicU64,
}

/// Checks waiting for the bcrypt thread before more are refused.
const CHECK_QUEUE: usize = 64;

impl Checker {
    fn start() -> Checker {
        let (jobs, queue) =
            std::sync::mpsc::sync_channel::<(String, String, tokio::sync::oneshot::Sender<bool>)>(
                CHECK_QUEUE,
            );
        let spawned = std::thread::Builder::new()
            .name("bcrypt".into())
            .spawn(move || {
                while let Ok((password, hash, done)) = queue.recv() {
                    let _ = done.send(bcrypt::verify(password, &hash).unwrap_or(false));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the bcrypt thread; every sign-in will fail");
        }
        Checker {
            jobs,
            asked: Default::default(),
        }
    }

    /// Whether `password` matches the bcrypt `hash`.
    async fn verify(&self, password: String, hash: String) -> Result<bool> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.asked.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send((password, hash, done)).is_err() {
            return Err(RegistryError::of(
                Code::TooManyRequests,
                "too many sign-ins are being checked; try again shortly",
            )
            .with_retry_after(Some(1)));
        }
        answer
            .await
            .map_err(|_| RegistryError::internal("the bcrypt thread stopped"))
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
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
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
        let users = vec![
            ("alice".to_string(), hash.clone()),
            ("ci".to_string(), hash),
        ];
        Auth::new(
            &AuthConfig {
                htpasswd: None,
                anonymous_read,
                rules,
                users,
            },
            crate::metrics::Metrics::new(),
        )
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
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
        assert_eq!(
            a.authenticate(Some(&basic("alice", "pw")), "t")
                .await
                .unwrap()
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            a.authenticate(Some(&basic("alice", "pw")), "t")
                .await
                .unwrap()
                .as_deref(),
            Some("alice"),
            "cached"
        );
        assert_eq!(
            a.authenticate(Some(&basic("alice", "nope")), "t")
                .await
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert_eq!(
            a.authenticate(Some(&basic("mallory", "pw")), "t")
                .await
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert_eq!(
            a.authenticate(Some(&basic("", "")), "t").await.unwrap(),
            None
        );
        assert_eq!(a.authenticate(None, "t").await.unwrap(), None);
        assert!(a.authenticate(Some("Bearer x"), "t").await.is_err());
        // the scheme is case-insensitive (RFC 9110)
        for scheme in ["BASIC", "bAsIc"] {
            let header = basic("alice", "pw").replacen("Basic", scheme, 1);
            assert_eq!(
                a.authenticate(Some(&header), "t").await.unwrap().as_deref(),
                Some("alice"),
                "{scheme}"
            );
        }
    }

    #[tokio::test]
    async fn the_same_wrong_credentials_again_cost_no_bcrypt_check() {
        let a = auth(vec![], true);
        let wrong = basic("alice", "wrong");
        for _ in 0..3 {
            let e = a
                .authenticate(Some(&wrong), "10.0.0.1:1")
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::Unauthorized);
        }
        assert_eq!(a.checker.asked.load(Ordering::Relaxed), 1);
        let e = a
            .authenticate(Some(&basic("alice", "other")), "10.0.0.1:1")
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unauthorized);
        assert_eq!(
            a.checker.asked.load(Ordering::Relaxed),
            2,
            "other credentials are checked"
        );
    }

    #[tokio::test]
    async fn failures_are_remembered_and_limited_per_client_address() {
        let a = auth(vec![], true);
        assert!(a
            .authenticate(Some(&basic("alice", "pw")), "10.0.0.1:1")
            .await
            .is_ok());
        for i in 0..FAILURES_PER_WINDOW {
            let e = a
                .authenticate(
                    Some(&basic("alice", &format!("wrong{i}"))),
                    &format!("10.0.0.1:{i}"),
                )
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::Unauthorized);
        }
        let e = a
            .authenticate(Some(&basic("alice", "another")), "10.0.0.1:99")
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.status.as_u16()),
            (Code::TooManyRequests, 429),
            "the address is slowed down, whatever its port"
        );
        assert!(e.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        assert!(
            a.authenticate(Some(&basic("alice", "pw")), "10.0.0.1:5")
                .await
                .is_ok(),
            "known credentials still pass"
        );
        assert_eq!(
            a.authenticate(Some(&basic("alice", "nope")), "10.0.0.2:1")
                .await
                .unwrap_err()
                .code,
            Code::Unauthorized,
            "other addresses are not affected"
        );
        assert_eq!(
            a.authenticate(Some(&basic("ci", "nope")), "10.0.0.1:7")
                .await
                .unwrap_err()
                .code,
            Code::Unauthorized,
            "nor other users of the address"
        );
    }

    #[test]
    fn rules() {
        let rules = vec![
            AuthRule {
                scope: "internal/secret/*".into(),
                read: Some(vec!["alice".into()]),
                write: Some(vec!["alice".into()]),
                override_upstream: false,
            },
            AuthRule {
                scope: "internal/*".into(),
                read: Some(vec!["anonymous".into()]),
                write: Some(vec!["ci".into()]),
                override_upstream: false,
            },
            AuthRule {
                scope: "docker.io/ours/*".into(),
                read: None,
                write: Some(vec!["ci".into()]),
                override_upstream: true,
            },
        ];
        let a = auth(rules, true);
        assert!(a.authorize(None, "internal/app", Access::Read).is_ok());
        assert_eq!(
            a.authorize(None, "internal/app", Access::Write)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert_eq!(
            a.authorize(Some("alice"), "internal/app", Access::Write)
                .unwrap_err()
                .code,
            Code::Denied
        );
        assert!(a
            .authorize(Some("ci"), "internal/app", Access::Write)
            .is_ok());
        assert_eq!(
            a.authorize(None, "internal/secret/x", Access::Read)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert_eq!(
            a.authorize(Some("ci"), "internal/secret/x", Access::Read)
                .unwrap_err()
                .code,
            Code::Denied
        );
        assert!(a
            .authorize(Some("alice"), "internal/secret/x", Access::Read)
            .is_ok());
        // no rule: anonymous reads, any signed-in user writes
        assert!(a
            .authorize(None, "docker.io/library/alpine", Access::Read)
            .is_ok());
        assert!(a
            .authorize(Some("alice"), "docker.io/library/alpine", Access::Write)
            .is_ok());
        assert_eq!(
            a.authorize(None, "docker.io/library/alpine", Access::Write)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        // overriding upstream tags takes a rule saying so, and the right to write there
        assert_eq!(
            a.override_rule(Some("ci"), "docker.io/ours/app"),
            Some("docker.io/ours/*")
        );
        assert_eq!(a.override_rule(Some("alice"), "docker.io/ours/app"), None);
        assert_eq!(
            a.override_rule(Some("ci"), "docker.io/library/alpine"),
            None
        );
        assert_eq!(a.override_rule(Some("ci"), "internal/app"), None);
        let closed = auth(vec![], false);
        assert_eq!(
            closed
                .authorize(None, "docker.io/x", Access::Read)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert!(closed
            .authorize(Some("ci"), "docker.io/x", Access::Read)
            .is_ok());
    }
}
