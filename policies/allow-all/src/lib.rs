//! The simplest Portcullis policy: admit every manifest.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

struct AllowAll;

impl Guest for AllowAll {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "allow-all".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec![] }
    }

    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_request: Request, _settings: String) -> Decision {
        Decision::Admit
    }
}

export!(AllowAll);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_policy() {
        let m = AllowAll::metadata();
        assert_eq!(m.name, "allow-all");
        assert!(m.capabilities.is_empty());
        assert!(AllowAll::validate_settings("anything".into()).is_ok());
    }
}
