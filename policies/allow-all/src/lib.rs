//! The simplest Portcullis policy: admit every manifest.

use portcullis_policy::{Decision, Policy, Request};

struct AllowAll;

impl Policy for AllowAll {
    const NAME: &'static str = "allow-all";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Settings = serde::de::IgnoredAny;

    fn evaluate(_: &Request, _: &Self::Settings) -> Decision {
        Decision::Admit
    }
}

portcullis_policy::export!(AllowAll);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing;

    #[test]
    fn admits_anything_with_any_settings() {
        assert_eq!(portcullis_policy::metadata::<AllowAll>().name, "allow-all");
        assert!(portcullis_policy::settings::<AllowAll>(r#"{"anything": 1}"#).is_ok());
        assert!(matches!(portcullis_policy::evaluate::<AllowAll>(&testing::image("latest"), "{}"), Decision::Admit));
    }
}
