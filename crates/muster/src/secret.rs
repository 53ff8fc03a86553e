//! [`Secret`]: a config value that never shows in logs or discovery.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Wraps a secret config value (password, token). It deserializes like
/// `T`, but `Debug`, `Display` and `Serialize` print `"***"`, so the value
/// never reaches a log line or the `$info` discovery reply.
///
/// ```
/// use muster::Secret;
/// let s: Secret<String> = serde_json::from_str("\"hunter2\"").unwrap();
/// assert_eq!(s.expose(), "hunter2");
/// assert_eq!(format!("{s:?}"), "***");
/// assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

impl<T: JsonSchema> JsonSchema for Secret<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut s = T::json_schema(g);
        s.insert("writeOnly".into(), serde_json::Value::Bool(true));
        s
    }
}
