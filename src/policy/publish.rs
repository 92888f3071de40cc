//! `portcullis policy push`: publishes a policy module to any registry as a Wasm OCI artifact
//! (an `application/vnd.wasm.config.v0+json` config and one `application/wasm` layer, the shape
//! `wkg oci push` writes), over HTTPS or plain HTTP, with Basic or token sign-in.

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::oci::{WASM_CONFIG, WASM_LAYER};
use crate::names::{Digest, Reference, RepoName};
use crate::upstream::auth::{parse_challenge, parse_token, Challenge};

/// Where a module goes: `<host>/<repository>:<tag>`, and how.
pub struct Target {
    /// `host[:port]`.
    pub host: String,
    /// The repository (for a proxy's local namespace: `<namespace>/<repository>`).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// User and password, if the registry asks for them.
    pub credentials: Option<(String, String)>,
}

impl Target {
    /// Reads `<host>/<repository>:<tag>`.
    pub fn parse(reference: &str) -> anyhow::Result<Target> {
        let (host, name) = reference
            .split_once('/')
            .context("write the target as <host>/<repository>:<tag>")?;
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let colon = name[last..]
            .rfind(':')
            .context("the target names no tag: <host>/<repository>:<tag>")?;
        let (repository, tag) = (&name[..last + colon], &name[last + colon + 1..]);
        repository
            .parse::<RepoName>()
            .map_err(|e| anyhow::anyhow!("{reference}: {}", e.message))?;
        anyhow::ensure!(
            matches!(tag.parse::<Reference>(), Ok(Reference::Tag(_))),
            "{reference}: {tag:?} is not a tag"
        );
        Ok(Target {
            host: host.into(),
            repository: repository.into(),
            tag: tag.into(),
            insecure: false,
            credentials: None,
        })
    }

    /// Whether `url` is on the target's own scheme, host and port (credentials go nowhere
    /// else); a plain HTTP URL is refused unless `insecure`.
    fn owns(&self, url: &str) -> anyhow::Result<bool> {
        let url = reqwest::Url::parse(url).with_context(|| format!("URL {url}"))?;
        anyhow::ensure!(
            url.scheme() == "https" || self.insecure,
            "the registry sent the upload to {url}, not over HTTPS: refused (--insecure allows it)"
        );
        let ours = reqwest::Url::parse(&self.url(""))?;
        Ok(url.scheme() == ours.scheme()
            && url.host_str() == ours.host_str()
            && url.port_or_known_default() == ours.port_or_known_default())
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/{path}", self.host, self.repository)
    }
}

/// The manifest and config of a module's artifact.
fn artifact(module: &[u8]) -> (Vec<u8>, Vec<u8>, Digest) {
    let layer = Digest::sha256_of(module);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer.to_string()],
    });
    let config = serde_json::to_vec(&config).expect("JSON");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": WASM_CONFIG,
            "digest": Digest::sha256_of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [{"mediaType": WASM_LAYER, "digest": layer.to_string(), "size": module.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON");
    let digest = Digest::sha256_of(&manifest);
    (manifest, config, digest)
}

/// A registry session: one client, and the `Authorization` that worked.
struct Session<'a> {
    client: reqwest::Client,
    target: &'a Target,
    authorization: Option<String>,
}

impl Session<'_> {
    /// Sends a request, signing in once when the registry asks (Basic or a bearer token for
    /// push and pull on the repository).
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::Response> {
        let ours = self.target.owns(url)?;
        for _ in 0..2 {
            let mut request = self.client.request(method.clone(), url);
            if let (Some(a), true) = (&self.authorization, ours) {
                request = request.header(AUTHORIZATION, a);
            }
            if let Some(t) = content_type {
                request = request.header(CONTENT_TYPE, t);
            }
            if let Some(b) = &body {
                request = request.body(b.clone());
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            if response.status() != StatusCode::UNAUTHORIZED
                || self.authorization.is_some()
                || !ours
            {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge);
            self.authorization = Some(self.sign_in(challenge).await?);
        }
        anyhow::bail!("{method} {url}: the registry refused the credentials")
    }

    async fn sign_in(&self, challenge: Option<Challenge>) -> anyhow::Result<String> {
        let (user, password) = self
            .target
            .credentials
            .as_ref()
            .context("the registry asks to sign in: give --username and --password-stdin")?;
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        );
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut url =
                    reqwest::Url::parse(&realm).with_context(|| format!("realm {realm}"))?;
                url.query_pairs_mut().append_pair(
                    "scope",
                    &format!("repository:{}:pull,push", self.target.repository),
                );
                if let Some(service) = service {
                    url.query_pairs_mut().append_pair("service", &service);
                }
                let response = self
                    .client
                    .get(url)
                    .header(AUTHORIZATION, basic)
                    .send()
                    .await
                    .with_context(|| format!("token from {realm}"))?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "token from {realm}: {}",
                    response.status()
                );
                let body = response.bytes().await?;
                let token = parse_token(&body)
                    .with_context(|| format!("no token in the answer of {realm}"))?;
                Ok(format!("Bearer {}", token.value))
            }
            _ => Ok(basic),
        }
    }

    /// Uploads a blob unless the registry has it.
    async fn blob(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let digest = Digest::sha256_of(bytes);
        let url = self.target.url(&format!("blobs/{digest}"));
        if self
            .send(Method::HEAD, &url, None, None)
            .await?
            .status()
            .is_success()
        {
            return Ok(());
        }
        let started = self
            .send(Method::POST, &self.target.url("blobs/uploads/"), None, None)
            .await?;
        anyhow::ensure!(
            started.status() == StatusCode::ACCEPTED,
            "starting an upload: {}",
            failure(started).await
        );
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("the registry gave no upload location")?;
        let base = reqwest::Url::parse(&self.target.url(""))?;
        let mut put = base.join(location)?;
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let done = self
            .send(
                Method::PUT,
                put.as_str(),
                Some("application/octet-stream"),
                Some(bytes.to_vec()),
            )
            .await?;
        anyhow::ensure!(
            done.status() == StatusCode::CREATED,
            "uploading {digest}: {}",
            failure(done).await
        );
        Ok(())
    }
}

/// A refusal as the registry worded it.
async fn failure(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!("{status} {}", body.chars().take(300).collect::<String>())
}

/// Pushes `module` to `target`; returns the manifest's digest (what `cosign sign` signs).
pub async fn push(module: &[u8], target: &Target) -> anyhow::Result<Digest> {
    let (manifest, config, digest) = artifact(module);
    let mut session = Session {
        client: reqwest::Client::builder().build()?,
        target,
        authorization: None,
    };
    session.blob(&config).await?;
    session.blob(module).await?;
    let url = target.url(&format!("manifests/{}", target.tag));
    let put = session
        .send(
            Method::PUT,
            &url,
            Some("application/vnd.oci.image.manifest.v1+json"),
            Some(manifest),
        )
        .await?;
    anyhow::ensure!(
        put.status() == StatusCode::CREATED,
        "pushing the manifest: {}",
        failure(put).await
    );
    Ok(digest)
}
