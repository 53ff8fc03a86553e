//! muster headers in AMQP properties. A muster message carries its header
//! JSON in the AMQP header `x-muster`; the body is the body. Messages from
//! other AMQP clients have no `x-muster`, and their header is rebuilt from
//! the routing key and the standard properties.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use muster_core::wire::{Header, decode_header, encode_header};

/// The AMQP header holding the muster header.
pub(crate) const HEADER: &str = "x-muster";
/// Job id, attempt, transaction and dead-letter reason of a work-queue job.
pub(crate) const JOB_ID: &str = "x-muster-id";
pub(crate) const JOB_ATTEMPT: &str = "x-muster-attempt";
pub(crate) const JOB_TXN: &str = "x-muster-txn";
pub(crate) const JOB_REASON: &str = "x-muster-reason";
pub(crate) const JOB_TRACEPARENT: &str = "traceparent";

pub(crate) fn with_header(props: BasicProperties, header: &Header) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(
        HEADER.into(),
        AMQPValue::LongString(LongString::from(encode_header(header))),
    );
    props.with_headers(table)
}

/// The muster header of a message, if it has a readable one.
pub(crate) fn read_header(props: &BasicProperties) -> Option<Header> {
    let raw = bytes_field(props, HEADER)?;
    decode_header(&raw).ok()
}

/// A header field as bytes (long or short string, byte array).
pub(crate) fn bytes_field(props: &BasicProperties, key: &str) -> Option<Vec<u8>> {
    let table = props.headers().as_ref()?;
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

/// A header field as text.
pub(crate) fn text_field(props: &BasicProperties, key: &str) -> Option<String> {
    bytes_field(props, key).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A header field as a number (any integer type a client may have used).
pub(crate) fn u32_field(props: &BasicProperties, key: &str) -> Option<u32> {
    let table = props.headers().as_ref()?;
    let v: i64 = match table.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    u32::try_from(v).ok()
}
