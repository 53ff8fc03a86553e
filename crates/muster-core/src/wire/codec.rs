use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::WireError;

/// How a body is encoded; named by the header's `content_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    /// `application/json` (the default when the header has none).
    #[default]
    Json,
    /// `application/msgpack`.
    MsgPack,
}

impl ContentType {
    /// The MIME name used in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::MsgPack => "application/msgpack",
        }
    }

    /// Reads the header member; absent means JSON.
    pub fn from_header(value: Option<&str>) -> Result<Self, WireError> {
        match value {
            None | Some("application/json") | Some("json") => Ok(ContentType::Json),
            Some("application/msgpack") | Some("msgpack") => Ok(ContentType::MsgPack),
            Some(other) => Err(WireError::ContentType(other.to_owned())),
        }
    }

    /// The header member to send: `None` for JSON, keeping headers short.
    pub fn header_value(self) -> Option<String> {
        match self {
            ContentType::Json => None,
            ContentType::MsgPack => Some(self.as_str().to_owned()),
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, WireError> {
        match self {
            ContentType::Json => {
                serde_json::to_vec(value).map_err(|e| WireError::Body(e.to_string()))
            }
            ContentType::MsgPack => {
                rmp_serde::to_vec_named(value).map_err(|e| WireError::Body(e.to_string()))
            }
        }
    }

    /// Decodes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, WireError> {
        match self {
            ContentType::Json => {
                serde_json::from_slice(bytes).map_err(|e| WireError::Body(e.to_string()))
            }
            ContentType::MsgPack => {
                rmp_serde::from_slice(bytes).map_err(|e| WireError::Body(e.to_string()))
            }
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
