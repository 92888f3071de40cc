//! `proxy.toml`: typed configuration, parsed with unknown keys rejected and validated on load.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The configuration built into the binary: the root `proxy.toml` of the source tree.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../proxy.toml");

/// A configuration problem, naming the file (with the line and column, and toml's caret
/// diagnostic, when the problem has a place in the text), the key and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    /// The configuration file (or "<embedded defaults>").
    pub file: String,
    /// The dotted key path that is wrong (or "-" when the file itself is).
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
    /// Line and column (from 1) of the problem, and the lines of text pointing at it.
    pub place: Option<(usize, usize, String)>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Some((line, column, snippet)) => write!(
                f,
                "{}:{line}:{column}: {}: {}\n{snippet}",
                self.file, self.key, self.problem
            ),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a toml error is: line and column from 1, and toml's own lines pointing at it.
fn place_of(e: &toml::de::Error, text: &str) -> Option<(usize, usize, String)> {
    let start = e.span()?.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // toml writes "TOML parse error at ...", the caret lines, then the message
    let full = e.to_string();
    let snippet: Vec<&str> = full
        .lines()
        .skip(1)
        .take_while(|l| l.contains('|'))
        .collect();
    Some((line, column, snippet.join("\n")))
}

/// The whole `proxy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where to listen.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[storage]`: where the cache lives and how large it may grow.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[cache]`: freshness of tag resolutions.
    #[serde(default)]
    pub cache: CacheConfig,
    /// `[[upstream]]`: the registries proxied, each addressed as `/v2/<name>/...`.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[local]]`: namespaces hosting pushed images that have no upstream.
    #[serde(default, rename = "local")]
    pub locals: Vec<LocalConfig>,
    /// `[auth]`: who may read and write.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[trust.<name>]`: named trust material that verification requirements refer to.
    #[serde(default)]
    pub trust: std::collections::HashMap<String, TrustConfig>,
    /// `[[policy]]`: WebAssembly admission policies, each over a scope.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    /// `[policies]`: settings shared by all policies.
    #[serde(default, rename = "policies")]
    pub policy_host: PolicyHostConfig,
    /// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[log]`: how log lines are written.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[metrics]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `listen = "127.0.0.1:9090"`: serve `GET /metrics` on this address of its own (never on
    /// the registry's listener).
    pub listen: Option<SocketAddr>,
}

/// `[log]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `format = "text"` (the default) or `"json"`: one JSON object per line.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with stable field names.
    Json,
}

/// One `[[policy]]` module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `name = "require-signature"`: how logs, audit lines and errors name it.
    pub name: String,
    /// `module = "policies/require-signature.wasm"` (a component file, relative to the config
    /// file) or `"oci://<namespace>/<repository>:<tag>"` (or `@sha256:...`): pulled through the
    /// proxy itself.
    pub module: ModuleSource,
    /// `verify = "policy-keys"`: the `[trust.<name>]` whose signature must be on a module pulled
    /// from a registry (required for `oci://` modules).
    #[serde(default)]
    pub verify: Option<String>,
    /// `[policy.verify_identity]`: for a module signed keyless, the signer the certificate must
    /// name (`issuer` and `subject` or `subject_regexp`), checked against the roots of `verify`.
    #[serde(default)]
    pub verify_identity: Option<SignerIdentity>,
    /// `scope = ["docker.io/myorg/*"]`: globs over `<namespace>/<repository>`.
    pub scope: Vec<String>,
    /// `mode = "enforce"` (decisions apply) or `"warn"` (logged and audited, then admitted).
    #[serde(default)]
    pub mode: PolicyMode,
    /// `timeout = "50ms"`: how much CPU time one evaluation may use (waiting does not count).
    #[serde(default = "default_policy_timeout")]
    pub timeout: HumanDuration,
    /// `memory = "64MiB"`: the most memory the module may use.
    #[serde(default = "default_policy_memory")]
    pub memory: ByteSize,
    /// `[policy.settings]`: handed to the module as JSON.
    #[serde(default)]
    pub settings: toml::Table,
}

/// A keyless signer, as cosign's `--certificate-oidc-issuer` and `--certificate-identity[-regexp]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignerIdentity {
    /// The OIDC issuer, exactly.
    pub issuer: String,
    /// The certificate's subject (email or URI), exactly.
    pub subject: Option<String>,
    /// Or a regular expression over it.
    pub subject_regexp: Option<String>,
}

/// Where a policy's module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A component file.
    File(PathBuf),
    /// A Wasm OCI artifact in a namespace of this proxy: `oci://<namespace>/<repository>`
    /// with a tag (resolved at each load) or a digest.
    Oci {
        /// The upstream or local namespace.
        namespace: String,
        /// The repository in it.
        repository: String,
        /// A tag or a digest.
        reference: String,
    },
}

impl ModuleSource {
    /// Reads `oci://<namespace>/<repository>:<tag>` or `@<digest>`, else a file path.
    fn parse(text: &str) -> Result<ModuleSource, String> {
        let Some(rest) = text.strip_prefix("oci://") else {
            return Ok(ModuleSource::File(PathBuf::from(text)));
        };
        let form = "write oci://<namespace>/<repository>:<tag> or oci://<namespace>/<repository>@sha256:<hex>";
        let (namespace, name) = rest
            .split_once('/')
            .ok_or_else(|| format!("{text:?} names no repository: {form}"))?;
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, reference) = match name.split_once('@') {
            Some((r, d)) => (r, d),
            None => match name[last..].rfind(':') {
                Some(i) => (&name[..last + i], &name[last + i + 1..]),
                None => return Err(format!("{text:?} names no tag or digest: {form}")),
            },
        };
        repository
            .parse::<crate::names::RepoName>()
            .map_err(|e| format!("{text:?}: {}", e.message))?;
        reference
            .parse::<crate::names::Reference>()
            .map_err(|e| format!("{text:?}: {}", e.message))?;
        if namespace.is_empty() {
            return Err(format!("{text:?} names no namespace: {form}"));
        }
        Ok(ModuleSource::Oci {
            namespace: namespace.into(),
            repository: repository.into(),
            reference: reference.into(),
        })
    }
}

impl fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleSource::File(p) => write!(f, "{}", p.display()),
            ModuleSource::Oci {
                namespace,
                repository,
                reference,
            } => {
                let sep = if reference.contains(':') { '@' } else { ':' };
                write!(f, "oci://{namespace}/{repository}{sep}{reference}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for ModuleSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ModuleSource::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether a policy's decisions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Decisions apply.
    #[default]
    Enforce,
    /// Decisions are logged and audited; everything is admitted.
    Warn,
}

/// `[policies]`: shared policy settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyHostConfig {
    /// `audit = "stdout"` or a file path: one JSON line per decision.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// `attachment_wait = "5s"`: how long a pull waits for attachments before deciding.
    #[serde(default = "default_policy_wait")]
    pub attachment_wait: HumanDuration,
    /// `concurrency = 32`: evaluations at once (instances preallocated for them).
    #[serde(default = "default_policy_concurrency")]
    pub concurrency: u32,
    /// `compiled_cache = "policy-cache"`: compiled modules, relative to the storage path.
    #[serde(default = "default_compiled_cache")]
    pub compiled_cache: PathBuf,
}

impl Default for PolicyHostConfig {
    fn default() -> Self {
        PolicyHostConfig {
            audit: default_audit(),
            attachment_wait: default_policy_wait(),
            concurrency: default_policy_concurrency(),
            compiled_cache: default_compiled_cache(),
        }
    }
}

fn default_policy_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_policy_memory() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_audit() -> String {
    "stdout".into()
}
fn default_policy_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_policy_concurrency() -> u32 {
    32
}
fn default_compiled_cache() -> PathBuf {
    PathBuf::from("policy-cache")
}

/// One `[trust.<name>]` entry.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// `keys = ["keys/release.pub"]`: PEM public keys (ECDSA, RSA, Ed25519), relative to the file.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// `trusted_root = "trust/trusted_root.json"`: a Sigstore trusted root (Fulcio CAs, Rekor
    /// keys) for keyless signatures.
    pub trusted_root: Option<PathBuf>,
    /// `ca_certs = ["trust/fulcio.pem"]`: PEM CA chains (root last) for keyless signatures,
    /// with `rekor_keys`, instead of a trusted root.
    #[serde(default)]
    pub ca_certs: Vec<PathBuf>,
    /// `rekor_keys = ["trust/rekor.pub"]`: PEM transparency log keys, with `ca_certs`.
    #[serde(default)]
    pub rekor_keys: Vec<PathBuf>,
}

/// `[auth]` settings: users from an htpasswd file, and per-scope rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `htpasswd = "users.htpasswd"`: bcrypt entries (`htpasswd -B`), relative to the config file.
    pub htpasswd: Option<PathBuf>,
    /// `anonymous_read = true`: pulls need no credentials unless a rule says otherwise.
    #[serde(default = "default_true")]
    pub anonymous_read: bool,
    /// `[[auth.rule]]`: the first rule whose scope matches `<namespace>/<repository>` decides.
    #[serde(default, rename = "rule")]
    pub rules: Vec<AuthRule>,
    /// The users read from `htpasswd` at load time: name and bcrypt hash.
    #[serde(skip)]
    pub users: Vec<(String, String)>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            anonymous_read: true,
            rules: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// One `[[auth.rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// `scope = "internal/*"`: a glob over `<namespace>/<repository>` (`*` matches anything).
    pub scope: String,
    /// `read = ["alice", "*"]`: who may pull (`"*"` any signed-in user, `"anonymous"` everyone);
    /// unset: the default (`anonymous_read`).
    pub read: Option<Vec<String>>,
    /// `write = ["ci"]`: who may push (`"*"` any signed-in user); unset: any signed-in user.
    pub write: Option<Vec<String>>,
    /// `override = true`: those who may write here may also push ordinary tags and manifests
    /// onto proxied repositories, replacing the upstream's for every client (without it, writes
    /// to a proxied repository are limited to signatures, attestations, SBOMs and referrers).
    #[serde(default, rename = "override")]
    pub override_upstream: bool,
}

fn default_true() -> bool {
    true
}

/// One `[[local]]` namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// `name = "internal"`: clients push and pull `/v2/internal/<repo>/...`.
    pub name: String,
}

/// `[server]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `listen = "127.0.0.1:5000"`: the socket address to bind (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `shutdown_grace = "30s"`: how long in-flight requests may run on after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace: HumanDuration,
    /// `header_timeout = "30s"`: how long a client may take to send a request's headers.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// `body_timeout = "60s"`: how long a request body may pause between bytes.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: HumanDuration,
    /// `idle_timeout = "75s"`: how long a connection with no request in flight stays open.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// `max_connections = 10000`: client connections open at once, beyond which new ones wait
    /// to be accepted; by default half the file descriptor limit.
    pub max_connections: Option<usize>,
    /// `tls_cert = "tls/cert.pem"`: serve HTTPS with this PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key = "tls/key.pem"`: the PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `insecure_auth = true`: accept users' Basic credentials over plain HTTP, for a proxy
    /// whose TLS is terminated in front of it (without it, users need `tls_cert`).
    #[serde(default)]
    pub insecure_auth: bool,
    /// `default_upstream = "docker.io"`: a path whose first segment names no namespace goes to
    /// this upstream, whole (Docker's `registry-mirrors` ask `/v2/library/alpine/...`).
    pub default_upstream: Option<String>,
}

/// `[storage]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `path = "data"`: the cache directory, relative to the configuration file.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// `max_size = "20GiB"`: cached content beyond this is evicted, least recently used first.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `min_free = "256MiB"`: below this much free disk space, blobs are streamed from the
    /// upstream without being cached.
    #[serde(default = "default_min_free")]
    pub min_free: ByteSize,
    /// `upload_ttl = "24h"`: an unfinished upload session is removed after this long.
    #[serde(default = "default_upload_ttl")]
    pub upload_ttl: HumanDuration,
    /// `allow_delete = false`: whether clients may delete pushed manifests and tags.
    #[serde(default)]
    pub allow_delete: bool,
}

/// `[cache]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `tag_ttl = "5m"`: how long a tag resolution is trusted before it is revalidated upstream.
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl: HumanDuration,
    /// `memory = "64MiB"`: manifests kept in memory (all content also lives on disk).
    #[serde(default = "default_cache_memory")]
    pub memory: ByteSize,
    /// `attachment_ttl = "1m"`: how long an attachment found missing upstream stays missing.
    #[serde(default = "default_attachment_ttl")]
    pub attachment_ttl: HumanDuration,
    /// `attachment_wait = "10s"`: how long the referrers endpoint waits for attachments to resolve.
    #[serde(default = "default_attachment_wait")]
    pub attachment_wait: HumanDuration,
}

/// The kinds of cosign attachment fetched next to each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    /// `sha256-<hex>.sig`: signatures.
    Sig,
    /// `sha256-<hex>.att`: attestations.
    Att,
    /// `sha256-<hex>.sbom`: SBOMs.
    Sbom,
    /// OCI 1.1 referrers (API, else the `sha256-<hex>` tag).
    Referrers,
}

impl AttachmentKind {
    /// Every kind, the default.
    pub const ALL: [AttachmentKind; 4] = [
        AttachmentKind::Sig,
        AttachmentKind::Att,
        AttachmentKind::Sbom,
        AttachmentKind::Referrers,
    ];

    /// The tag suffix of a tag-scheme kind.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            AttachmentKind::Sig => Some(".sig"),
            AttachmentKind::Att => Some(".att"),
            AttachmentKind::Sbom => Some(".sbom"),
            AttachmentKind::Referrers => None,
        }
    }
}

/// One `[[upstream]]` registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `name = "docker.io"`: the first path segment clients use, `/v2/docker.io/<repo>/...`.
    pub name: String,
    /// `url = "https://registry-1.docker.io"`: the registry's base URL.
    pub url: url::Url,
    /// `aliases = ["index.docker.io"]`: other host names that map here (containerd's `?ns=`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `username = "..."`: for basic auth or the token realm.
    pub username: Option<String>,
    /// `password_file = "secrets/hub"`: file holding the password, relative to the config file.
    pub password_file: Option<PathBuf>,
    /// `connect_timeout = "10s"`: limit for establishing a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// `timeout = "30s"`: limit for a response to start and for each read of a body.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// `retries = 2`: extra attempts for idempotent requests that failed before any body byte.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `ca_file = "certs/ca.pem"`: extra PEM root certificates to trust for this upstream.
    pub ca_file: Option<PathBuf>,
    /// `attachments = ["sig", "att", "sbom", "referrers"]`: what to fetch next to each image
    /// (all by default; `[]` turns attachment fetching off).
    #[serde(default = "default_attachments")]
    pub attachments: Vec<AttachmentKind>,
    /// The password read from `password_file` at load time (never logged).
    #[serde(skip)]
    pub password: Option<String>,
}

impl fmt::Display for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.url)
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:5000".parse().expect("constant address")
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(75))
}
fn default_storage_path() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_size() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_min_free() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_upload_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_tag_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_cache_memory() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_attachment_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_attachment_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_attachments() -> Vec<AttachmentKind> {
    AttachmentKind::ALL.to_vec()
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_retries() -> u32 {
    2
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            shutdown_grace: default_grace(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: None,
            tls_cert: None,
            tls_key: None,
            insecure_auth: false,
            default_upstream: None,
        }
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_storage_path(),
            max_size: default_max_size(),
            min_free: default_min_free(),
            upload_ttl: default_upload_ttl(),
            allow_delete: false,
        }
    }
}
impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            tag_ttl: default_tag_ttl(),
            memory: default_cache_memory(),
            attachment_ttl: default_attachment_ttl(),
            attachment_wait: default_attachment_wait(),
        }
    }
}

/// A duration written for humans in TOML: `"30s"`, `"5m"`, `"1h 30m"`, `"50ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\""
                ))
            })
    }
}

/// A size written for humans in TOML: `"20GiB"`, `"512MB"`, `"4096"` (bytes), or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}; write e.g. \"20GiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                "unknown size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
            ))
            }
        };
        Ok(ByteSize((value * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// Parses TOML text; `file` names the source in errors, `base` resolves relative paths.
    pub fn from_toml_str(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let err = |key: String, problem: String| ConfigError {
            file: file.to_string(),
            key,
            problem,
            place: None,
        };
        let placed = |key: String, e: &toml::de::Error| ConfigError {
            place: place_of(e, text),
            ..err(key, one_line(e.message()))
        };
        let de = toml::Deserializer::parse(text).map_err(|e| placed("-".into(), &e))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." || key.is_empty() {
                "-".to_string()
            } else {
                key
            };
            placed(key, e.inner())
        })?;
        config.resolve_paths(base);
        config
            .validate()
            .map_err(|(key, problem)| err(key, problem))?;
        Ok(config)
    }

    /// Loads a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            problem: format!("cannot read: {e}"),
            place: None,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Config::from_toml_str(&text, &file, &base)
    }

    /// The built-in configuration, relative paths resolved against the working directory.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::from_toml_str(EMBEDDED_DEFAULTS, "<embedded defaults>", Path::new("."))
    }

    /// Whether a namespace is a `[[local]]` one.
    pub fn is_local(&self, name: &str) -> bool {
        self.locals.iter().any(|l| l.name == name)
    }

    /// Finds the upstream a client addresses by name or by one of its aliases.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams
            .iter()
            .find(|u| u.name == name || u.aliases.iter().any(|a| a == name))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        self.storage.path = join(&self.storage.path);
        self.server.tls_cert = self.server.tls_cert.as_ref().map(join);
        self.server.tls_key = self.server.tls_key.as_ref().map(join);
        self.auth.htpasswd = self.auth.htpasswd.as_ref().map(join);
        for t in self.trust.values_mut() {
            t.keys = t.keys.iter().map(join).collect();
            t.trusted_root = t.trusted_root.as_ref().map(join);
            t.ca_certs = t.ca_certs.iter().map(join).collect();
            t.rekor_keys = t.rekor_keys.iter().map(join).collect();
        }
        for p in &mut self.policies {
            if let ModuleSource::File(path) = &p.module {
                p.module = ModuleSource::File(join(path));
            }
        }
        if self.policy_host.audit != "stdout" {
            self.policy_host.audit = join(&PathBuf::from(&self.policy_host.audit))
                .display()
                .to_string();
        }
        for u in &mut self.upstreams {
            u.password_file = u.password_file.as_ref().map(join);
            u.ca_file = u.ca_file.as_ref().map(join);
        }
    }

    /// A policy's module: a readable file, or an `oci://` reference into a configured
    /// namespace with a `verify` naming a configured trust entry.
    fn check_module(&self, i: usize, p: &PolicyConfig) -> Result<(), (String, String)> {
        let key = |k: &str| format!("policy[{i}].{k}");
        match &p.module {
            ModuleSource::File(path) => {
                std::fs::metadata(path).map_err(|e| {
                    (
                        key("module"),
                        format!("policy {:?}: cannot read {}: {e}", p.name, path.display()),
                    )
                })?;
                if p.verify.is_some() || p.verify_identity.is_some() {
                    return Err((key("verify"), format!("policy {:?}: verify applies to modules pulled from a registry (oci://...); a file is trusted as it is", p.name)));
                }
            }
            ModuleSource::Oci { namespace, .. } => {
                let known = self.upstreams.iter().any(|u| &u.name == namespace)
                    || self.locals.iter().any(|l| &l.name == namespace);
                if !known {
                    return Err((
                        key("module"),
                        format!("policy {:?}: {namespace:?} is no upstream or local namespace of this proxy", p.name),
                    ));
                }
                match &p.verify {
                    None => return Err((key("verify"), format!("policy {:?}: a module pulled from a registry runs only verified: name the [trust.<name>] whose signature it must carry", p.name))),
                    Some(t) if !self.trust.contains_key(t) => {
                        return Err((key("verify"), format!("policy {:?}: no [trust.{t}] is configured", p.name)))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: unique names, readable files, sane values.
    fn validate(&mut self) -> Result<(), (String, String)> {
        if self.storage.max_size.0 == 0 {
            return Err(("storage.max_size".into(), "must be larger than zero".into()));
        }
        if self.cache.tag_ttl.0.is_zero() {
            return Err(("cache.tag_ttl".into(), "must be larger than zero".into()));
        }
        self.validate_server_and_auth()?;
        let mut seen = HashSet::new();
        for (i, u) in self.upstreams.iter_mut().enumerate() {
            let key = |k: &str| format!("upstream[{i}].{k}");
            if !valid_namespace(&u.name) {
                return Err((key("name"), format!("{:?} is not a valid namespace: use lower-case letters, digits, '.', '_' and '-'", u.name)));
            }
            for n in std::iter::once(&u.name).chain(&u.aliases) {
                if !seen.insert(n.clone()) {
                    return Err((
                        key("name"),
                        format!("{n:?} is used by more than one upstream"),
                    ));
                }
            }
            if !matches!(u.url.scheme(), "http" | "https") || u.url.host().is_none() {
                return Err((
                    key("url"),
                    format!(
                        "{:?} must be an http:// or https:// URL with a host",
                        u.url.as_str()
                    ),
                ));
            }
            if u.password_file.is_some() && u.username.is_none() {
                return Err((
                    key("username"),
                    "password_file is set but username is missing".into(),
                ));
            }
            if let Some(p) = &u.password_file {
                let pw = std::fs::read_to_string(p).map_err(|e| {
                    (
                        key("password_file"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                u.password = Some(pw.trim_end_matches(['\r', '\n']).to_string());
            }
            if let Some(p) = &u.ca_file {
                std::fs::metadata(p)
                    .map_err(|e| (key("ca_file"), format!("cannot read {}: {e}", p.display())))?;
            }
            if u.timeout.0.is_zero() || u.connect_timeout.0.is_zero() {
                return Err((key("timeout"), "timeouts must be larger than zero".into()));
            }
        }
        for (i, l) in self.locals.iter().enumerate() {
            let key = format!("local[{i}].name");
            if !valid_namespace(&l.name) {
                return Err((key, format!("{:?} is not a valid namespace: use lower-case letters, digits, '.', '_' and '-'", l.name)));
            }
            if !seen.insert(l.name.clone()) {
                return Err((
                    key,
                    format!(
                        "{:?} is used by more than one upstream or local namespace",
                        l.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_server_and_auth(&mut self) -> Result<(), (String, String)> {
        if let Some(name) = &self.server.default_upstream {
            if !self.upstreams.iter().any(|u| &u.name == name) {
                return Err((
                    "server.default_upstream".into(),
                    format!("names no [[upstream]]: {name:?}"),
                ));
            }
        }
        if self.server.max_connections == Some(0) {
            return Err(("server.max_connections".into(), "must be at least 1".into()));
        }
        for (key, d) in [
            ("server.header_timeout", self.server.header_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err((key.into(), "must be larger than zero".into()));
            }
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(c), Some(k)) => {
                for (key, p) in [("server.tls_cert", c), ("server.tls_key", k)] {
                    std::fs::metadata(p).map_err(|e| {
                        (key.to_string(), format!("cannot read {}: {e}", p.display()))
                    })?;
                }
            }
            (Some(_), None) => {
                return Err((
                    "server.tls_key".into(),
                    "tls_cert is set but tls_key is missing".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "server.tls_cert".into(),
                    "tls_key is set but tls_cert is missing".into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(p) = &self.auth.htpasswd {
            let text = std::fs::read_to_string(p).map_err(|e| {
                (
                    "auth.htpasswd".to_string(),
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            self.auth.users = parse_htpasswd(&text).map_err(|problem| {
                (
                    "auth.htpasswd".to_string(),
                    format!("{}: {problem}", p.display()),
                )
            })?;
            if self.server.tls_cert.is_none() && !self.server.insecure_auth {
                return Err((
                    "auth.htpasswd".into(),
                    "users are configured but the proxy serves plain HTTP, so their passwords would cross the network in the clear: set server.tls_cert and server.tls_key, or server.insecure_auth = true when TLS is terminated in front of the proxy".into(),
                ));
            }
        }
        crate::verify::TrustStore::load(&self.trust)?;
        let mut names = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            if !names.insert(p.name.clone()) {
                return Err((
                    format!("policy[{i}].name"),
                    format!("{:?} is used by more than one policy", p.name),
                ));
            }
            self.check_module(i, p)?;
            if p.scope.is_empty() {
                return Err((
                    format!("policy[{i}].scope"),
                    format!("policy {:?} has an empty scope", p.name),
                ));
            }
            if p.timeout.0.is_zero() || p.memory.0 < (1 << 20) {
                return Err((
                    format!("policy[{i}].timeout"),
                    format!(
                        "policy {:?}: timeout must be > 0 and memory at least 1MiB",
                        p.name
                    ),
                ));
            }
        }
        if self.policy_host.concurrency == 0 {
            return Err(("policies.concurrency".into(), "must be at least 1".into()));
        }
        for (i, r) in self.auth.rules.iter().enumerate() {
            if r.scope.is_empty() {
                return Err((format!("auth.rule[{i}].scope"), "must not be empty".into()));
            }
        }
        Ok(())
    }
}

/// Parses htpasswd lines `user:$2y$...` (bcrypt only; other hash kinds are refused).
pub fn parse_htpasswd(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(format!(
                "line {}: user {user:?} has no bcrypt hash (create entries with htpasswd -B)",
                n + 1
            ));
        }
        users.push((user.to_string(), hash.to_string()));
    }
    Ok(users)
}

/// A namespace is one repository path component (so `/v2/<ns>/<repo>` parses unambiguously).
fn valid_namespace(s: &str) -> bool {
    s.parse::<crate::names::RepoName>().is_ok() && !s.contains('/')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml", Path::new("/etc/portcullis"))
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage.path, Path::new("./data"));
        assert!(c.upstream("docker.io").is_some());
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
            [server]
            listen = "0.0.0.0:8080"
            [storage]
            path = "cache"
            max_size = "1.5GiB"
            [cache]
            tag_ttl = "1m 30s"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            aliases = ["index.docker.io"]
            timeout = "5s"
            attachments = ["sig", "referrers"]
            "#,
        )
        .unwrap();
        assert_eq!(c.storage.path, Path::new("/etc/portcullis/cache"));
        assert_eq!(c.storage.max_size.0, 1610612736);
        assert_eq!(c.cache.tag_ttl.0, Duration::from_secs(90));
        assert_eq!(c.upstream("index.docker.io").unwrap().name, "docker.io");
        assert_eq!(c.upstreams[0].timeout.0, Duration::from_secs(5));
        assert_eq!(
            c.upstreams[0].attachments,
            vec![AttachmentKind::Sig, AttachmentKind::Referrers]
        );
        assert_eq!(c.cache.attachment_ttl.0, Duration::from_secs(60));
    }

    #[test]
    fn registry_modules_are_read_and_need_a_known_namespace_and_trust() {
        let oci = |reference: &str| ModuleSource::parse(reference);
        assert_eq!(
            oci("oci://internal/policies/gate:v1").unwrap(),
            ModuleSource::Oci {
                namespace: "internal".into(),
                repository: "policies/gate".into(),
                reference: "v1".into(),
            }
        );
        let pinned = format!("oci://docker.io/org/gate@sha256:{}", "a".repeat(64));
        assert_eq!(oci(&pinned).unwrap().to_string(), pinned);
        for bad in [
            "oci://gate:v1",
            "oci://internal/gate",
            "oci:///gate:v1",
            "oci://internal/Gate:v1",
        ] {
            assert!(oci(bad).is_err(), "{bad}");
        }
        assert_eq!(
            oci("gate.wasm").unwrap(),
            ModuleSource::File("gate.wasm".into())
        );
        use p256::pkcs8::EncodePublicKey;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cosign.pub");
        let pem = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into())
            .unwrap()
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        std::fs::write(&key, pem).unwrap();
        let with = |extra: &str| {
            parse(&format!(
                "[[local]]\nname = \"internal\"\n[trust.keys]\nkeys = [{key:?}]\n[[policy]]\nname = \"gate\"\nscope = [\"*\"]\n{extra}\n"
            ))
        };
        let e = with("module = \"oci://internal/gate:v1\"").unwrap_err();
        assert_eq!(e.key, "policy[0].verify", "{e}");
        let e = with("module = \"oci://elsewhere/gate:v1\"\nverify = \"keys\"").unwrap_err();
        assert!(e.problem.contains("no upstream or local namespace"), "{e}");
        let e = with("module = \"oci://internal/gate:v1\"\nverify = \"other\"").unwrap_err();
        assert!(e.problem.contains("no [trust.other]"), "{e}");
        with("module = \"oci://internal/gate:v1\"\nverify = \"keys\"").unwrap();
        let e = with(&format!("module = {key:?}\nverify = \"keys\"")).unwrap_err();
        assert!(e.problem.contains("a file is trusted as it is"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = parse("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("test.toml", "server.listen"),
            "{e}"
        );
        assert!(e.problem.contains("invalid socket address"), "{e}");

        let e = parse("[cache]\ntag_ttl = \"soon\"\n").unwrap_err();
        assert_eq!(e.key, "cache.tag_ttl");
        assert!(e.problem.contains("invalid duration"), "{e}");

        let e = parse("[storage]\nmax_size = \"12 parsecs\"\n").unwrap_err();
        assert_eq!(e.key, "storage.max_size");

        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\ncolour = \"blue\"\n").unwrap_err();
        assert!(e.problem.contains("unknown field `colour`"), "{e}");

        let e = parse("[[upstream]]\nname = \"Docker Hub\"\nurl = \"https://x\"\n").unwrap_err();
        assert_eq!(e.key, "upstream[0].name");

        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!(e.key, "upstream[0].url");

        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[[upstream]]\nname = \"a\"\nurl = \"http://y\"\n").unwrap_err();
        assert!(e.problem.contains("more than one"), "{e}");

        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n").unwrap_err();
        assert_eq!(e.key, "upstream[0].password_file");

        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nattachments = [\"sigs\"]\n")
            .unwrap_err();
        assert_eq!(e.key, "upstream[0].attachments[0]", "{e}");

        let e = parse("[server\n").unwrap_err();
        assert_eq!(e.key, "-");
        assert_eq!(e.to_string().split(':').next(), Some("test.toml"));
    }

    #[test]
    fn sizes() {
        assert_eq!("20GiB".parse::<ByteSize>().unwrap().0, 20 << 30);
        assert_eq!("512 MB".parse::<ByteSize>().unwrap().0, 512_000_000);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
