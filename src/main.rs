//! The `portcullis` command: serve the proxy, or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config::{Config, LogFormat};
use portcullis::request_id::WithRequestId;

/// A caching pull-through OCI registry proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run a module on one request without a proxy; print its decision and host calls.
    Test {
        /// The policy component (`.wasm`).
        module: PathBuf,
        /// Settings as a JSON file.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// The request as a JSON file: namespace, repository, reference, manifest, attachments.
        #[arg(long)]
        request: PathBuf,
    },
    /// Write a new policy project (Rust, JavaScript or Python) that builds and passes its test.
    New {
        /// The policy's name (lower-case letters, digits and '-').
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: portcullis::policy::Lang,
        /// Where to write it (default: ./NAME; must not exist).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Publish a module to a registry as a Wasm OCI artifact; prints its manifest digest.
    Push {
        /// The policy component (`.wasm`).
        module: PathBuf,
        /// Where: `<host>/<repository>:<tag>` (for this proxy: `<host>/<namespace>/<repo>:<tag>`).
        target: String,
        /// The user to sign in as, if the registry asks.
        #[arg(long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Plain HTTP instead of HTTPS.
        #[arg(long)]
        insecure: bool,
    },
    /// Measure a module's decision time on one request: cold (fresh instance) and cached.
    Bench {
        /// The policy component (`.wasm`).
        module: PathBuf,
        /// Settings as a JSON file.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// The request as a JSON file, as for `policy test`.
        #[arg(long)]
        request: PathBuf,
        /// Decisions to time, each way.
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format (default: `[log] format` of the configuration, else text).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a configuration and exit (non-zero with a message on error).
    Check {
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Verify an image's cosign signatures (and attestations) as the proxy sees it.
    Verify {
        /// The image: `[proxy-host/]<namespace>/<repository>(:tag|@digest)`.
        image: String,
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A PEM public key file (repeatable).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// A `[trust.<name>]` entry of the configuration (repeatable).
        #[arg(long)]
        trust: Vec<String>,
        /// A predicate type (or cosign's short name, e.g. slsaprovenance) that must be attested.
        #[arg(long = "attestation")]
        attestations: Vec<String>,
        /// How many distinct signers must have signed: keys and keyless identities (by subject)
        /// count alike.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// How a signature's claimed reference must match the image (containers-policy.json's
        /// signedIdentity types that take no parameter).
        #[arg(long, default_value = "matchRepository",
              value_parser = ["matchRepository", "matchRepoDigestOrExact"])]
        identity: String,
        /// `text` (a line per signature) or `json` (the verdict as one JSON object).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        #[command(flatten)]
        keyless: KeylessArgs,
    },
    /// Policy module tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Write the client files for this proxy: registries.conf, registries.d, policy.json,
    /// containerd hosts.toml, Docker daemon.json (printed, or written under --out).
    ClientConfig {
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The proxy as clients reach it, HOST:PORT (default: `[server] listen`).
        #[arg(long)]
        proxy: Option<String>,
        /// The proxy serves HTTPS (the default when `[server] tls_cert` is set).
        #[arg(long)]
        tls: bool,
        /// A CA certificate (PEM) clients must trust for the proxy's HTTPS; implies --tls.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// `mirror` (clients fall back to the registry itself) or `location` (no fallback).
        #[arg(long, value_enum, default_value_t)]
        form: portcullis::clients::Form,
        /// Where policy.json finds its keys on the clients (default: DIR/keys with --out,
        /// else /etc/containers/keys).
        #[arg(long)]
        keys_dir: Option<PathBuf>,
        /// Write the files under this directory instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Exit 0 when the proxy answers its health endpoint with 200 (a container health check).
    Health {
        /// The endpoint to ask (default: /healthz on the configuration's `[server] listen`).
        url: Option<String>,
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print an htpasswd line (bcrypt) for a user; the password is read from standard input.
    Htpasswd {
        /// The user name.
        user: String,
        /// bcrypt cost (4 to 31).
        #[arg(long, default_value_t = 10)]
        cost: u32,
    },
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let config = match path {
        Some(p) => Config::load(&p)?,
        None if std::path::Path::new("proxy.toml").exists() => {
            Config::load(std::path::Path::new("proxy.toml"))?
        }
        None => Config::embedded()?,
    };
    Ok(config)
}

/// Tells glibc's allocator to keep freed memory for reuse: upstream bodies arrive in buffers of
/// a few hundred KiB, and handing each back to the kernel only to fault fresh zeroed pages in
/// for the next one cost ~7% of the CPU of a cold pull. Peak memory stays what it was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Logs to stderr at `RUST_LOG`'s levels (default info), as text or one JSON object a line.
fn init_logging(format: LogFormat) {
    portcullis::http::body::log_every_field(format == LogFormat::Json);
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(portcullis::logging::Stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .map_event_format(|f| WithRequestId::new(f, false))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .map_event_format(|f| WithRequestId::new(f, true))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(LogFormat::Text);
    }
    let result = match cli.command {
        Command::Check { config } => load(config).and_then(check),
        Command::Serve { config, log_format } => {
            keep_freed_memory();
            let path = config
                .clone()
                .or_else(|| Some(PathBuf::from("proxy.toml")).filter(|p| p.exists()));
            load(config).and_then(|mut c| {
                c.log.format = log_format.unwrap_or(c.log.format);
                init_logging(c.log.format);
                serve(c, path)
            })
        }
        Command::Htpasswd { user, cost } => htpasswd(&user, cost),
        Command::Health { url, config } => match url {
            Some(url) => health(&url, false),
            None => load(config).and_then(|c| health(&own_health_url(&c), true)),
        },
        Command::ClientConfig {
            config,
            proxy,
            tls,
            ca,
            form,
            keys_dir,
            out,
        } => load(config).and_then(|c| {
            client_config(
                &c,
                ClientConfigArgs {
                    proxy,
                    tls,
                    ca,
                    form,
                    keys_dir,
                    out,
                },
            )
        }),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    module,
                    settings,
                    request,
                },
        } => policy_test(&module, settings.as_deref(), &request),
        Command::Policy {
            command: PolicyCommand::New { name, lang, dir },
        } => policy_new(&name, lang, dir),
        Command::Policy {
            command:
                PolicyCommand::Push {
                    module,
                    target,
                    username,
                    password_stdin,
                    insecure,
                },
        } => policy_push(&module, &target, username, password_stdin, insecure),
        Command::Policy {
            command:
                PolicyCommand::Bench {
                    module,
                    settings,
                    request,
                    iterations,
                },
        } => policy_bench(&module, settings.as_deref(), &request, iterations),
        Command::Verify {
            image,
            config,
            keys,
            trust,
            attestations,
            threshold,
            identity,
            output,
            keyless,
        } => {
            let args = VerifyArgs {
                image,
                keyless,
                keys,
                trust,
                attestations,
                threshold,
                identity,
                json: output == "json",
            };
            match load(config).and_then(|c| verify(c, args)) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The proxy's own `/healthz`, on loopback when it listens on every address.
fn own_health_url(config: &Config) -> String {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}/healthz")
}

/// Asks `url` once, with a 3 s timeout; an error unless it answers 2xx. `own` skips the check
/// of the certificate: the proxy's own listener is asked whether it answers, not who it is.
fn health(url: &str, own: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .tls_danger_accept_invalid_certs(own)
            .build()?;
        let status = client.get(url).send().await?.status();
        anyhow::ensure!(status.is_success(), "{url}: {status}");
        Ok(())
    })
}

struct ClientConfigArgs {
    proxy: Option<String>,
    tls: bool,
    ca: Option<PathBuf>,
    form: portcullis::clients::Form,
    keys_dir: Option<PathBuf>,
    out: Option<PathBuf>,
}

/// Generates the client files; prints them (each under a `==> path <==` line) or writes them.
fn client_config(config: &Config, args: ClientConfigArgs) -> anyhow::Result<()> {
    let out = match &args.out {
        Some(dir) => Some(std::path::absolute(dir)?),
        None => None,
    };
    let ca = match &args.ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca {}", p.display()))?),
        None => None,
    };
    if args.keys_dir.as_ref().is_some_and(|d| d.is_relative()) {
        anyhow::bail!("--keys-dir must be an absolute path: policy.json names the files by it");
    }
    let options = portcullis::clients::Options {
        proxy: args
            .proxy
            .unwrap_or_else(|| config.server.listen.to_string()),
        tls: args.tls || ca.is_some() || config.server.tls_cert.is_some(),
        ca,
        form: args.form,
        keys_dir: args.keys_dir.unwrap_or_else(|| match &out {
            Some(dir) => dir.join("keys"),
            None => PathBuf::from("/etc/containers/keys"),
        }),
    };
    let files = portcullis::clients::generate(config, &options).map_err(anyhow::Error::msg)?;
    for f in &files.files {
        match &out {
            Some(dir) => {
                let path = dir.join(&f.path);
                std::fs::create_dir_all(path.parent().expect("under the output directory"))?;
                std::fs::write(&path, &f.contents)
                    .with_context(|| format!("{}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => println!(
                "==> {} <==\n{}",
                f.path.display(),
                String::from_utf8_lossy(&f.contents)
            ),
        }
    }
    for note in &files.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// Keyless signer constraints, named as cosign names them.
#[derive(clap::Args, Debug, Default)]
struct KeylessArgs {
    /// The keyless signer's exact certificate subject (email or URI).
    #[arg(long = "certificate-identity")]
    subject: Option<String>,
    /// A regexp the certificate subject must match.
    #[arg(long = "certificate-identity-regexp")]
    subject_regexp: Option<String>,
    /// The exact OIDC issuer of the signer's certificate.
    #[arg(long = "certificate-oidc-issuer")]
    issuer: Option<String>,
    /// A regexp the OIDC issuer must match.
    #[arg(long = "certificate-oidc-issuer-regexp")]
    issuer_regexp: Option<String>,
    /// The GitHub workflow trigger the certificate must name.
    #[arg(long = "certificate-github-workflow-trigger")]
    github_trigger: Option<String>,
    /// The GitHub workflow commit the certificate must name.
    #[arg(long = "certificate-github-workflow-sha")]
    github_sha: Option<String>,
    /// The GitHub workflow name the certificate must name.
    #[arg(long = "certificate-github-workflow-name")]
    github_name: Option<String>,
    /// The GitHub repository the certificate must name.
    #[arg(long = "certificate-github-workflow-repository")]
    github_repository: Option<String>,
    /// The GitHub ref the certificate must name.
    #[arg(long = "certificate-github-workflow-ref")]
    github_ref: Option<String>,
}

impl KeylessArgs {
    /// The keyless identity these flags ask for, if any flag is given.
    fn identity(&self) -> anyhow::Result<Option<portcullis::verify::Identity>> {
        use portcullis::verify::keyless::GithubClaim;
        let github = [
            (GithubClaim::WorkflowTrigger, &self.github_trigger),
            (GithubClaim::WorkflowSha, &self.github_sha),
            (GithubClaim::WorkflowName, &self.github_name),
            (GithubClaim::WorkflowRepository, &self.github_repository),
            (GithubClaim::WorkflowRef, &self.github_ref),
        ];
        let any = self.subject.is_some()
            || self.subject_regexp.is_some()
            || self.issuer.is_some()
            || self.issuer_regexp.is_some();
        if !any && github.iter().all(|(_, v)| v.is_none()) {
            return Ok(None);
        }
        let mut id = portcullis::verify::Identity::new(
            self.issuer.clone(),
            self.issuer_regexp.as_deref(),
            self.subject.clone(),
            self.subject_regexp.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("--certificate-*: {e}"))?;
        id.github = github
            .into_iter()
            .filter_map(|(c, v)| v.clone().map(|v| (c, v)))
            .collect();
        Ok(Some(id))
    }
}

struct VerifyArgs {
    image: String,
    keyless: KeylessArgs,
    keys: Vec<PathBuf>,
    trust: Vec<String>,
    attestations: Vec<String>,
    threshold: usize,
    identity: String,
    json: bool,
}

/// Runs the proxy's verification for one image and prints each signature's verdict.
fn verify(config: Config, args: VerifyArgs) -> anyhow::Result<bool> {
    use portcullis::verify::{
        upstream_identity, Requirement, SignedIdentity, TrustStore, TrustedKey, Verifier,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let services = portcullis::server::services(&config, true).await?;
        let (ns, repo, reference) = parse_image(&config, &args.image)?;
        let mut keys = args.keys.iter().map(|k| TrustedKey::from_file(k)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        let store = TrustStore::from_config(&config).map_err(anyhow::Error::msg)?;
        let (named_keys, mut roots) = store.named(&args.trust).map_err(anyhow::Error::msg)?;
        keys.extend(named_keys);
        let identities: Vec<_> = args.keyless.identity()?.into_iter().collect();
        if !identities.is_empty() && roots.is_empty() {
            roots = store.all_roots();
            anyhow::ensure!(!roots.is_empty(), "keyless verification needs a [trust.<name>] with a trusted_root or ca_certs in the configuration");
        }
        anyhow::ensure!(!keys.is_empty() || !identities.is_empty(), "give at least one --key, --trust or --certificate-identity");
        let identity: SignedIdentity = serde_json::from_value(serde_json::json!({ "type": args.identity }))
            .with_context(|| format!("unknown --identity {}", args.identity))?;
        let requirement = Requirement { keys, identities, roots, threshold: args.threshold, identity, attestations: args.attestations };
        let served = services.cache.manifest(&ns, &repo, &reference).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let requested = upstream_identity(&services.cache, &ns, &repo, &reference).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let verifier = Verifier::new(services.cache, services.attachments, config.cache.attachment_wait.0);
        let verdict = verifier
            .verify(&ns, &repo, &requested, &served.digest, &requirement)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        if args.json {
            let out = serde_json::json!({
                "image": format!("{ns}/{repo}@{}", served.digest),
                "verified": verdict.ok,
                "reason": verdict.reason,
                "signatures": verdict.signatures,
                "attestations": verdict.attestations,
                "statements": verdict.statements,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(verdict.ok);
        }
        println!("{ns}/{repo}@{}", served.digest);
        for v in verdict.signatures.iter().chain(verdict.attestations.iter()) {
            let mark = if v.verified { "ok  " } else { "FAIL" };
            println!("  {mark} {} {}", v.layer, v.reason);
        }
        println!("{}: {}", if verdict.ok { "verified" } else { "NOT verified" }, verdict.reason);
        Ok(verdict.ok)
    })
}

/// Splits `[proxy-host/]<namespace>/<repository>(:tag|@digest)`.
fn parse_image(
    config: &Config,
    image: &str,
) -> anyhow::Result<(
    String,
    portcullis::names::RepoName,
    portcullis::names::Reference,
)> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_string()),
        None => {
            let slash = image.rfind('/').unwrap_or(0);
            match image[slash..].find(':') {
                Some(i) => (&image[..slash + i], image[slash + i + 1..].to_string()),
                None => (image, "latest".to_string()),
            }
        }
    };
    let mut parts: Vec<&str> = name.split('/').collect();
    let known = |n: &str| config.upstream(n).is_some() || config.is_local(n);
    if parts.len() > 2 && !known(parts[0]) {
        parts.remove(0);
    }
    anyhow::ensure!(parts.len() >= 2 && known(parts[0]), "{image}: expected [proxy-host/]<namespace>/<repository>[:tag|@digest] with a configured namespace");
    let repo = parts[1..]
        .join("/")
        .parse()
        .map_err(|e: portcullis::error::RegistryError| anyhow::anyhow!("{image}: {}", e.message))?;
    let reference = reference
        .parse()
        .map_err(|e: portcullis::error::RegistryError| anyhow::anyhow!("{image}: {}", e.message))?;
    Ok((parts[0].to_string(), repo, reference))
}

/// The settings (JSON text, `{}` without a file) and request of `policy test` and `bench`.
fn test_input(
    settings: Option<&std::path::Path>,
    request: &std::path::Path,
) -> anyhow::Result<(String, portcullis::policy::TestRequest)> {
    let settings = match settings {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => "{}".to_string(),
    };
    let text = std::fs::read_to_string(request)
        .with_context(|| format!("cannot read {}", request.display()))?;
    let request = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a test request", request.display()))?;
    Ok((settings, request))
}

/// `portcullis policy new`.
fn policy_new(
    name: &str,
    lang: portcullis::policy::Lang,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = portcullis::policy::new_project(&dir, name, lang)?;
    println!("wrote {} files into {}", files.len(), dir.display());
    Ok(())
}

/// `portcullis policy push`.
fn policy_push(
    module: &std::path::Path,
    target: &str,
    username: Option<String>,
    password_stdin: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    anyhow::ensure!(
        bytes.starts_with(b"\0asm"),
        "{} is not a WebAssembly module",
        module.display()
    );
    let mut target = portcullis::policy::publish::Target::parse(target)?;
    target.insecure = insecure;
    if let Some(user) = username {
        let mut password = String::new();
        if password_stdin {
            std::io::stdin().read_line(&mut password)?;
        }
        target.credentials = Some((user, password.trim_end_matches(['\r', '\n']).to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let digest = runtime.block_on(portcullis::policy::publish::push(&bytes, &target))?;
    println!("{digest}");
    Ok(())
}

/// `portcullis policy bench`.
fn policy_bench(
    module: &std::path::Path,
    settings: Option<&std::path::Path>,
    request: &std::path::Path,
    iterations: u32,
) -> anyhow::Result<()> {
    let (settings, request) = test_input(settings, request)?;
    let f = portcullis::policy::bench(module, &settings, &request, iterations)?;
    println!("{}", f.decision);
    println!(
        "cold (fresh instance + evaluate): {:.1} us",
        f.cold.as_secs_f64() * 1e6
    );
    println!(
        "cached (the proxy's decision cache, audit line included): {:.2} us",
        f.cached.as_secs_f64() * 1e6
    );
    Ok(())
}

/// `portcullis policy test`.
fn policy_test(
    module: &std::path::Path,
    settings: Option<&std::path::Path>,
    request: &std::path::Path,
) -> anyhow::Result<()> {
    let (settings, request) = test_input(settings, request)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        tokio::task::spawn_blocking({
            let module = module.to_path_buf();
            move || portcullis::policy::test_module(&module, &settings, &request)
        })
        .await
    })??;
    println!("{out}");
    Ok(())
}

/// Prints `user:<bcrypt hash>` for the password on standard input.
fn htpasswd(user: &str, cost: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains(':'),
        "the user name must be non-empty and hold no ':'"
    );
    let mut password = String::new();
    let _quiet = Quiet::stdin();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    println!("{user}:{}", bcrypt::hash(password, cost)?);
    Ok(())
}

/// Turns off a terminal's echo on standard input while it lives (nothing when stdin is not a
/// terminal), so a typed password is not shown.
struct Quiet(Option<libc::termios>);

impl Quiet {
    fn stdin() -> Quiet {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Quiet(None);
        }
        eprint!("password: ");
        // SAFETY: tcgetattr/tcsetattr on standard input with a termios of the right layout
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Quiet(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Quiet(None);
            }
            Quiet(Some(saved))
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the attributes read above
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

/// Validates what loading cannot: every upstream client can be built (CA files parse).
fn check(config: Config) -> anyhow::Result<()> {
    for (i, u) in config.upstreams.iter().enumerate() {
        portcullis::upstream::Upstream::new(u)
            .with_context(|| format!("upstream[{i}] ({})", u.name))?;
    }
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        portcullis::tls::acceptor(cert, key).context("server.tls_cert/tls_key")?;
    }
    portcullis::verify::TrustStore::from_config(&config).map_err(anyhow::Error::msg)?;
    portcullis::policy::check(&config)?;
    println!(
        "configuration OK: {} upstream(s), storage at {}",
        config.upstreams.len(),
        config.storage.path.display()
    );
    Ok(())
}

/// Reloads the policies on SIGHUP from the configuration file and reopens the audit log (for
/// log rotation); a bad file keeps the old ones.
fn spawn_reloader(api: Arc<portcullis::http::Api>, path: Option<PathBuf>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let Some(path) = path.clone() else {
                tracing::warn!("SIGHUP: running on built-in defaults, nothing to reload");
                continue;
            };
            tell_systemd(&[sd_notify::NotifyState::Reloading]);
            let api = Arc::clone(&api);
            let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let config = Config::load(&path)?;
                api.policies().reload(&config)
            })
            .await;
            match result {
                Ok(Ok(())) => tracing::info!("SIGHUP: policies reloaded, audit log reopened"),
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload failed; keeping the previous policies")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
            }
            tell_systemd(&[sd_notify::NotifyState::Ready]);
        }
    });
}

/// Tells systemd (a `Type=notify` service) how the proxy is; nothing without `NOTIFY_SOCKET`.
fn tell_systemd(state: &[sd_notify::NotifyState]) {
    let mut states = state.to_vec();
    if state
        .iter()
        .any(|s| matches!(s, sd_notify::NotifyState::Reloading))
    {
        // systemd wants to know when a reload began
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(portcullis::logging::worker_parks)
        .on_thread_stop(portcullis::logging::thread_stops)
        .build()?;
    runtime.block_on(async move {
        let api = portcullis::server::build(&config).await?;
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(portcullis::tls::acceptor(cert, key)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, storage = %config.storage.path.display(), "portcullis listening");
        // the banner, for people (JSON logs carry the address in the event above)
        let text = config.log.format == portcullis::config::LogFormat::Text;
        if text {
            eprintln!("portcullis listening on {addr}");
        }
        if let Some(listen) = config.metrics.listen {
            let metrics = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} for metrics"))?;
            let addr = metrics.local_addr()?;
            tracing::info!(%addr, "metrics listening");
            if text {
                eprintln!("portcullis metrics on {addr}");
            }
            tokio::spawn(portcullis::server::serve_metrics(
                metrics,
                Arc::clone(api.metrics()),
            ));
        }
        spawn_reloader(Arc::clone(&api), config_path);
        // ready: listening, and the store takes writes
        api.store_ready()
            .await
            .context("the store cannot be written")?;
        tell_systemd(&[sd_notify::NotifyState::Ready]);
        let limits = portcullis::server::Limits::of(&config.server);
        tracing::info!(
            max_connections = limits.max_connections,
            "connection limits"
        );
        let stopping = async {
            shutdown_signal().await;
            tell_systemd(&[sd_notify::NotifyState::Stopping]);
        };
        portcullis::server::run(listener, api, tls, limits, stopping).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
