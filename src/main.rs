//! The `portcullis` command: serve the proxy, or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config::Config;

/// A caching pull-through OCI registry proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file (default: ./proxy.toml, else the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and exit (non-zero with a message on error).
    Check {
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
        None if std::path::Path::new("proxy.toml").exists() => Config::load(std::path::Path::new("proxy.toml"))?,
        None => Config::embedded()?,
    };
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Check { config } => load(config).and_then(check),
        Command::Serve { config } => load(config).and_then(serve),
        Command::Htpasswd { user, cost } => htpasswd(&user, cost),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `user:<bcrypt hash>` for the password on standard input.
fn htpasswd(user: &str, cost: u32) -> anyhow::Result<()> {
    anyhow::ensure!(!user.is_empty() && !user.contains(':'), "the user name must be non-empty and hold no ':'");
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    println!("{user}:{}", bcrypt::hash(password, cost)?);
    Ok(())
}

/// Validates what loading cannot: every upstream client can be built (CA files parse).
fn check(config: Config) -> anyhow::Result<()> {
    for (i, u) in config.upstreams.iter().enumerate() {
        portcullis::upstream::Upstream::new(u).with_context(|| format!("upstream[{i}] ({})", u.name))?;
    }
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        portcullis::tls::acceptor(cert, key).context("server.tls_cert/tls_key")?;
    }
    println!("configuration OK: {} upstream(s), storage at {}", config.upstreams.len(), config.storage.path.display());
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
        eprintln!("portcullis listening on {addr}");
        portcullis::server::run(listener, api, tls, config.server.shutdown_grace.0, shutdown_signal()).await;
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
