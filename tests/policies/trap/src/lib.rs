//! Traps on every evaluation.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });


struct P;

fn meta(name: &str) -> PolicyMetadata {
    PolicyMetadata { name: name.into(), version: "0".into(), capabilities: vec![] }
}

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        meta("trap")
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(_: Request, _: String) -> Decision {
        std::process::abort()
    }
}
export!(P);
