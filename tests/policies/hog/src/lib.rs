//! Allocates without bound: stopped at the host's memory cap.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });


struct P;

fn meta(name: &str) -> PolicyMetadata {
    PolicyMetadata { name: name.into(), version: "0".into(), capabilities: vec![] }
}

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        meta("hog")
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(_: Request, _: String) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![7u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}
export!(P);
