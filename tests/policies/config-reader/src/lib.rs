//! Reads the image's config through the host on every evaluation: admits an image whose config
//! it got, rejects with the host's error otherwise.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });

use portcullis::policy::host;

struct P;

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "config-reader".into(), version: "0".into(), capabilities: vec![] }
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(_: Request, _: String) -> Decision {
        match host::image_config() {
            Ok(config) if config.contains("\"architecture\"") => Decision::Admit,
            Ok(config) => Decision::Reject(format!("config without an architecture: {config}")),
            Err(e) => Decision::Reject(format!("no config: {e}")),
        }
    }
}
export!(P);
