//! The gateway: `POST /call/SERVICE.METHOD` calls a method over the bus
//! with the body as its params, and `/openapi.json` describes every
//! registered method from its schemas.

use super::*;

/// The HTTP status that fits a JSON-RPC error.
pub(crate) fn http_status(code: i64) -> StatusCode {
    match code {
        code::PARSE_ERROR | code::INVALID_REQUEST | code::INVALID_PARAMS => StatusCode::BAD_REQUEST,
        code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        code::INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
        code::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        code::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        code::OVERLOADED => StatusCode::TOO_MANY_REQUESTS,
        code::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        code::UNAUTHORIZED => StatusCode::UNAUTHORIZED,
        // An application's own error: the request was understood, the
        // method said no.
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// A body axum could not read (over the size limit, a broken stream).
pub(super) fn body_refused(r: &BytesRejection) -> Response {
    let status = r.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        code::TOO_LARGE
    } else {
        code::INVALID_REQUEST
    };
    error(status, code, r.body_text())
}

/// A JSON-RPC error as an HTTP answer.
pub(super) fn rpc_error(e: &RpcError) -> Response {
    (http_status(e.code), Json(json!({ "error": e }))).into_response()
}

/// Longest deadline `X-Muster-Timeout-Ms` may ask for: an hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The call's deadline from `X-Muster-Timeout-Ms` (default 5 s).
fn call_timeout(headers: &HeaderMap) -> Result<Duration, RpcError> {
    let Some(v) = headers.get("x-muster-timeout-ms") else {
        return Ok(muster::DEFAULT_TIMEOUT);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| {
            RpcError::invalid_request(format!(
                "X-Muster-Timeout-Ms must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"
            ))
        })
}

/// `POST /call/SERVICE.METHOD` with a JSON body (the params).
pub(super) async fn call(
    State(s): State<AppState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    if !s.gateway_open && !authorized(&s, &headers) {
        return refuse();
    }
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_refused(&r),
    };
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return rpc_error(&RpcError::parse_error(e)),
        }
    };
    let timeout = match call_timeout(&headers) {
        Ok(t) => t,
        Err(e) => return rpc_error(&e),
    };
    let options = with_trace_context(CallOptions::default().timeout(timeout), &headers);
    match s
        .client
        .call_with::<_, Value>(&target, &params, options)
        .await
    {
        Ok(v) => Json(json!({ "result": v })).into_response(),
        Err(e) => rpc_error(&e),
    }
}

/// The request's W3C `traceparent` and `tracestate`, passed on to the
/// call. One that does not parse is dropped (the callee then starts a
/// trace, as the recommendation says); so is a `tracestate` past the 512
/// characters the recommendation lets a receiver drop beyond, or without
/// a `traceparent`.
fn with_trace_context(mut options: CallOptions, headers: &HeaderMap) -> CallOptions {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(parent) =
        text("traceparent").filter(|t| muster::wire::TraceContext::parse(t).is_some())
    else {
        return options;
    };
    options = options.traceparent(parent);
    options.tracestate = text("tracestate")
        .filter(|s| s.len() <= 512)
        .map(str::to_owned);
    options
}

/// One `POST /call/SERVICE.METHOD` of the OpenAPI document: the params'
/// schema (with the limits the method's types declare) as a required
/// body, every status the gateway answers, and the size limit.
fn operation(
    service: &str,
    m: &muster::registry::MethodInfo,
    open: bool,
    max_body: usize,
) -> Value {
    let error = json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}}}}});
    let answer = |what: &str| json!({"description": what, "content": {"application/json": {"schema": error.clone()}}});
    let mut responses = json!({
        "200": {"description": "the result", "content": {"application/json": {"schema":
            {"type": "object", "required": ["result"], "properties": {"result": m.result.clone().unwrap_or(json!({}))}}}}},
        "400": answer("bad params (-32602, with data.path naming the field), a body that is not JSON, or a bad X-Muster-Timeout-Ms"),
        "404": answer("no such service or method (-32601)"),
        "413": answer("the body or the reply is over the size limit (-32003)"),
        "422": answer("the method's own error (its code)"),
        "429": answer("the instance is shutting down (-32002); try again"),
        "500": answer("the handler failed (-32603)"),
        "503": answer("no instance could answer (-32001)"),
        "504": answer("no reply within the deadline (-32000)"),
    });
    if !open {
        responses["401"] = answer("missing or wrong token (-32004)");
    }
    json!({"post": {
        "operationId": format!("{service}.{}", m.name),
        "tags": [service],
        "parameters": [{"name": "X-Muster-Timeout-Ms", "in": "header", "required": false,
            "description": "the call's deadline in milliseconds (default 5000)",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS}}],
        "requestBody": {
            "required": true,
            "description": format!("the params, as JSON (at most {max_body} bytes)"),
            "content": {"application/json": {"schema": m.params.clone().unwrap_or(json!({}))}}},
        "responses": responses,
    }})
}

/// OpenAPI 3.1 from the registry: one `POST /call/SERVICE.METHOD` per method.
pub(super) async fn openapi(State(s): State<AppState>) -> Response {
    let instances = match s.client.instances().await {
        Ok(i) => i,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, e),
    };
    let mut paths = serde_json::Map::new();
    for i in &instances {
        if i.service == muster::registry::HOST_SERVICE {
            continue;
        }
        for m in &i.methods {
            let path = format!("/call/{}.{}", i.service, m.name);
            if paths.contains_key(&path) {
                continue;
            }
            paths.insert(path, operation(&i.service, m, s.gateway_open, s.max_body));
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "muster gateway", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    });
    if !s.gateway_open {
        doc["components"] =
            json!({"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}});
        doc["security"] = json!([{"token": []}]);
    }
    Json(doc).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_trace_context_of_the_request_is_passed_on_and_a_bad_one_dropped() {
        let o = with_trace_context(
            CallOptions::default(),
            &headers(&[("traceparent", PARENT), ("tracestate", "vendor=1")]),
        );
        assert_eq!(o.traceparent.as_deref(), Some(PARENT));
        assert_eq!(o.tracestate.as_deref(), Some("vendor=1"));

        let bad = with_trace_context(
            CallOptions::default(),
            &headers(&[("traceparent", "00-nope"), ("tracestate", "vendor=1")]),
        );
        assert_eq!((bad.traceparent, bad.tracestate), (None, None));

        let long = "v=".to_owned() + &"x".repeat(600);
        let o = with_trace_context(
            CallOptions::default(),
            &headers(&[("traceparent", PARENT), ("tracestate", &long)]),
        );
        assert_eq!(o.traceparent.as_deref(), Some(PARENT));
        assert_eq!(o.tracestate, None);
    }
}
