//! Reading request params into a handler's argument type, with errors
//! that name the field at fault.
//!
//! Only the failure path looks at the type's JSON Schema: to name a
//! missing required field (serde reports it at the enclosing object) and
//! to let positional params leave out trailing optional fields.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::RpcError;

/// Deserializes `text` into `T`, or explains why not.
pub(crate) fn decode<T: DeserializeOwned + schemars::JsonSchema>(
    text: &str,
) -> Result<T, RpcError> {
    // Most params decode: they go straight to serde. Tracking the path of
    // every value costs about half again as much (callgrind, a 100-byte
    // object into `serde_json::Value`: 1,985 instructions against 1,312),
    // so the path is found only for params that fail, by decoding again.
    if let Ok(v) = T::deserialize(&mut serde_json::Deserializer::from_str(text)) {
        return Ok(v);
    }
    let first = match deserialize::<T>(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let schema = schemars::schema_for!(T);
    let schema = schema.as_value();
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Err(first.into_rpc());
    };
    // `["hi"]` for `{text, times: Option<_>}`: the fields left out at the
    // end are absent (null), as JSON-RPC callers expect of optional ones.
    if let Value::Array(items) = &value {
        let fields = resolve(schema, schema)
            .get("properties")
            .and_then(Value::as_object)
            .map_or(0, serde_json::Map::len);
        if items.len() < fields {
            let mut padded = items.clone();
            padded.resize(fields, Value::Null);
            let padded = Value::Array(padded).to_string();
            return deserialize::<T>(&padded).map_err(Failure::into_rpc);
        }
    }
    if let Some(missing) = missing_required(schema, schema, &value, "")
        && missing.parent == first.path
    {
        return Err(RpcError::invalid_params(&missing.path, first.detail));
    }
    Err(first.into_rpc())
}

struct Failure {
    /// Where serde stopped ("" for the params themselves).
    path: String,
    detail: String,
}

impl Failure {
    fn into_rpc(self) -> RpcError {
        RpcError::invalid_params(&self.path, self.detail)
    }
}

fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, Failure> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Failure {
            path: if path == "." { String::new() } else { path },
            detail: e.inner().to_string(),
        }
    })
}

/// A required field absent from an object.
#[derive(Debug, PartialEq)]
struct Missing {
    /// The object's path.
    parent: String,
    /// The field's path.
    path: String,
}

/// Follows a local `$ref` (`#/$defs/Name`) to its schema.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..32 {
        let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
        else {
            break;
        };
        s = target;
    }
    s
}

/// The first required field missing from `value` or anything inside it
/// that `schema` describes.
fn missing_required(root: &Value, schema: &Value, value: &Value, path: &str) -> Option<Missing> {
    let schema = resolve(root, schema);
    let join = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    for alt in ["anyOf", "oneOf", "allOf"] {
        for sub in schema
            .get(alt)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(m) = missing_required(root, sub, value, path) {
                return Some(m);
            }
        }
    }
    match value {
        Value::Object(map) => {
            let required = schema.get("required").and_then(Value::as_array);
            for field in required.into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(field) {
                    return Some(Missing {
                        parent: path.to_owned(),
                        path: join(field),
                    });
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object)?;
            properties
                .iter()
                .find_map(|(name, sub)| missing_required(root, sub, map.get(name)?, &join(name)))
        }
        Value::Array(items) => {
            let sub = schema.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| missing_required(root, sub, item, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Inner {
        count: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Outer {
        text: String,
        times: Option<u32>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        items: Vec<Inner>,
    }

    fn path_of(e: &RpcError) -> String {
        e.data.as_ref().unwrap()["path"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = decode::<Outer>(r#"{"times": 2}"#).unwrap_err();
        assert_eq!(path_of(&e), "text", "{e}");
        let e = decode::<Outer>(r#"{"text": "a", "inner": {}}"#).unwrap_err();
        assert_eq!(path_of(&e), "inner.count", "{e}");
        let e = decode::<Outer>(r#"{"text": "a", "items": [{"count": 1}, {}]}"#).unwrap_err();
        assert_eq!(path_of(&e), "items[1].count", "{e}");
    }

    #[test]
    fn a_wrong_type_keeps_its_own_path() {
        let e = decode::<Outer>(r#"{"text": "a", "times": "x"}"#).unwrap_err();
        assert_eq!(path_of(&e), "times", "{e}");
    }

    #[test]
    fn trailing_optional_positional_params_can_be_left_out() {
        // Fields of a struct taken by position, in declaration order.
        #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
        struct Shout {
            text: String,
            times: Option<u32>,
        }
        let s = decode::<Shout>(r#"["hi"]"#).unwrap();
        assert_eq!(
            s,
            Shout {
                text: "hi".into(),
                times: None
            }
        );
        assert_eq!(decode::<Shout>(r#"["hi", 2]"#).unwrap().times, Some(2));
        assert!(
            decode::<Shout>("[]").is_err(),
            "a required field is still required"
        );
    }
}
