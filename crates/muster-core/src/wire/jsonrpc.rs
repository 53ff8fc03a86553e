//! JSON-RPC 2.0 bodies of requests and replies, in JSON or MessagePack.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::ContentType;
use crate::error::RpcError;

/// A decoded request body.
#[derive(Debug, Clone)]
pub struct RequestBody {
    /// The JSON-RPC id, echoed in the reply. `None` when the body has no
    /// `id` member: a notification, which JSON-RPC 2.0 never answers
    /// (`Some(Value::Null)` is an explicit `"id": null`, which is).
    pub id: Option<Value>,
    /// The method name as the caller wrote it.
    pub method: String,
    /// The params, an object or an array, kept as raw JSON for the extractor.
    pub params: Option<Box<RawValue>>,
}

/// `Some` for a member that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl RequestBody {
    /// True for a notification: no reply must be sent.
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<&'a str>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ValueRequest {
    #[serde(default)]
    jsonrpc: Option<String>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

#[derive(Serialize)]
struct OutRequest<'a, P: ?Sized> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a P,
}

/// Encodes a request body.
///
/// # Errors
/// When `params` cannot be serialized.
pub fn encode_request<P: Serialize + ?Sized>(
    ct: ContentType,
    id: u64,
    method: &str,
    params: &P,
) -> Result<Vec<u8>, RpcError> {
    match ct {
        ContentType::Json => super::jsonrpc_json::write_request(id, method, params),
        ContentType::MsgPack => ct
            .encode(&OutRequest {
                jsonrpc: "2.0",
                id,
                method,
                params,
            })
            .map_err(|e| RpcError::invalid_params("", e)),
    }
}

/// Decodes a request body; a bad body is a coded error to send back.
///
/// # Errors
/// -32700 for undecodable bytes, -32600 for a body that is not a request.
pub fn decode_request(ct: ContentType, bytes: &[u8]) -> Result<RequestBody, RpcError> {
    let (jsonrpc_ok, id, method, params) = match ct {
        ContentType::Json => {
            if let Some(request) = super::jsonrpc_json::read_request(bytes) {
                return Ok(request);
            }
            let r: JsonRequest<'_> =
                serde_json::from_slice(bytes).map_err(|e| classify_json_error(&e))?;
            (
                r.jsonrpc.is_none_or(|v| v == "2.0"),
                r.id,
                r.method,
                r.params.map(|p| p.to_owned()),
            )
        }
        ContentType::MsgPack => {
            let r: ValueRequest = rmp_serde::from_slice(bytes).map_err(RpcError::parse_error)?;
            let params = match r.params {
                Some(v) => Some(serde_json::value::to_raw_value(&v).map_err(RpcError::internal)?),
                None => None,
            };
            (
                r.jsonrpc.as_deref().is_none_or(|v| v == "2.0"),
                r.id,
                r.method,
                params,
            )
        }
    };
    if !jsonrpc_ok {
        return Err(RpcError::invalid_request("jsonrpc must be \"2.0\""));
    }
    let method = method.ok_or_else(|| RpcError::invalid_request("missing \"method\""))?;
    // JSON-RPC wants an object or an array; muster also takes a bare value
    // for methods whose argument is not a struct (`Args<String>`). The
    // argument type decides, with -32602 when it does not fit.
    Ok(RequestBody { id, method, params })
}

fn classify_json_error(e: &serde_json::Error) -> RpcError {
    if e.is_data() {
        RpcError::invalid_request(e)
    } else {
        RpcError::parse_error(e)
    }
}

#[derive(Serialize)]
struct OutResult<'a, R: ?Sized> {
    jsonrpc: &'static str,
    id: &'a Option<Value>,
    result: &'a R,
}

#[derive(Serialize)]
struct OutError<'a> {
    jsonrpc: &'static str,
    id: &'a Option<Value>,
    error: &'a RpcError,
}

/// Encodes a successful reply.
///
/// # Errors
/// When the result cannot be serialized (reported as -32603).
pub fn encode_result<R: Serialize + ?Sized>(
    ct: ContentType,
    id: &Option<Value>,
    result: &R,
) -> Result<Vec<u8>, RpcError> {
    ct.encode(&OutResult {
        jsonrpc: "2.0",
        id,
        result,
    })
    .map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))
}

/// Encodes a successful JSON reply around a result already in JSON, in
/// one buffer of the right size (the generic [`encode_result`] starts
/// small and grows, copying the result again).
///
/// # Errors
/// As [`encode_result`].
pub fn encode_raw_result(id: &Option<Value>, result: &RawValue) -> Result<Vec<u8>, RpcError> {
    super::jsonrpc_json::write_raw_result(id, result)
}

/// Encodes an error reply. Cannot fail: an error is plain data.
pub fn encode_error(ct: ContentType, id: &Option<Value>, error: &RpcError) -> Vec<u8> {
    ct.encode(&OutError {
        jsonrpc: "2.0",
        id,
        error,
    })
    .unwrap_or_else(|_| {
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#
            .to_vec()
    })
}

#[derive(Deserialize)]
struct JsonReply<'a> {
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct ValueReply {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

/// Decodes a reply body into the raw JSON result or the error it carries.
///
/// # Errors
/// The outer error when the body is not a JSON-RPC reply at all.
pub fn decode_reply(
    ct: ContentType,
    bytes: &[u8],
) -> Result<Result<Box<RawValue>, RpcError>, RpcError> {
    let null = || RawValue::from_string("null".to_owned()).map_err(RpcError::internal);
    match ct {
        ContentType::Json => {
            let r: JsonReply<'_> = serde_json::from_slice(bytes)
                .map_err(|e| RpcError::parse_error(format!("reply: {e}")))?;
            Ok(match (r.error, r.result) {
                (Some(e), _) => Err(e),
                (None, Some(v)) => Ok(v.to_owned()),
                (None, None) => Ok(null()?),
            })
        }
        ContentType::MsgPack => {
            let r: ValueReply = rmp_serde::from_slice(bytes)
                .map_err(|e| RpcError::parse_error(format!("reply: {e}")))?;
            Ok(match (r.error, r.result) {
                (Some(e), _) => Err(e),
                (None, Some(v)) => {
                    Ok(serde_json::value::to_raw_value(&v).map_err(RpcError::internal)?)
                }
                (None, None) => Ok(null()?),
            })
        }
    }
}

/// Decodes a reply straight into the result type (one pass, no
/// intermediate raw value): the caller's hot path.
///
/// # Errors
/// The error the reply carries, or -32700 when the body is not a reply or
/// its result does not fit `R`.
pub fn decode_reply_as<R: serde::de::DeserializeOwned>(
    ct: ContentType,
    bytes: &[u8],
) -> Result<R, RpcError> {
    #[derive(Deserialize)]
    #[serde(bound = "R: serde::de::DeserializeOwned")]
    struct Typed<R> {
        #[serde(default = "Option::default")]
        result: Option<R>,
        #[serde(default)]
        error: Option<RpcError>,
    }
    let misfit = |e: &dyn std::fmt::Display| {
        RpcError::parse_error(format!(
            "reply does not fit {}: {e}",
            std::any::type_name::<R>()
        ))
    };
    let typed: Typed<R> = match ct {
        ContentType::Json => {
            if let Some(result) = super::jsonrpc_json::read_result(bytes) {
                return Ok(result);
            }
            serde_json::from_slice(bytes).map_err(|e| misfit(&e))?
        }
        ContentType::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| misfit(&e))?,
    };
    match (typed.error, typed.result) {
        (Some(e), _) => Err(e),
        (None, Some(r)) => Ok(r),
        // A null or absent result: whatever `R` makes of null.
        (None, None) => serde_json::from_str("null").map_err(|e| misfit(&e)),
    }
}

/// The error reply to `request`: its id, in its content type (JSON
/// without saying so), carrying `error`. What every broker transport
/// sends back for a request it refuses before the handler.
pub fn error_envelope(request: &super::Header, error: &RpcError) -> super::Envelope {
    let mut header = super::Header::reply_to(request);
    let ct = ContentType::from_header(request.content_type.as_deref()).unwrap_or_default();
    if ct == ContentType::Json {
        header.content_type = None;
    }
    super::Envelope::new(header, encode_error(ct, &None, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use proptest::prelude::*;

    #[test]
    fn a_raw_result_is_encoded_as_the_generic_encoder_does() {
        let long = format!("{:?}", "x".repeat(500));
        for (id, result) in [
            (Some(Value::from(7)), r#"{"a":[1,2]}"#),
            (Some(Value::from("id-\"quoted\"")), long.as_str()),
            (None, "null"),
        ] {
            let raw = RawValue::from_string(result.to_owned()).unwrap();
            assert_eq!(
                encode_raw_result(&id, &raw).unwrap(),
                encode_result(ContentType::Json, &id, &raw).unwrap()
            );
        }
    }

    #[test]
    fn a_json_request_is_encoded_as_serde_encodes_it() {
        let params = serde_json::json!({"text": "hi \"there\"\n", "n": [1, 2.5, null]});
        for (id, method) in [(0, "m"), (u64::MAX, "say \"hi\"\u{1}é")] {
            assert_eq!(
                encode_request(ContentType::Json, id, method, &params).unwrap(),
                serde_json::to_vec(&OutRequest {
                    jsonrpc: "2.0",
                    id,
                    method,
                    params: &params
                })
                .unwrap()
            );
        }
    }

    #[test]
    fn request_round_trip_json_and_msgpack() {
        for ct in [ContentType::Json, ContentType::MsgPack] {
            let b = encode_request(ct, 7, "shout", &serde_json::json!({"text": "hi"})).unwrap();
            let r = decode_request(ct, &b).unwrap();
            assert_eq!(r.method, "shout");
            assert_eq!(r.id, Some(Value::from(7)));
            assert_eq!(r.params.unwrap().get(), r#"{"text":"hi"}"#);
        }
    }

    #[test]
    fn array_params_are_accepted() {
        let r = decode_request(
            ContentType::Json,
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":["hi",2]}"#,
        )
        .unwrap();
        assert_eq!(r.params.unwrap().get(), r#"["hi",2]"#);
    }

    #[test]
    fn bad_bodies_get_standard_codes() {
        let parse = decode_request(ContentType::Json, b"{nope").unwrap_err();
        assert_eq!(parse.code, code::PARSE_ERROR);
        let invalid = decode_request(ContentType::Json, br#"{"id":1}"#).unwrap_err();
        assert_eq!(invalid.code, code::INVALID_REQUEST);
        let version =
            decode_request(ContentType::Json, br#"{"jsonrpc":"1.0","method":"m"}"#).unwrap_err();
        assert_eq!(version.code, code::INVALID_REQUEST);
        let scalar = decode_request(ContentType::Json, br#"{"method":"m","params":3}"#).unwrap();
        assert_eq!(scalar.params.unwrap().get(), "3");
    }

    #[test]
    fn replies_round_trip() {
        for ct in [ContentType::Json, ContentType::MsgPack] {
            let id = Some(Value::from(3));
            let ok = encode_result(ct, &id, &serde_json::json!({"text":"hihi"})).unwrap();
            assert_eq!(
                decode_reply(ct, &ok).unwrap().unwrap().get(),
                r#"{"text":"hihi"}"#
            );
            let err = encode_error(ct, &id, &RpcError::method_not_found("x.y"));
            assert_eq!(decode_reply(ct, &err).unwrap().unwrap_err().code, -32601);
        }
    }

    #[test]
    fn typed_replies() {
        for ct in [ContentType::Json, ContentType::MsgPack] {
            let id = Some(Value::from(1));
            let ok = encode_result(ct, &id, &"hi").unwrap();
            assert_eq!(decode_reply_as::<String>(ct, &ok).unwrap(), "hi");
            assert_eq!(
                decode_reply_as::<u32>(ct, &ok).unwrap_err().code,
                code::PARSE_ERROR
            );
            let unit = encode_result(ct, &id, &()).unwrap();
            decode_reply_as::<()>(ct, &unit).unwrap();
            let err = encode_error(ct, &id, &RpcError::method_not_found("x"));
            assert_eq!(
                decode_reply_as::<String>(ct, &err).unwrap_err().code,
                -32601
            );
        }
    }

    proptest! {
        #[test]
        fn requests_and_results_are_written_as_serde_writes_them(
            id in any::<u64>(),
            method in any::<String>(),
            text in any::<String>(),
            number in any::<f64>(),
        ) {
            let params = serde_json::json!([text, number, {"k": text}]);
            let by_serde = serde_json::to_vec(&OutRequest { jsonrpc: "2.0", id, method: &method, params: &params }).unwrap();
            prop_assert_eq!(encode_request(ContentType::Json, id, &method, &params).unwrap(), by_serde);
            let raw = serde_json::value::to_raw_value(&params).unwrap();
            for id in [None, Some(Value::from(id)), Some(Value::from(text.clone()))] {
                let by_serde = serde_json::to_vec(&OutResult { jsonrpc: "2.0", id: &id, result: &raw }).unwrap();
                prop_assert_eq!(encode_raw_result(&id, &raw).unwrap(), by_serde);
            }
        }

        #[test]
        fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(ContentType::Json, &bytes);
            let _ = decode_request(ContentType::MsgPack, &bytes);
        }

        #[test]
        fn reply_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_reply(ContentType::Json, &bytes);
            let _ = decode_reply(ContentType::MsgPack, &bytes);
        }
    }
}
