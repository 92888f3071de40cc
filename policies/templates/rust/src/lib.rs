//! {{name}}: rejects the tags named in its settings, admits everything else.

use portcullis_policy::{Decision, Policy, Request};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "latest")]
    tags: Vec<String>,
}

fn latest() -> Vec<String> {
    vec!["latest".into()]
}

struct Starter;

impl Policy for Starter {
    const NAME: &'static str = "{{name}}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Settings = Settings;

    fn evaluate(request: &Request, settings: &Settings) -> Decision {
        match settings.tags.contains(&request.reference) {
            true => Decision::Reject(format!("the tag {:?} may not be used", request.reference)),
            false => Decision::Admit,
        }
    }
}

portcullis_policy::export!(Starter);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{evaluate, settings, testing::image};

    #[test]
    fn the_named_tags_are_rejected() {
        assert!(matches!(evaluate::<Starter>(&image("latest"), "{}"), Decision::Reject(_)));
        assert!(matches!(evaluate::<Starter>(&image("main"), r#"{"tags":["main"]}"#), Decision::Reject(_)));
        assert!(matches!(evaluate::<Starter>(&image("1.2.3"), "{}"), Decision::Admit));
    }

    #[test]
    fn unknown_settings_keep_the_module_from_loading() {
        assert!(settings::<Starter>(r#"{"tag":"x"}"#).is_err());
    }
}
