//! Never returns: stopped by the host's deadline.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });


struct P;

fn meta(name: &str) -> PolicyMetadata {
    PolicyMetadata { name: name.into(), version: "0".into(), capabilities: vec![] }
}

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        meta("spin")
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(request: Request, _: String) -> Decision {
        let mut n: u64 = request.size;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
export!(P);
