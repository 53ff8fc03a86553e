//! The JSON-RPC envelope of a call, written and read without serde's
//! derive on the common path.
//!
//! Serde writes each member's key as an escaped string and reads each
//! through a visitor; for a 100-byte call that was a fifth of the
//! instructions of the body's whole round trip (`docs/benchmarks.md`).
//! Writing: the keys are constants, the values go through `serde_json`.
//! Reading: only the exact shape this module writes is read here, and
//! anything else (white space, other members, another order, an escaped
//! method, a string id) is left to serde, which reads it or refuses it
//! with its own error. The values themselves (params, result) are always
//! read by `serde_json`. Tests hold both paths to the same bytes and the
//! same values.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use super::jsonrpc::RequestBody;
use crate::error::RpcError;

/// How a request and a reply begin.
const START: &[u8] = br#"{"jsonrpc":"2.0","id":"#;
const METHOD: &[u8] = br#","method":"#;
const PARAMS: &[u8] = br#","params":"#;
const RESULT: &[u8] = br#","result":"#;

/// `{"jsonrpc":"2.0","id":<id>,"method":<method>,"params":<params>}`, as
/// serde writes the request struct.
pub(super) fn write_request<P: Serialize + ?Sized>(
    id: u64,
    method: &str,
    params: &P,
) -> Result<Vec<u8>, RpcError> {
    // Room for a small call's params without growing.
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(START);
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(METHOD);
    serde_json::to_writer(&mut out, method).map_err(|e| RpcError::invalid_params("", e))?;
    out.extend_from_slice(PARAMS);
    serde_json::to_writer(&mut out, params).map_err(|e| RpcError::invalid_params("", e))?;
    out.push(b'}');
    Ok(out)
}

/// `{"jsonrpc":"2.0","id":<id>,"result":<result>}`, as serde writes the
/// reply struct, in one buffer of the right size.
pub(super) fn write_raw_result(id: &Option<Value>, result: &RawValue) -> Result<Vec<u8>, RpcError> {
    // With room for an id.
    const AROUND: usize = 64;
    let mut out = Vec::with_capacity(result.get().len() + AROUND);
    out.extend_from_slice(START);
    serde_json::to_writer(&mut out, id)
        .map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))?;
    out.extend_from_slice(RESULT);
    out.extend_from_slice(result.get().as_bytes());
    out.push(b'}');
    Ok(out)
}

/// The request [`write_request`] writes, or `None` for serde to read.
pub(super) fn read_request(bytes: &[u8]) -> Option<RequestBody> {
    let rest = bytes.strip_prefix(START)?;
    let (id, rest) = unsigned(rest)?;
    let rest = rest.strip_prefix(METHOD)?.strip_prefix(b"\"")?;
    // A method with an escape or a control character is serde's to read.
    let end = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if rest[end] != b'"' {
        return None;
    }
    let method = std::str::from_utf8(&rest[..end]).ok()?;
    let params = rest[end + 1..].strip_prefix(PARAMS)?.strip_suffix(b"}")?;
    // One JSON value and nothing else, checked by serde_json: what is not
    // (a second member after the params, say) is the slow path's.
    let params: &RawValue = serde_json::from_slice(params).ok()?;
    Some(RequestBody {
        id: Some(Value::from(id)),
        method: method.to_owned(),
        // `"params":null` is no params, as serde reads an `Option`.
        params: (params.get().trim() != "null").then(|| params.to_owned()),
    })
}

/// The result of a reply [`write_raw_result`] writes, with a number or
/// `null` as its id; `None` for serde to read (an error reply among them).
pub(super) fn read_result<R: DeserializeOwned>(bytes: &[u8]) -> Option<R> {
    let rest = bytes.strip_prefix(START)?;
    let rest = match rest.strip_prefix(b"null") {
        Some(rest) => rest,
        None => unsigned(rest)?.1,
    };
    let result = rest.strip_prefix(RESULT)?.strip_suffix(b"}")?;
    // One value that fits `R` and nothing after it; else the slow path
    // reads the whole reply (and names what does not fit).
    serde_json::from_slice(result).ok()
}

/// A JSON unsigned integer as serde writes a `u64` (no sign, no leading
/// zero, no fraction), and what follows it.
fn unsigned(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = bytes.split_at(digits);
    if number.is_empty() || (number.len() > 1 && number[0] == b'0') {
        return None;
    }
    // Digit by digit (`str::parse` checks UTF-8 and signs again); an
    // overflow (more than a u64) is the slow path's.
    let n = number.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some((n, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ContentType;
    use crate::wire::jsonrpc::{decode_reply_as, decode_request};
    use proptest::prelude::*;

    /// The same body with a space after its brace: a shape the fast
    /// path never takes, so the public decoders read it with serde alone.
    fn spaced(bytes: &[u8]) -> Vec<u8> {
        let mut spaced = b"{ ".to_vec();
        spaced.extend_from_slice(&bytes[1..]);
        spaced
    }

    fn by_serde(bytes: &[u8]) -> Result<RequestBody, RpcError> {
        decode_request(ContentType::Json, &spaced(bytes))
    }

    fn same(a: &RequestBody, b: &RequestBody) -> bool {
        a.id == b.id
            && a.method == b.method
            && a.params.as_ref().map(|p| p.get()) == b.params.as_ref().map(|p| p.get())
    }

    #[test]
    fn reads_what_it_writes() {
        let body = write_request(42, "echo", &"x".repeat(98)).unwrap();
        let fast = read_request(&body).expect("the fast path reads its own shape");
        assert_eq!(fast.id, Some(Value::from(42)));
        assert_eq!(fast.method, "echo");
        assert!(same(&fast, &by_serde(&body).unwrap()));
        let null_params = br#"{"jsonrpc":"2.0","id":1,"method":"m","params":null}"#;
        let fast = read_request(null_params).expect("its own shape");
        assert!(
            fast.params.is_none(),
            "null params are none, as serde reads them"
        );
        assert!(same(&fast, &by_serde(null_params).unwrap()));
        let raw = RawValue::from_string(r#"{"text":"hi"}"#.to_owned()).unwrap();
        for id in [None, Some(Value::from(7))] {
            let reply = write_raw_result(&id, &raw).unwrap();
            let v: Value = read_result(&reply).expect("the fast path reads its own reply");
            assert_eq!(v, serde_json::json!({"text": "hi"}));
        }
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"m","params":1,"extra":2}"#[..],
            br#"{"jsonrpc":"2.0","id":01,"method":"m","params":1}"#,
            br#"{"jsonrpc":"2.0","id":"1","method":"m","params":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"a\"b","params":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,}"#,
            br#"{"jsonrpc":"2.0","id":99999999999999999999,"method":"m","params":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":1} "#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#,
        ] {
            assert!(
                read_request(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for reply in [
            &br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}"#,
            br#"{"jsonrpc":"2.0","id":"a","result":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":"text"}"#,
        ] {
            assert!(
                read_result::<u32>(reply).is_none(),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        // Whatever the fast path leaves, the public decoder still reads.
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}}"#;
        assert_eq!(
            decode_reply_as::<u32>(ContentType::Json, error)
                .unwrap_err()
                .code,
            -32601
        );
    }

    proptest! {
        #[test]
        fn both_paths_read_the_same_request(
            id in any::<u64>(),
            method in any::<String>(),
            text in any::<String>(),
        ) {
            let body = write_request(id, &method, &serde_json::json!({"t": text})).unwrap();
            let slow = by_serde(&body).unwrap();
            match read_request(&body) {
                Some(fast) => prop_assert!(same(&fast, &slow)),
                // Only a method serde escapes is left to the slow path.
                None => prop_assert!(method.chars().any(|c| c == '"' || c == '\\' || c < ' ')),
            }
            prop_assert!(same(&decode_request(ContentType::Json, &body).unwrap(), &slow));
        }

        #[test]
        fn what_the_fast_path_reads_serde_reads_the_same(
            id in prop_oneof![Just("null".to_owned()), "[0-9]{0,21}", Just(r#""1""#.to_owned())],
            method in r#"[a-z\\"\u{1}é]{0,6}"#,
            value in prop_oneof![
                Just("1"), Just(r#""x""#), Just("[1,2]"), Just("{}"), Just("null"),
                Just(r#"1,"e":2"#), Just("[1,"), Just("1 "), Just(""),
            ],
        ) {
            // Pieces in the shapes the fast path reads, and near misses.
            let request = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{value}}}"#);
            if let Some(fast) = read_request(request.as_bytes()) {
                prop_assert!(same(&fast, &by_serde(request.as_bytes()).unwrap()));
            }
            let reply = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{value}}}"#);
            if let Some(fast) = read_result::<Value>(reply.as_bytes()) {
                prop_assert_eq!(fast, decode_reply_as::<Value>(ContentType::Json, &spaced(reply.as_bytes())).unwrap());
            }
        }

        #[test]
        fn both_paths_read_the_same_result(text in any::<String>(), id in proptest::option::of(any::<u64>())) {
            let raw = serde_json::value::to_raw_value(&text).unwrap();
            let reply = write_raw_result(&id.map(Value::from), &raw).unwrap();
            let fast: String = read_result(&reply).expect("its own shape");
            prop_assert_eq!(&fast, &decode_reply_as::<String>(ContentType::Json, &spaced(&reply)).unwrap());
            prop_assert_eq!(fast, text);
        }
    }
}
