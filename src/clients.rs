//! The files clients read to pull through the proxy, generated from its configuration:
//! podman/CRI-O/skopeo `registries.conf`, `registries.d` and `policy.json`, containerd
//! `hosts.toml` per upstream, Docker `daemon.json`, and the certificates and keys they name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use crate::config::{Config, PolicyMode, UpstreamConfig};

/// How `registries.conf` sends a registry's pulls to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Form {
    /// The proxy as a mirror: clients fall back to the registry itself when it fails.
    #[default]
    Mirror,
    /// The proxy as the registry's location: no fallback.
    Location,
}

/// What the generated files point at.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy as clients reach it: `host:port`.
    pub proxy: String,
    /// Whether the proxy serves HTTPS.
    pub tls: bool,
    /// A CA certificate (PEM) clients must trust for the proxy's HTTPS, if any.
    pub ca: Option<Vec<u8>>,
    /// The `registries.conf` form.
    pub form: Form,
    /// Where the key files will be on the clients (`policy.json` names them there).
    pub keys_dir: PathBuf,
}

/// One generated file, by its path relative to the output directory.
#[derive(Debug, Clone)]
pub struct File {
    /// Relative path, e.g. `containerd/docker.io/hosts.toml`.
    pub path: PathBuf,
    /// The bytes to write.
    pub contents: Vec<u8>,
}

/// The generated files, and what could not be expressed in them.
#[derive(Debug, Default)]
pub struct ClientFiles {
    /// Files to write.
    pub files: Vec<File>,
    /// One line each: what a client file cannot say that the proxy enforces, and similar.
    pub notes: Vec<String>,
}

impl ClientFiles {
    fn add(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.files.push(File {
            path: path.into(),
            contents: contents.into(),
        });
    }
}

/// Generates every client file for `config` as reached through `options`.
pub fn generate(config: &Config, options: &Options) -> Result<ClientFiles, String> {
    check_proxy(&options.proxy)?;
    let mut out = ClientFiles::default();
    out.add("registries.conf", registries_conf(config, options));
    out.add(
        "registries.d/portcullis.yaml",
        registries_d(config, options),
    );
    policy_json(config, options, &mut out)?;
    if let Some(ca) = &options.ca {
        out.add(format!("certs.d/{}/ca.crt", options.proxy), ca.clone());
    }
    for up in &config.upstreams {
        hosts_toml(config, up, options, &mut out);
    }
    daemon_json(config, options, &mut out);
    if config
        .policies
        .iter()
        .any(|p| p.mode == PolicyMode::Enforce)
    {
        let which = match options.form {
            Form::Mirror => "containerd/*/hosts.toml (mirror form), daemon.json",
            Form::Location => "daemon.json",
        };
        out.notes.push(format!(
            "{which}: containerd and Docker ask the registry itself when the proxy refuses an \
             image (403), and have no signature policy of their own: use --form location for \
             containerd, and keep the registry out of Docker's reach"
        ));
    }
    Ok(out)
}

fn check_proxy(proxy: &str) -> Result<(), String> {
    let host = proxy.rsplit_once(':').map_or(proxy, |(h, _)| h);
    if host.is_empty() || proxy.contains('/') || proxy.contains(char::is_whitespace) {
        return Err(format!(
            "--proxy {proxy:?}: give the proxy as clients reach it, HOST:PORT"
        ));
    }
    if matches!(host, "0.0.0.0" | "[::]" | "::") {
        return Err(format!(
            "--proxy {proxy}: clients cannot reach an unspecified address; give the host name \
             or address they use"
        ));
    }
    Ok(())
}

/// The registry host clients write in image names for an upstream: its name when that is a
/// host, else the first alias that is, else its URL's host and port (Docker Hub's hosts as
/// `docker.io`, which is how clients write it).
pub fn registry_host(up: &UpstreamConfig) -> String {
    let is_host = |n: &&String| n.contains('.') || n.contains(':') || n.as_str() == "localhost";
    let host = std::iter::once(&up.name)
        .chain(&up.aliases)
        .find(is_host)
        .cloned()
        .unwrap_or_else(|| match (up.url.host_str(), up.url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => up.name.clone(),
        });
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn header(options: &Options, what: &str, install: &str) -> String {
    format!(
        "# {what}\n# Pulls through Portcullis at {}. Written by `portcullis client-config`; \
         install as {install}.\n",
        options.proxy
    )
}

fn registries_conf(config: &Config, o: &Options) -> String {
    let mut s = header(
        o,
        "containers-registries.conf(5): podman, CRI-O, skopeo, buildah",
        "/etc/containers/registries.conf",
    );
    let hosts: Vec<String> = config.upstreams.iter().map(registry_host).collect();
    if hosts.iter().any(|h| h == "docker.io") {
        s.push_str("unqualified-search-registries = [\"docker.io\"]\n");
    }
    let insecure = if o.tls { "" } else { "insecure = true\n" };
    for (up, host) in config.upstreams.iter().zip(&hosts) {
        let proxied = quoted(&format!("{}/{}", o.proxy, up.name));
        s.push_str(&format!("\n[[registry]]\nprefix = {}\n", quoted(host)));
        match o.form {
            Form::Mirror => {
                s.push_str(&format!("location = {}\n", quoted(host)));
                if up.url.scheme() == "http" {
                    s.push_str("insecure = true\n");
                }
                s.push_str(&format!(
                    "[[registry.mirror]]\nlocation = {proxied}\n{insecure}"
                ));
            }
            Form::Location => s.push_str(&format!("location = {proxied}\n{insecure}")),
        }
    }
    if !o.tls {
        s.push_str(&format!(
            "\n# the proxy itself (pushes, hosted namespaces), over plain HTTP\n\
             [[registry]]\nlocation = {}\ninsecure = true\n",
            quoted(&o.proxy)
        ));
    }
    s
}

fn registries_d(config: &Config, o: &Options) -> String {
    let mut s = header(
        o,
        "containers-registries.d(5): read cosign signatures from the registry serving the image",
        "/etc/containers/registries.d/portcullis.yaml",
    );
    s.push_str("docker:\n");
    let hosts = config.upstreams.iter().map(registry_host);
    for host in std::iter::once(o.proxy.clone()).chain(hosts) {
        s.push_str(&format!(
            "  {}:\n    use-sigstore-attachments: true\n",
            Value::from(host)
        ));
    }
    s
}

/// The client-side scopes (`policy.json` keys) a policy scope glob covers, or why none. An
/// upstream's images are named by the registry's host (signatures name it); a hosted
/// namespace's by the proxy's address (signed there).
fn client_scopes(glob: &str, config: &Config, o: &Options) -> Result<Vec<String>, String> {
    let (ns, repo) = match glob.split_once('/') {
        Some((ns, repo)) => (ns, Some(repo)),
        None if glob == "*" => (glob, None),
        None => return Err("matches no repository (scopes are <namespace>/<repository>)".into()),
    };
    let repo = match repo {
        Some("") => return Err("matches no repository (the repository is empty)".into()),
        None | Some("*") => None,
        Some(r) if !r.contains('*') => Some(r.to_string()),
        Some(r) if r.ends_with("/*") && !r[..r.len() - 2].contains('*') => {
            Some(r[..r.len() - 2].to_string())
        }
        Some(_) => return Err("only a trailing `/*` has a policy.json equivalent".into()),
    };
    let namespaces: Vec<&str> = match ns {
        "*" if repo.is_none() => config
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .chain(config.locals.iter().map(|l| l.name.as_str()))
            .collect(),
        n if n.contains('*') => {
            return Err("a wildcard namespace has no policy.json equivalent".into())
        }
        n => vec![n],
    };
    let mut scopes = Vec::new();
    for ns in namespaces {
        let base = match config.upstream(ns) {
            Some(up) => registry_host(up),
            None if config.is_local(ns) => format!("{}/{ns}", o.proxy),
            None => return Err(format!("names no upstream or local namespace {ns:?}")),
        };
        scopes.push(match &repo {
            Some(r) => format!("{base}/{r}"),
            None => base,
        });
    }
    Ok(scopes)
}

/// Settings of the signature policies, as far as `policy.json` can say the same.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureSettings {
    trust: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    threshold: u32,
    issuer: Option<String>,
    subject: Option<String>,
    subject_regexp: Option<String>,
}

fn policy_json(config: &Config, o: &Options, out: &mut ClientFiles) -> Result<(), String> {
    let mut scopes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in config
        .policies
        .iter()
        .filter(|p| p.mode == PolicyMode::Enforce)
    {
        let requirement = match signature_requirement(p, config, o, out) {
            Ok(r) => r,
            Err(e) => {
                out.notes.push(format!(
                    "policy.json: policy {:?} is not in it: {e}; the proxy enforces it, clients \
                     do not (a mirror's client may take what it refuses from the registry itself)",
                    p.name
                ));
                continue;
            }
        };
        for glob in &p.scope {
            match client_scopes(glob, config, o) {
                Ok(list) => list.into_iter().for_each(|s| {
                    let reqs = scopes.entry(s).or_default();
                    if !reqs.contains(&requirement) {
                        reqs.push(requirement.clone());
                    }
                }),
                Err(e) => out.notes.push(format!(
                    "policy.json: policy {:?}, scope {glob:?}: {e}; the proxy enforces it, \
                     clients do not",
                    p.name
                )),
            }
        }
    }
    let policy = json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": with_broader(&scopes),
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
        },
    });
    let text = serde_json::to_string_pretty(&policy).map_err(|e| e.to_string())?;
    out.add("policy.json", text + "\n");
    Ok(())
}

/// Each scope with the requirements of every scope covering it as well: policy.json applies
/// only the most specific scope that matches, where the proxy applies every policy in scope.
fn with_broader(scopes: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, Vec<Value>> {
    let covers = |broad: &str, narrow: &str| {
        narrow
            .strip_prefix(broad)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    scopes
        .keys()
        .map(|narrow| {
            let mut reqs: Vec<Value> = Vec::new();
            let covering = scopes.iter().filter(|(broad, _)| covers(broad, narrow));
            for r in covering.flat_map(|(_, list)| list) {
                if !reqs.contains(r) {
                    reqs.push(r.clone());
                }
            }
            (narrow.clone(), reqs)
        })
        .collect()
}

/// The `sigstoreSigned` requirement of one policy, or why it has none.
fn signature_requirement(
    p: &crate::config::PolicyConfig,
    config: &Config,
    o: &Options,
    out: &mut ClientFiles,
) -> Result<Value, String> {
    let settings = p.settings.clone().into_iter();
    let settings = Value::Object(settings.map(|(k, v)| (k, toml_to_json(v))).collect());
    let Ok(s) = serde_json::from_value::<SignatureSettings>(settings) else {
        return Err(
            "its settings are not a signature policy's (trust, keys, issuer, subject)".into(),
        );
    };
    if s.threshold > 1 {
        out.notes.push(format!(
            "policy.json: policy {:?} wants {} signers; policy.json asks for one",
            p.name, s.threshold
        ));
    }
    let trust = match &s.trust {
        Some(name) => Some((
            name,
            config.trust.get(name).ok_or(format!("no [trust.{name}]"))?,
        )),
        None => None,
    };
    let identity = json!({"type": "matchRepository"});
    if let Some(issuer) = &s.issuer {
        let subject = s.subject.as_ref().ok_or_else(|| {
            let re = s.subject_regexp.as_deref().unwrap_or_default();
            format!("subject_regexp {re:?}: policy.json matches an exact subjectEmail only")
        })?;
        if !subject.contains('@') || subject.contains("://") {
            return Err(format!(
                "subject {subject:?} is no email address, and policy.json matches subjectEmail only"
            ));
        }
        let (name, trust) = trust.ok_or("a keyless policy needs a named trust for policy.json")?;
        let (ca, rekor) = keyless_material(name, trust)?;
        let ca_path = key_file(o, out, ca);
        let rekor_paths: Vec<String> = rekor.into_iter().map(|pem| key_file(o, out, pem)).collect();
        let mut r = json!({
            "type": "sigstoreSigned",
            "fulcio": {"caPath": ca_path, "oidcIssuer": issuer, "subjectEmail": subject},
            "signedIdentity": identity,
        });
        match rekor_paths.as_slice() {
            [one] => r["rekorPublicKeyPath"] = json!(one),
            many => r["rekorPublicKeyPaths"] = json!(many),
        }
        return Ok(r);
    }
    let mut keys: Vec<String> = Vec::new();
    if let Some((name, trust)) = trust {
        if trust.keys.is_empty() {
            return Err(format!(
                "[trust.{name}] has no keys, and policy.json cannot accept any keyless signer"
            ));
        }
        for path in &trust.keys {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            keys.push(key_file(o, out, pem));
        }
    }
    for pem in &s.keys {
        keys.push(key_file(o, out, pem.clone().into_bytes()));
    }
    let mut r = json!({"type": "sigstoreSigned", "signedIdentity": identity});
    match keys.as_slice() {
        [] => return Err("it names no key and no keyless identity".into()),
        [one] => r["keyPath"] = json!(one),
        many => r["keyPaths"] = json!(many),
    }
    Ok(r)
}

/// Adds `keys/<16 hex digits of its SHA-256>.pem` once (named by content, so no two trust
/// entries or policies can claim one name) and returns the path `policy.json` gives for it.
fn key_file(o: &Options, out: &mut ClientFiles, pem: Vec<u8>) -> String {
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&pem));
    let name = format!("{}.pem", &hash[..16]);
    let rel = PathBuf::from("keys").join(&name);
    if !out.files.iter().any(|f| f.path == rel) {
        out.add(rel, pem);
    }
    o.keys_dir.join(&name).display().to_string()
}

fn toml_to_json(v: toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The Fulcio CA certificates (one PEM bundle) and Rekor keys (PEM each) of a trust entry.
fn keyless_material(
    name: &str,
    trust: &crate::config::TrustConfig,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if let Some(root) = &trust.trusted_root {
        return trusted_root_material(&read(root)?).map_err(|e| format!("{}: {e}", root.display()));
    }
    if trust.ca_certs.is_empty() || trust.rekor_keys.is_empty() {
        return Err(format!("[trust.{name}] has no keyless CA and log keys"));
    }
    let mut ca = Vec::new();
    for p in &trust.ca_certs {
        ca.extend(read(p)?);
        ca.push(b'\n');
    }
    let rekor = trust
        .rekor_keys
        .iter()
        .map(|p| read(p))
        .collect::<Result<_, _>>()?;
    Ok((ca, rekor))
}

/// Fulcio CAs and Rekor keys of a Sigstore `trusted_root.json`, as PEM.
fn trusted_root_material(json: &[u8]) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let root: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let raw = |v: &Value| -> Result<Vec<u8>, String> {
        let b64 = v["rawBytes"].as_str().ok_or("an entry without rawBytes")?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("rawBytes: {e}"))
    };
    let mut ca = Vec::new();
    for authority in root["certificateAuthorities"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for cert in authority["certChain"]["certificates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ca.extend(pem("CERTIFICATE", &raw(cert)?));
        }
    }
    let rekor: Vec<Vec<u8>> = root["tlogs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|log| raw(&log["publicKey"]).map(|der| pem("PUBLIC KEY", &der)))
        .collect::<Result<_, _>>()?;
    if ca.is_empty() || rekor.is_empty() {
        return Err("no certificate authority or no transparency log".into());
    }
    Ok((ca, rekor))
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s.into_bytes()
}

fn scheme(o: &Options) -> &'static str {
    if o.tls {
        "https"
    } else {
        "http"
    }
}

/// `containerd/<registry>/hosts.toml`: the path-prefixed form, which names the upstream
/// whatever registry host clients write; after it, containerd asks its `server`: the registry
/// (mirror form) or the proxy again (location form: a refusal is not passed by).
fn hosts_toml(config: &Config, up: &UpstreamConfig, o: &Options, out: &mut ClientFiles) {
    let host = registry_host(up);
    if config.upstream(&host).map(|u| &u.name) != Some(&up.name) {
        out.notes.push(format!(
            "containerd/{host}/hosts.toml: not written: containerd names the registry {host:?} \
             in each request (?ns=); add it to the aliases of [[upstream]] {:?}",
            up.name
        ));
        return;
    }
    let mut s = header(
        o,
        "containerd hosts.toml",
        &format!("/etc/containerd/certs.d/{host}/hosts.toml"),
    );
    let proxied = quoted(&format!("{}://{}/v2/{}", scheme(o), o.proxy, up.name));
    let server = match o.form {
        // the registry after the proxy: containerd falls back to it when the proxy fails
        Form::Mirror => up.url.origin().ascii_serialization(),
        // the proxy again (at its root, naming the registry by ?ns=): nothing else to ask
        Form::Location => format!("{}://{}", scheme(o), o.proxy),
    };
    s.push_str(&format!("server = {}\n", quoted(&server)));
    let ca = "ca = \"ca.crt\"   # beside this file\n";
    if o.ca.is_some() && o.form == Form::Location {
        s.push_str(ca);
    }
    s.push_str(&format!(
        "\n[host.{proxied}]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
    ));
    if let Some(pem) = &o.ca {
        s.push_str(&format!("  {ca}"));
        out.add(format!("containerd/{host}/ca.crt"), pem.clone());
    }
    out.add(format!("containerd/{host}/hosts.toml"), s);
}

/// `daemon.json`: Docker mirrors Docker Hub only, at the root, so it needs `default_upstream`.
fn daemon_json(config: &Config, o: &Options, out: &mut ClientFiles) {
    let Some(default) = &config.server.default_upstream else {
        out.notes.push(
            "daemon.json: not written: Docker asks a mirror for Docker Hub's images at the root \
             (/v2/library/...); set [server] default_upstream to serve them"
                .into(),
        );
        return;
    };
    if let Some(up) = config.upstream(default) {
        let host = registry_host(up);
        if host != "docker.io" {
            out.notes.push(format!(
                "daemon.json: Docker will get {host}'s images (default_upstream {default:?}) for \
                 Docker Hub names"
            ));
        }
    }
    let mut d = json!({"registry-mirrors": [format!("{}://{}", scheme(o), o.proxy)]});
    if !o.tls {
        d["insecure-registries"] = json!([o.proxy]);
    }
    let text = serde_json::to_string_pretty(&d).expect("JSON of strings");
    out.add("daemon.json", text + "\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[storage]\npath = \"/tmp/x\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"http://127.0.0.1:5001\"\n[[local]]\nname = \"team\"\n{extra}"
        );
        Config::from_toml_str(&text, "t.toml", Path::new("/")).unwrap()
    }

    fn options() -> Options {
        Options {
            proxy: "proxy.example:5000".into(),
            tls: false,
            ca: None,
            form: Form::Mirror,
            keys_dir: "/etc/containers/keys".into(),
        }
    }

    fn file<'a>(f: &'a ClientFiles, path: &str) -> &'a str {
        let found = f.files.iter().find(|x| x.path == Path::new(path));
        std::str::from_utf8(&found.unwrap_or_else(|| panic!("no {path}")).contents).unwrap()
    }

    #[test]
    fn registry_hosts_are_what_clients_write() {
        let c = config("");
        assert_eq!(registry_host(&c.upstreams[0]), "docker.io");
        assert_eq!(registry_host(&c.upstreams[1]), "127.0.0.1:5001");
    }

    #[test]
    fn scopes_map_trailing_globs_and_refuse_the_rest() {
        let (c, o) = (config(""), options());
        let scopes = |g: &str| client_scopes(g, &c, &o);
        assert_eq!(scopes("docker.io/myorg/*").unwrap(), ["docker.io/myorg"]);
        assert_eq!(scopes("up/a/b").unwrap(), ["127.0.0.1:5001/a/b"]);
        assert_eq!(scopes("team/app").unwrap(), ["proxy.example:5000/team/app"]);
        assert_eq!(
            scopes("*").unwrap(),
            ["docker.io", "127.0.0.1:5001", "proxy.example:5000/team"]
        );
        for unsupported in [
            "docker.io/my*/app",
            "*/app",
            "nowhere/app",
            "docker.io",
            "docker.io/",
        ] {
            assert!(scopes(unsupported).is_err(), "{unsupported}");
        }
    }

    #[test]
    fn unreachable_proxy_addresses_are_refused() {
        assert!(check_proxy("0.0.0.0:5000").is_err());
        assert!(check_proxy("http://x:5000").is_err());
        assert!(check_proxy("proxy.example:5000").is_ok());
    }

    #[test]
    fn forms_and_tls_change_registries_conf() {
        let c = config("");
        let mut o = options();
        let f = generate(&c, &o).unwrap();
        let conf: toml::Table = file(&f, "registries.conf").parse().unwrap();
        let regs = conf["registry"].as_array().unwrap();
        assert_eq!(regs[0]["location"].as_str(), Some("docker.io"));
        assert_eq!(
            regs[0]["mirror"][0]["location"].as_str(),
            Some("proxy.example:5000/docker.io")
        );
        assert_eq!(
            regs[1]["insecure"].as_bool(),
            Some(true),
            "an http upstream"
        );
        o.form = Form::Location;
        o.tls = true;
        let f = generate(&c, &o).unwrap();
        let conf: toml::Table = file(&f, "registries.conf").parse().unwrap();
        let regs = conf["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 2, "no plain-http entry for the proxy itself");
        assert_eq!(
            regs[0]["location"].as_str(),
            Some("proxy.example:5000/docker.io")
        );
        assert!(regs[0].get("insecure").is_none());
    }

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0Wucma6uMItO3GtKaoYAzYkFvm3+\n\
        HRQXuEN81wAdCyKOtXkvRDaqO5lxSyo0IikocwobWDhILksgBTMHtRyf+g==\n\
        -----END PUBLIC KEY-----\n";

    #[test]
    fn policies_become_sigstore_requirements_or_notes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pub"), KEY).unwrap();
        std::fs::write(dir.path().join("m.wasm"), "").unwrap();
        let c = config(&format!(
            "[trust.rel]\nkeys = [\"{}\"]\n\
             [[policy]]\nname = \"sig\"\nmodule = \"/m.wasm\"\nscope = [\"docker.io/myorg/*\", \"up/*/x\"]\n\
             [policy.settings]\ntrust = \"rel\"\n\
             [[policy]]\nname = \"tags\"\nmodule = \"/m.wasm\"\nscope = [\"*\"]\n[policy.settings]\ndeny = [\"latest\"]\n\
             [[policy]]\nname = \"watch\"\nmodule = \"/m.wasm\"\nscope = [\"*\"]\nmode = \"warn\"\n[policy.settings]\ntrust = \"rel\"\n\
             [[policy]]\nname = \"gh\"\nmodule = \"/m.wasm\"\nscope = [\"*\"]\n[policy.settings]\n\
             issuer = \"https://token.actions.githubusercontent.com\"\nsubject = \"https://github.com/o/r/.github/workflows/w.yml@refs/heads/main\"\ntrust = \"rel\"\n",
            dir.path().join("k.pub").display()
        )
        .replace("/m.wasm", &dir.path().join("m.wasm").display().to_string()));
        let f = generate(&c, &options()).unwrap();
        let policy: Value = serde_json::from_str(file(&f, "policy.json")).unwrap();
        let docker = policy["transports"]["docker"].as_object().unwrap();
        assert_eq!(docker.keys().collect::<Vec<_>>(), ["docker.io/myorg"]);
        let r = &docker["docker.io/myorg"][0];
        let path = r["keyPath"].as_str().unwrap();
        let name = path.strip_prefix("/etc/containers/keys/").unwrap();
        assert_eq!(file(&f, &format!("keys/{name}")), KEY);
        assert_eq!(r["signedIdentity"]["type"], "matchRepository");
        let noted = |what: &str| f.notes.iter().any(|n| n.contains(what));
        assert!(noted("up/*/x"), "{:?}", f.notes);
        assert!(
            noted("policy \"tags\" is not in it"),
            "a policy clients do not apply is noted"
        );
        assert!(noted("is no email address"), "{:?}", f.notes);
        assert!(!noted("\"watch\""), "a warn-mode policy refuses nothing");
        assert!(noted("daemon.json: not written"));
        assert!(noted("containerd and Docker ask the registry itself"));
    }

    #[test]
    fn a_scope_carries_the_requirements_of_the_scopes_covering_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pub"), KEY).unwrap();
        std::fs::write(dir.path().join("m.wasm"), "").unwrap();
        let c = config(&format!(
            "[trust.rel]\nkeys = [\"{0}\"]\n\
             [[policy]]\nname = \"all\"\nmodule = \"{1}\"\nscope = [\"*\"]\n[policy.settings]\ntrust = \"rel\"\n\
             [[policy]]\nname = \"inline\"\nmodule = \"{1}\"\nscope = [\"docker.io/myorg/*\"]\n\
             [policy.settings]\nkeys = [\"\"\"{2}\"\"\"]\n",
            dir.path().join("k.pub").display(),
            dir.path().join("m.wasm").display(),
            KEY.trim_end(),
        ));
        let f = generate(&c, &options()).unwrap();
        let policy: Value = serde_json::from_str(file(&f, "policy.json")).unwrap();
        let docker = &policy["transports"]["docker"];
        assert_eq!(docker["docker.io"].as_array().unwrap().len(), 1);
        assert_eq!(
            docker["docker.io/myorg"].as_array().unwrap().len(),
            2,
            "the broader scope's requirement applies too: {docker}"
        );
        assert!(docker["docker.io/myorgx"].is_null());
    }

    #[test]
    fn docker_hub_is_written_docker_io() {
        let text = "[storage]\npath = \"/tmp/x\"\n[[upstream]]\nname = \"hub\"\n\
                    url = \"https://registry-1.docker.io\"\naliases = [\"index.docker.io\"]\n";
        let c = Config::from_toml_str(text, "t.toml", Path::new("/")).unwrap();
        assert_eq!(registry_host(&c.upstreams[0]), "docker.io");
    }

    #[test]
    fn trusted_roots_give_pem_files() {
        let der = b"\x30\x03\x02\x01\x01";
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let root = json!({
            "certificateAuthorities": [{"certChain": {"certificates": [{"rawBytes": b64}]}}],
            "tlogs": [{"publicKey": {"rawBytes": b64}}],
        });
        let (ca, rekor) = trusted_root_material(root.to_string().as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(ca).unwrap(),
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(rekor.len(), 1);
        assert!(trusted_root_material(b"{}").is_err());
    }

    #[test]
    fn hosts_toml_needs_the_registry_host_as_a_name() {
        let f = generate(&config(""), &options()).unwrap();
        assert!(f
            .files
            .iter()
            .any(|f| f.path == Path::new("containerd/docker.io/hosts.toml")));
        assert!(f
            .notes
            .iter()
            .any(|n| n.contains("add it to the aliases of [[upstream]] \"up\"")));
        let text = "[storage]\npath = \"/tmp/x\"\n[[upstream]]\nname = \"up\"\n\
                    url = \"http://127.0.0.1:5001\"\naliases = [\"127.0.0.1:5001\"]\n";
        let c = Config::from_toml_str(text, "t.toml", Path::new("/")).unwrap();
        let f = generate(&c, &options()).unwrap();
        let hosts = file(&f, "containerd/127.0.0.1:5001/hosts.toml");
        assert!(
            hosts.contains("[host.\"http://proxy.example:5000/v2/up\"]"),
            "{hosts}"
        );
        assert!(
            hosts.contains("server = \"http://127.0.0.1:5001\""),
            "{hosts}"
        );
        let location = Options {
            form: Form::Location,
            ..options()
        };
        let f = generate(&c, &location).unwrap();
        let hosts: toml::Table = file(&f, "containerd/127.0.0.1:5001/hosts.toml")
            .parse()
            .unwrap();
        assert_eq!(
            hosts["server"].as_str(),
            Some("http://proxy.example:5000"),
            "after the proxy, the proxy again"
        );
        assert!(
            hosts["host"]
                .get("http://proxy.example:5000/v2/up")
                .is_some(),
            "{hosts}"
        );
    }

    #[test]
    fn daemon_json_follows_default_upstream() {
        let c = config("");
        let mut c2 = c.clone();
        c2.server.default_upstream = Some("docker.io".into());
        assert!(generate(&c, &options())
            .unwrap()
            .files
            .iter()
            .all(|f| f.path != Path::new("daemon.json")));
        let f = generate(&c2, &options()).unwrap();
        let d: Value = serde_json::from_str(file(&f, "daemon.json")).unwrap();
        assert_eq!(d["registry-mirrors"][0], "http://proxy.example:5000");
        assert_eq!(d["insecure-registries"][0], "proxy.example:5000");
    }
}
