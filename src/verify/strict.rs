//! Signed JSON read the one way every reader reads it. Go's `encoding/json` (cosign,
//! containers/image) matches object keys to fields without regard to case and lets the last one
//! win; serde keeps the exactly named one. A signed payload with `critical` and `Critical` (or
//! two `docker-manifest-digest`s differing in case) names one image to cosign and another to a
//! strict reader, so such documents are refused: no object may have two keys that are equal
//! under Unicode case folding.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses JSON, refusing any object with two keys equal when case is ignored.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| e.to_string())
}

/// A key as Go compares it: each character folded through upper and lower case (so the
/// Kelvin sign is `k` and the long s is `s`, as `strings.EqualFold` has them).
fn folded(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut seen = HashSet::new();
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(folded(&key)) {
                return Err(A::Error::custom(format!(
                    "key {key:?} appears twice in an object (ignoring case): readers disagree on \
                     which one counts"
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_reads_as_serde_json_reads_it() {
        let text = br#"{"a":[1,-2,3.5,"x",null,true],"b":{"c":{}}}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
    }

    #[test]
    fn duplicate_and_case_variant_keys_are_refused_at_any_depth() {
        for text in [
            r#"{"critical":1,"critical":2}"#,
            r#"{"critical":1,"Critical":2}"#,
            r#"{"Critical":1,"critical":2}"#,
            r#"{"critical":{"image":{"docker-manifest-digest":"a","DOCKER-manifest-digest":"b"}}}"#,
            r#"[{"x":1},{"k":1,"\u212a":2}]"#,
            r#"{"s":1,"ſ":2}"#,
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains("appears twice"), "{text}: {e}");
        }
        assert!(
            parse(br#"{"a":1,"b":{"a":2}}"#).is_ok(),
            "the same key in another object"
        );
    }
}
