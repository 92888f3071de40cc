//! `signedIdentity` semantics of containers-policy.json: which image names a signature's
//! `critical.identity.docker-reference` may carry for the image being verified.

use serde::Deserialize;

/// How a signature's claimed reference must relate to the requested one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SignedIdentity {
    /// The claimed reference equals the requested one when asked by tag; the same repository
    /// when asked by digest (the containers/image default).
    #[default]
    MatchRepoDigestOrExact,
    /// The same repository, whatever tag or digest.
    MatchRepository,
    /// The claimed reference equals this one exactly.
    #[serde(rename_all = "camelCase")]
    ExactReference {
        /// The reference, e.g. `docker.io/myorg/app:1.0`.
        docker_reference: String,
    },
    /// The claimed repository equals this one.
    #[serde(rename_all = "camelCase")]
    ExactRepository {
        /// The repository, e.g. `docker.io/myorg/app`.
        docker_repository: String,
    },
    /// Rewrites a requested `prefix` to `signedPrefix`, then matchRepoDigestOrExact.
    #[serde(rename_all = "camelCase")]
    RemapIdentity {
        /// The prefix of requested names.
        prefix: String,
        /// What it stands for in signatures.
        signed_prefix: String,
    },
}

/// A parsed image reference: repository (with registry host) and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host/path`, host normalised (`docker.io` for Docker Hub's names).
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest, if any.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `host/path[:tag][@digest]`, normalising Docker Hub's host names.
    pub fn parse(s: &str) -> ImageRef {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match rest[last_slash..].split_once(':') {
            Some((_, t)) => (
                &rest[..last_slash + rest[last_slash..].find(':').unwrap_or(0)],
                Some(t.to_string()),
            ),
            None => (rest, None),
        };
        ImageRef {
            repository: normalise(repository),
            tag,
            digest,
        }
    }

    /// The repository and tag (or digest) as one string.
    pub fn full(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }
}

/// Docker Hub's aliases all mean `docker.io`, and its one-part names live under `library/`.
fn normalise(repository: &str) -> String {
    let (host, path) = repository
        .split_once('/')
        .unwrap_or(("docker.io", repository));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        h => h,
    };
    if host == "docker.io" && !path.contains('/') {
        return format!("docker.io/library/{path}");
    }
    format!("{host}/{path}")
}

impl SignedIdentity {
    /// Whether a signature claiming `claimed` is acceptable for a request of `requested`.
    pub fn accepts(&self, requested: &ImageRef, claimed: &str) -> Result<(), String> {
        let claimed = ImageRef::parse(claimed);
        let ok = match self {
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(requested, &claimed),
            SignedIdentity::MatchRepository => requested.repository == claimed.repository,
            SignedIdentity::ExactReference { docker_reference } => {
                ImageRef::parse(docker_reference).full() == claimed.full()
            }
            SignedIdentity::ExactRepository { docker_repository } => {
                normalise(docker_repository) == claimed.repository
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let full = requested.full();
                // the prefix covers whole name components, as containers/image matches it
                let remapped = match full.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with(['/', ':', '@']) => {
                        ImageRef::parse(&format!("{signed_prefix}{rest}"))
                    }
                    _ => requested.clone(),
                };
                repo_digest_or_exact(&remapped, &claimed)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "signature is for {}, not {}",
                claimed.full(),
                requested.full()
            ))
        }
    }
}

fn repo_digest_or_exact(requested: &ImageRef, claimed: &ImageRef) -> bool {
    if requested.tag.is_some() {
        requested.repository == claimed.repository && requested.tag == claimed.tag
    } else {
        requested.repository == claimed.repository
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_docker_hub() {
        assert_eq!(
            ImageRef::parse("index.docker.io/library/alpine").repository,
            "docker.io/library/alpine"
        );
        assert_eq!(
            ImageRef::parse("alpine:3").repository,
            "docker.io/library/alpine"
        );
        let r = ImageRef::parse("127.0.0.1:5000/demo/app:v1");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000/demo/app", Some("v1"))
        );
        let r = ImageRef::parse("127.0.0.1:5000/demo/app@sha256:abc");
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some("sha256:abc")));
    }

    #[test]
    fn policy_semantics() {
        let by_tag = ImageRef::parse("registry.example/demo/app:v1");
        let by_digest = ImageRef::parse("registry.example/demo/app@sha256:abc");
        let cosign_style = "registry.example/demo/app"; // no tag
        let cimage_style = "registry.example/demo/app:v1";
        let d = SignedIdentity::MatchRepoDigestOrExact;
        assert!(d.accepts(&by_tag, cimage_style).is_ok());
        assert!(
            d.accepts(&by_tag, cosign_style).is_err(),
            "cosign signatures carry no tag"
        );
        assert!(d.accepts(&by_tag, "registry.example/demo/app:v2").is_err());
        assert!(d.accepts(&by_digest, cosign_style).is_ok());
        assert!(d.accepts(&by_digest, cimage_style).is_ok());
        let r = SignedIdentity::MatchRepository;
        assert!(r.accepts(&by_tag, cosign_style).is_ok());
        assert!(r.accepts(&by_tag, "registry.example/other/app").is_err());
        let e = SignedIdentity::ExactReference {
            docker_reference: "registry.example/demo/app:v1".into(),
        };
        assert!(e.accepts(&by_digest, cimage_style).is_ok());
        assert!(e.accepts(&by_digest, cosign_style).is_err());
        let e = SignedIdentity::ExactRepository {
            docker_repository: "registry.example/demo/app".into(),
        };
        assert!(e.accepts(&by_tag, cosign_style).is_ok());
        let m = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/hub".into(),
            signed_prefix: "docker.io".into(),
        };
        assert!(m
            .accepts(
                &ImageRef::parse("mirror.local/hub/myorg/app:v1"),
                "docker.io/myorg/app:v1"
            )
            .is_ok());
        // the prefix covers whole components: mirror.local/hubx is not under mirror.local/hub
        assert!(m
            .accepts(
                &ImageRef::parse("mirror.local/hubx/myorg/app:v1"),
                "docker.iox/myorg/app:v1"
            )
            .is_err());
        assert!(m
            .accepts(
                &ImageRef::parse("mirror.local/hub/myorg/app:v1"),
                "docker.io/myorg/app:v2"
            )
            .is_err());
    }

    #[test]
    fn parses_policy_json_forms() {
        let v: SignedIdentity = serde_json::from_str(r#"{"type":"matchRepository"}"#).unwrap();
        assert_eq!(v, SignedIdentity::MatchRepository);
        let v: SignedIdentity =
            serde_json::from_str(r#"{"type":"remapIdentity","prefix":"a","signedPrefix":"b"}"#)
                .unwrap();
        assert_eq!(
            v,
            SignedIdentity::RemapIdentity {
                prefix: "a".into(),
                signed_prefix: "b".into()
            }
        );
    }
}
