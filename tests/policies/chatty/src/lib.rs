//! Logs a long line through the host, again and again, until its time is up; then (if it ever
//! gets there) rejects with a very long reason.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });

use portcullis::policy::host::{log, Level};

struct P;

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "chatty".into(), version: "0".into(), capabilities: vec![] }
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(request: Request, settings: String) -> Decision {
        let line = "x".repeat(4096);
        if settings.contains("reason") {
            return Decision::Reject(format!("{} {}", request.digest, "y".repeat(1 << 20)));
        }
        loop {
            log(Level::Info, &line);
        }
    }
}
export!(P);
