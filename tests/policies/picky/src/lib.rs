//! Accepts only the settings {"ok":true}; admits everything.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });


struct P;

fn meta(name: &str) -> PolicyMetadata {
    PolicyMetadata { name: name.into(), version: "0".into(), capabilities: vec![] }
}

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        meta("picky")
    }
    fn validate_settings(settings: String) -> Result<(), String> {
        if settings.replace(' ', "") == r#"{"ok":true}"# {
            Ok(())
        } else {
            Err(format!("picky wants {{\"ok\":true}}, got {settings}"))
        }
    }
    fn evaluate(_: Request, _: String) -> Decision {
        Decision::Admit
    }
}
export!(P);
