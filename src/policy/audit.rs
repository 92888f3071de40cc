//! The audit log: one JSON line per policy decision, to standard output or a file.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Outcome, Subject};
use crate::config::PolicyMode;

/// Where decisions are written: lines go through a channel to a writer thread, which writes
/// and flushes each batch and then rests a moment, so a decision never waits for the disk and
/// rarely has to wake the writer.
pub struct Audit {
    messages: std::sync::mpsc::Sender<Message>,
}

/// What the writer thread is asked to do.
enum Message {
    /// Write one line.
    Line(String),
    /// Write from now on to this (the file reopened after a rotation, or another target).
    Switch(Output),
}

/// An opened audit target.
type Output = Box<dyn Write + Send>;

/// How long the writer rests after a batch (the audit log's extra latency at most).
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Opens `stdout` or a file (appending, created if missing).
fn open_target(target: &str) -> anyhow::Result<Output> {
    if target == "stdout" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target)
        .map_err(|e| anyhow::anyhow!("policies.audit: cannot open {target}: {e}"))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

impl Audit {
    /// Opens `stdout` or a file (appending).
    pub fn open(target: &str) -> anyhow::Result<Audit> {
        let mut out = open_target(target)?;
        let (tx, rx) = std::sync::mpsc::channel::<Message>();
        std::thread::Builder::new()
            .name("policy-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let written = std::iter::once(first)
                        .chain(rx.try_iter())
                        .try_for_each(|m| match m {
                            Message::Line(line) => writeln!(out, "{line}"),
                            Message::Switch(next) => std::mem::replace(&mut out, next).flush(),
                        });
                    if let Err(e) = written.and_then(|_| out.flush()) {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                    std::thread::sleep(BATCH_PAUSE);
                }
            })?;
        Ok(Audit { messages: tx })
    }

    /// Opens `target` again (after a log rotation moved the file away) and writes there from
    /// now on; on an error the current target stays.
    pub fn reopen(&self, target: &str) -> anyhow::Result<()> {
        let out = open_target(target)?;
        self.messages
            .send(Message::Switch(out))
            .map_err(|_| anyhow::anyhow!("the audit writer stopped"))
    }

    /// Writes one event that is not a policy's decision (`decision` says what it was, e.g. an
    /// upstream tag overridden by a push), with the reason.
    pub fn record_event(&self, s: &Subject, decision: &str, reason: &str) {
        self.write(s, ("-", "-"), "-", decision, reason, Duration::ZERO, None);
    }

    /// Writes one decision of `policy` (whose module is `module`: its digest, or where it was
    /// pulled from): how long it took, and the CPU time its module used (`None` for a cached
    /// decision).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        s: &Subject,
        policy: &str,
        module: &str,
        mode: PolicyMode,
        outcome: &Outcome,
        took: Duration,
        cpu: Option<Duration>,
    ) {
        let (decision, reason) = match outcome {
            Outcome::Admit => ("admit", ""),
            Outcome::Reject(r) => ("reject", r.as_str()),
        };
        let mode = match mode {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Warn => "warn",
        };
        self.write(s, (policy, module), mode, decision, reason, took, cpu);
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        s: &Subject,
        (policy, module): (&str, &str),
        mode: &str,
        decision: &str,
        reason: &str,
        took: Duration,
        cpu: Option<Duration>,
    ) {
        let id = crate::request_id::current();
        let line = Line {
            request_id: id.as_ref().map(|id| id.as_str()),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            client: &s.client,
            user: s.user.as_deref(),
            operation: if s.push { "push" } else { "pull" },
            namespace: &s.namespace,
            repository: &s.repository,
            reference: &s.reference,
            digest: &s.digest,
            policy,
            module,
            mode,
            decision,
            reason,
            duration_us: took.as_micros() as u64,
            cpu_us: cpu.map(|c| c.as_micros() as u64),
            cache_hit: cpu.is_none() && policy != "-",
        };
        let Ok(line) = serde_json::to_string(&line) else {
            return;
        };
        if self.messages.send(Message::Line(line)).is_err() {
            tracing::error!("the audit writer stopped");
        }
    }
}

/// One audit line, serialised straight from borrowed fields.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: f64,
    /// The id of the request that asked (null when no request did, e.g. `policy test`).
    request_id: Option<&'a str>,
    client: &'a str,
    user: Option<&'a str>,
    operation: &'a str,
    namespace: &'a str,
    repository: &'a str,
    reference: &'a str,
    digest: &'a str,
    policy: &'a str,
    /// The module that decided: `sha256:<digest of the component>`, or
    /// `oci://<namespace>/<repository>@<manifest digest>` for one pulled from a registry.
    module: &'a str,
    mode: &'a str,
    decision: &'a str,
    reason: &'a str,
    duration_us: u64,
    /// The module's CPU time (null for a cached decision).
    cpu_us: Option<u64>,
    cache_hit: bool,
}
