//! A module built for `portcullis:policy@0.1.0`: rejects the tag `old` (after logging through
//! the host), asks the host to verify everything else with the `[trust.<name>]` named by its
//! settings `{"trust": "..."}`, and admits attachments it is asked about (its `referrers` host
//! call must answer).
wit_bindgen::generate!({ world: "policy", path: "../../../wit/0.1.0" });

use portcullis::policy::host;
use portcullis::policy::types::Requirements;

struct P;

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "legacy".into(), version: "0.1.0".into(), capabilities: vec!["verify".into()] }
    }
    fn validate_settings(settings: String) -> Result<(), String> {
        match settings.contains("\"trust\"") {
            true => Ok(()),
            false => Err("name a \"trust\"".into()),
        }
    }
    fn evaluate(request: Request, settings: String) -> Decision {
        if request.reference == "old" {
            host::log(host::Level::Info, "legacy module: refusing the tag old");
            return Decision::Reject("the 0.1.0 module refuses the tag old".into());
        }
        if request.attaches_to.is_some() {
            return match host::referrers(None) {
                Ok(_) => Decision::Admit,
                Err(e) => Decision::Reject(e),
            };
        }
        let trust = settings.split('"').nth(3).unwrap_or("").to_string();
        Decision::Verify(Requirements { trust: vec![trust], keys: vec![], identities: vec![], attestations: vec![], threshold: 0 })
    }
}
export!(P);
