//! The audit log: one JSON line per policy decision, to standard output or a file.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Outcome, Subject};
use crate::config::PolicyMode;

/// Where decisions are written.
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

impl Audit {
    /// Opens `stdout` or a file (appending).
    pub fn open(target: &str) -> anyhow::Result<Audit> {
        if target == "stdout" {
            return Ok(Audit { file: None });
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target)
            .map_err(|e| anyhow::anyhow!("policies.audit: cannot open {target}: {e}"))?;
        Ok(Audit { file: Some(Mutex::new(file)) })
    }

    /// Writes one decision.
    pub fn record(&self, s: &Subject, policy: &str, mode: PolicyMode, outcome: &Outcome, took: Duration, cached: bool) {
        let (decision, reason) = match outcome {
            Outcome::Admit => ("admit", String::new()),
            Outcome::Reject(r) => ("reject", r.clone()),
        };
        let line = serde_json::json!({
            "time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "client": s.client,
            "user": s.user,
            "operation": if s.push { "push" } else { "pull" },
            "namespace": s.namespace,
            "repository": s.repository,
            "reference": s.reference,
            "digest": s.digest,
            "policy": policy,
            "mode": match mode { PolicyMode::Enforce => "enforce", PolicyMode::Warn => "warn" },
            "decision": decision,
            "reason": reason,
            "duration_us": took.as_micros() as u64,
            "cache_hit": cached,
        })
        .to_string();
        match &self.file {
            Some(f) => {
                let mut f = f.lock().expect("audit lock");
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
            None => println!("{line}"),
        }
    }
}
