//! Require a keyless (Fulcio certificate) signature from a given OIDC issuer and subject, and
//! optionally GitHub Actions claims.
//!
//! Settings: `{"issuer": "https://token.actions.githubusercontent.com",
//! "subject_regexp": "^https://github.com/myorg/.*"}` (or `"subject"` for an exact match),
//! optionally `"trust": "public-good"`, the `[trust.<name>]` whose trusted root the certificate
//! must chain to (every configured root when absent), and `"github": {"workflow_repository":
//! "myorg/app", "workflow_ref": "refs/heads/main", "workflow_trigger": "push", "workflow_sha":
//! "...", "workflow_name": "..."}`, each compared exactly with the certificate's claim.

use portcullis_policy::{is_attachment, Decision, Identity, Policy, Request, Requirements};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    issuer: String,
    subject: Option<String>,
    subject_regexp: Option<String>,
    trust: Option<String>,
    #[serde(default)]
    github: Github,
}

/// GitHub Actions claims the certificate must carry.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Github {
    workflow_trigger: Option<String>,
    workflow_sha: Option<String>,
    workflow_name: Option<String>,
    workflow_repository: Option<String>,
    workflow_ref: Option<String>,
}

struct KeylessIdentity;

impl Policy for KeylessIdentity {
    const NAME: &'static str = "keyless-identity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &["verify"];
    type Settings = Settings;

    fn check(s: &Settings) -> Result<(), String> {
        match s.subject.is_none() == s.subject_regexp.is_none() {
            true => Err("give exactly one of \"subject\" and \"subject_regexp\"".into()),
            false => Ok(()),
        }
    }

    fn evaluate(request: &Request, s: &Settings) -> Decision {
        if is_attachment(request) {
            return Decision::Admit;
        }
        let identity = Identity {
            issuer: Some(s.issuer.clone()),
            subject: s.subject.clone(),
            subject_regexp: s.subject_regexp.clone(),
            github_workflow_trigger: s.github.workflow_trigger.clone(),
            github_workflow_sha: s.github.workflow_sha.clone(),
            github_workflow_name: s.github.workflow_name.clone(),
            github_workflow_repository: s.github.workflow_repository.clone(),
            github_workflow_ref: s.github.workflow_ref.clone(),
            ..Identity::default()
        };
        Decision::Verify(Requirements {
            trust: s.trust.iter().cloned().collect(),
            identities: vec![identity],
            ..Requirements::default()
        })
    }
}

portcullis_policy::export!(KeylessIdentity);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::settings;

    #[test]
    fn settings_want_one_subject_form() {
        assert!(settings::<KeylessIdentity>(r#"{"issuer":"https://i","subject":"me@example.com"}"#).is_ok());
        assert!(settings::<KeylessIdentity>(r#"{"issuer":"https://i","subject":"me@example.com","trust":"public-good"}"#).is_ok());
        assert!(settings::<KeylessIdentity>(r#"{"issuer":"https://i"}"#).is_err());
        assert!(settings::<KeylessIdentity>(r#"{"issuer":"https://i","subject":"a","subject_regexp":"b"}"#).is_err());
        assert!(settings::<KeylessIdentity>(r#"{"issuer":"https://i","subject":"a","github":{"repo":"x"}}"#).is_err());
    }

    #[test]
    fn github_claims_are_required_of_the_signer() {
        let s = r#"{"issuer":"https://i","subject":"a","github":{"workflow_repository":"myorg/app","workflow_ref":"refs/heads/main"}}"#;
        match portcullis_policy::evaluate::<KeylessIdentity>(&portcullis_policy::testing::image("v1"), s) {
            Decision::Verify(r) => {
                assert_eq!(r.identities[0].github_workflow_repository.as_deref(), Some("myorg/app"));
                assert_eq!(r.identities[0].github_workflow_ref.as_deref(), Some("refs/heads/main"));
                assert_eq!(r.identities[0].github_workflow_sha, None);
            }
            _ => panic!("expected verify"),
        }
    }
}
