//! Signed JSON read the one way every reader reads it. Go's `encoding/json` (cosign,
//! containers/image) matches an object's keys to a struct's fields without regard to case and
//! lets the last one win; serde keeps the exactly named one. A signed payload with `critical`
//! and `Critical` (or two `docker-manifest-digest`s differing in case) names one image to cosign
//! and another to an exact reader, so such documents are refused: no object that Go reads into a
//! struct may have two keys equal under Unicode case folding. Objects Go reads into maps (the
//! payload's `optional` annotations, a predicate's parameters) keep their keys apart, as Go does.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The paths of the objects a cosign simple-signing payload's reader takes as structs.
pub const PAYLOAD: &[&str] = &["", "critical", "critical.identity", "critical.image"];
/// The same for a DSSE envelope.
pub const ENVELOPE: &[&str] = &["", "signatures[]"];
/// The same for an in-toto statement (its subjects' digests are maps).
pub const STATEMENT: &[&str] = &["", "subject[]"];

/// Parses JSON, refusing any object at one of `structs` (paths like `critical.image`, `[]` for
/// an array's items, `""` for the top) with two keys equal when case is ignored.
pub fn parse(bytes: &[u8], structs: &[&str]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict {
        path: String::new(),
        structs,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A key as Go compares it: each character folded through upper and lower case (so the
/// Kelvin sign is `k` and the long s is `s`, as `strings.EqualFold` has them).
fn folded(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads one value at `path`.
struct Strict<'a> {
    path: String,
    structs: &'a [&'a str],
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
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
        let path = format!("{}[]", self.path);
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            path: path.clone(),
            structs: self.structs,
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let checked = self.structs.contains(&self.path.as_str());
        let mut seen = HashSet::new();
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if checked && !seen.insert(folded(&key)) {
                return Err(A::Error::custom(format!(
                    "key {key:?} appears twice in an object (ignoring case): readers disagree on \
                     which one counts"
                )));
            }
            let path = match self.path.as_str() {
                "" => key.clone(),
                p => format!("{p}.{key}"),
            };
            let value = map.next_value_seed(Strict {
                path,
                structs: self.structs,
            })?;
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
            parse(text, PAYLOAD).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert!(parse(b"{} {}", PAYLOAD).is_err(), "trailing data");
    }

    #[test]
    fn case_variant_keys_of_structs_are_refused() {
        for (text, structs) in [
            (r#"{"critical":1,"critical":2}"#, PAYLOAD),
            (r#"{"critical":1,"Critical":2}"#, PAYLOAD),
            (r#"{"Critical":1,"critical":2}"#, PAYLOAD),
            (
                r#"{"critical":{"image":{"docker-manifest-digest":"a","DOCKER-manifest-digest":"b"}}}"#,
                PAYLOAD,
            ),
            (r#"{"critical":{"\u0054ype":1,"type":2}}"#, PAYLOAD),
            (
                r#"{"signatures":[{"sig":"a","\u212aeyid":"k","keyid":"l"}]}"#,
                ENVELOPE,
            ),
            (r#"{"subject":[{"name":"a","NAME":"b"}]}"#, STATEMENT),
            (r#"{"predicateType":"a","predicatetype":"b"}"#, STATEMENT),
        ] {
            let e = parse(text.as_bytes(), structs).unwrap_err();
            assert!(e.contains("appears twice"), "{text}: {e}");
        }
    }

    #[test]
    fn maps_keep_keys_apart_as_go_does() {
        let annotations = br#"{"critical":{},"optional":{"env":"prod","Env":"dev"}}"#;
        assert!(parse(annotations, PAYLOAD).is_ok());
        let digests = br#"{"subject":[{"name":"a","digest":{"sha256":"x","SHA256":"y"}}]}"#;
        assert!(parse(digests, STATEMENT).is_ok());
        let predicate = br#"{"predicate":{"env":{"A":1,"a":2}}}"#;
        assert!(parse(predicate, STATEMENT).is_ok());
    }
}
