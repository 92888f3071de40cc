//! The registry's manifest operations as clients ask for them: pulls and pushes decided by the
//! policies in scope, deletes, and cross-repository blob mounts. The HTTP layer parses requests
//! and calls these; the cache, attachments and policies stay unaware of one another here.

use std::sync::Arc;

use bytes::Bytes;

use crate::attachments::Attachments;
use crate::auth::{Access, Auth};
use crate::cache::{Cache, ServedManifest};
use crate::error::{Code, RegistryError, Result};
use crate::manifest::Manifest;
use crate::names::{Digest, Reference, RepoName};
use crate::policy::{Policies, Subject};
use crate::push::uploads::{self, Pushed};

/// Who sent a request, for policies and the audit log.
pub struct Caller {
    /// The client's address.
    pub client: String,
    /// The signed-in user, if any.
    pub user: Option<String>,
    /// The client's User-Agent, if any.
    pub user_agent: Option<String>,
}

/// A manifest a policy decides on.
struct Decided<'a> {
    reference: &'a Reference,
    digest: &'a Digest,
    media_type: &'a str,
    bytes: &'a Bytes,
    /// The image it attaches to, when it is an attachment by its content.
    attaches_to: Option<Digest>,
}

/// Manifest pulls, pushes and deletes, and blob mounts, over the cache.
pub struct Registry {
    cache: Arc<Cache>,
    attachments: Arc<Attachments>,
    auth: Arc<Auth>,
    policies: Arc<Policies>,
    allow_delete: bool,
}

impl Registry {
    /// Builds the registry over its services.
    pub fn new(
        cache: Arc<Cache>,
        attachments: Arc<Attachments>,
        auth: Arc<Auth>,
        policies: Arc<Policies>,
        allow_delete: bool,
    ) -> Registry {
        Registry {
            cache,
            attachments,
            auth,
            policies,
            allow_delete,
        }
    }

    /// The policy engine (for reloads).
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// `<namespace>/<repository>` as auth rules and policies name it (aliases resolved).
    pub fn scope(&self, ns: &str, repo: &RepoName) -> String {
        let ns = self.cache.canonical_namespace(ns).unwrap_or(ns);
        format!("{ns}/{repo}")
    }

    /// A manifest for a pull: served in a media type the client accepts, its attachments
    /// fetched alongside, and admitted by the policies in scope (`DENIED` otherwise).
    pub async fn pull_manifest(
        &self,
        caller: &Caller,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ServedManifest> {
        let m = self.cache.manifest_for(ns, repo, reference, accept).await?;
        self.attachments.prefetch(ns, repo, &m).await;
        let attaches_to = m
            .attachment
            .then(|| m.subject.clone().or_else(|| tag_subject(reference)))
            .flatten();
        let decided = Decided {
            reference,
            digest: &m.digest,
            media_type: &m.media_type,
            bytes: &m.bytes,
            attaches_to,
        };
        self.admit(caller, false, ns, repo, decided).await?;
        Ok(m)
    }

    /// Stores a pushed manifest once the policies in scope admit it; cached attachment lists
    /// it changes are dropped.
    pub async fn push_manifest(
        &self,
        caller: &Caller,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Pushed> {
        let parsed = Manifest::parse(&body)?;
        if parsed
            .media_type
            .as_deref()
            .is_some_and(|t| !crate::manifest::ALL_TYPES.contains(&t))
        {
            return Err(RegistryError::of(
                Code::ManifestInvalid,
                "the manifest's mediaType is not a manifest media type",
            ));
        }
        let digest = Digest::sha256_of(&body);
        let mut attaches_to = parsed.attaches_to(reference_tag(reference));
        // an attachment by its media types is one only if its layers' bytes agree, for the
        // right to push it as for the policies
        if attaches_to.is_some()
            && !self
                .cache
                .payloads_are_inert(ns, repo, &digest, &body)
                .await
        {
            attaches_to = None;
        }
        let overriding = self.proxied_write(caller, ns, repo, reference, attaches_to.is_some())?;
        let decided = Decided {
            reference,
            digest: &digest,
            media_type: parsed.media_type(),
            bytes: &body,
            attaches_to,
        };
        let subject = overriding
            .is_some()
            .then(|| self.subject(caller, true, ns, repo, &decided));
        self.admit(caller, true, ns, repo, decided).await?;
        let pushed =
            uploads::put_manifest(&self.cache, ns, repo, reference, content_type, body).await?;
        if let (Some(rule), Some(subject)) = (overriding, subject) {
            let reason = format!("pushed over the upstream's {ns}/{repo}:{reference} for every client (rule {rule:?} has override = true)");
            tracing::warn!(user = caller.user.as_deref().unwrap_or("-"), %reason, "upstream overridden");
            self.policies.audit_event(&subject, "override", &reason);
        }
        if let Some(subject) = &pushed.subject {
            self.attachments.invalidate(ns, repo, subject).await;
        }
        if let Some(subject) = tag_subject(reference) {
            self.attachments.invalidate(ns, repo, &subject).await;
        }
        Ok(pushed)
    }

    /// Deletes a pushed manifest or tag, when deletes are enabled.
    pub async fn delete_manifest(
        &self,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<()> {
        if !self.allow_delete {
            return Err(RegistryError::of(
                Code::Unsupported,
                "deletes are disabled (storage.allow_delete)",
            ));
        }
        if let Some(subject) = uploads::delete_manifest(&self.cache, ns, repo, reference).await? {
            self.attachments.invalidate(ns, repo, &subject).await;
        }
        Ok(())
    }

    /// Deletes a blob from a local repository, when deletes are enabled (blobs of proxied
    /// repositories are never deleted).
    pub async fn delete_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        if !self.allow_delete {
            return Err(RegistryError::of(
                Code::Unsupported,
                "deletes are disabled (storage.allow_delete)",
            ));
        }
        let (name, upstream) = self.cache.namespace(ns)?;
        if upstream.is_some() {
            return Err(RegistryError::of(
                Code::Unsupported,
                "blobs of proxied repositories are not deleted",
            ));
        }
        uploads::delete_blob(&self.cache, &name, repo, digest).await
    }

    /// Mounts a blob from `from` (`<namespace>/<repository>`) the user may read into
    /// `ns/repo`; false when the client should upload it instead.
    pub async fn mount(
        &self,
        user: Option<&str>,
        from: &str,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> bool {
        let Some((from_ns, from_repo)) = from.split_once('/') else {
            return false;
        };
        let Ok(from_repo) = from_repo.parse::<RepoName>() else {
            return false;
        };
        if self
            .auth
            .authorize(user, &self.scope(from_ns, &from_repo), Access::Read)
            .is_err()
        {
            return false;
        }
        if self
            .cache
            .blob_size(from_ns, &from_repo, digest)
            .await
            .is_err()
        {
            return false;
        }
        uploads::link_mounted(&self.cache, ns, repo, digest)
            .await
            .unwrap_or(false)
    }

    /// Writes to a proxied repository are limited to what hosting signatures needs (attachments
    /// of its images, under an attachment tag or by digest) unless a rule with `override = true`
    /// lets the user replace what the upstream serves: that rule's scope, when it is used.
    fn proxied_write(
        &self,
        caller: &Caller,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
        attachment: bool,
    ) -> Result<Option<String>> {
        if self.cache.namespace(ns)?.1.is_none() {
            return Ok(None);
        }
        let by_attachment_name = match reference {
            Reference::Digest(_) => true,
            Reference::Tag(t) => {
                crate::manifest::is_attachment_tag(t.as_str())
                    && [".sig", ".att", ".sbom"]
                        .iter()
                        .any(|s| t.as_str().ends_with(s))
            }
        };
        if attachment && by_attachment_name {
            return Ok(None);
        }
        let scope = self.scope(ns, repo);
        match self.auth.override_rule(caller.user.as_deref(), &scope) {
            Some(rule) => Ok(Some(rule.to_string())),
            None => Err(RegistryError::of(
                Code::Denied,
                format!("{scope} is proxied: pushes to it are limited to signatures, attestations, SBOMs and referrers of its images (replacing what the upstream serves needs an [[auth.rule]] with override = true)"),
            )),
        }
    }

    /// Asks the policies in scope about a manifest; a rejection is `DENIED`. What claims to be
    /// an attachment is decided as one only if its layers' bytes agree.
    async fn admit(
        &self,
        caller: &Caller,
        push: bool,
        ns: &str,
        repo: &RepoName,
        mut m: Decided<'_>,
    ) -> Result<()> {
        if !self.policies.applies_to(&self.scope(ns, repo)) {
            return Ok(());
        }
        if m.attaches_to.is_some()
            && !self
                .cache
                .payloads_are_inert(ns, repo, m.digest, m.bytes)
                .await
        {
            m.attaches_to = None;
        }
        let subject = self.subject(caller, push, ns, repo, &m);
        self.policies.check(&subject).await
    }

    /// What policies and the audit log are told about a manifest and who asked for it.
    fn subject(
        &self,
        caller: &Caller,
        push: bool,
        ns: &str,
        repo: &RepoName,
        m: &Decided<'_>,
    ) -> Subject {
        Subject {
            push,
            namespace: self.cache.canonical_namespace(ns).unwrap_or(ns).to_string(),
            repository: repo.to_string(),
            reference: m.reference.to_string(),
            digest: m.digest.to_string(),
            media_type: m.media_type.to_string(),
            manifest: m.bytes.clone(),
            attaches_to: m.attaches_to.as_ref().map(|d| d.to_string()),
            client: client_ip(&caller.client),
            user: caller.user.clone(),
            user_agent: caller.user_agent.clone(),
        }
    }
}

/// The IP address of a client's `ip:port`: what policies see of it (a port says nothing about
/// the client, and would make every connection a new decision).
fn client_ip(address: &str) -> String {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| address.to_string())
}

/// The tag of a reference, if it is one.
fn reference_tag(reference: &Reference) -> Option<&str> {
    match reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    }
}

/// The image an attachment tag (`sha256-<hex>.sig` and the like) names.
fn tag_subject(reference: &Reference) -> Option<Digest> {
    reference_tag(reference).and_then(crate::manifest::attachment_subject)
}
