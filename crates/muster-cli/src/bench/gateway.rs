//! The HTTP gateway under `wrk`: `POST /call/echo.echo` on a host's
//! gateway against a plain axum handler that makes the same call with a
//! muster client, in the same run. Both reach the same echo instance over
//! the same bus; what differs is the gateway's own work (its host check,
//! token, deadline and trace headers, security headers).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster::Client;
use serde_json::{Value, json};

use super::host::HostProc;
use super::{fmt_rate, free_ports, http_once};

/// The body of every request: a small JSON object, echoed back.
const BODY: &str = r#"{"text":"hello from wrk"}"#;

/// Connections wrk keeps open; one wrk thread (the machine has 2 cores).
const CONNECTIONS: u32 = 32;

pub(super) async fn run(duration: Duration, rounds: usize) -> anyhow::Result<()> {
    let gateway_port = free_ports()?;
    let manifest = super::host::manifest(1, true)?;
    let (host, bus) =
        HostProc::start_with_http("gateway", &format!("127.0.0.1:{gateway_port}"), &manifest)
            .await?;
    super::host::until_registered(&host.client, "echo", 1, Duration::from_secs(20)).await?;

    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain_port = plain.local_addr()?.port();
    let client = Client::connect(&bus).await?;
    let app = axum::Router::new()
        .route("/call/{target}", axum::routing::post(plain_call))
        .with_state(client);
    let server = tokio::spawn(async move { axum::serve(plain, app).await });

    let targets = [
        ("gateway", gateway_port, Some(host.token.as_str())),
        ("plain axum", plain_port, None),
    ];
    // A request each, checked, before anything is timed.
    for (name, port, token) in targets {
        check_answers(port, token)
            .await
            .with_context(|| format!("the {name} does not answer"))?;
    }
    let auth = format!("Bearer {}", host.token);
    let script = std::env::temp_dir().join(format!("muster-bench-wrk-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"{auth}\"\n"
        ),
    )?;
    println!(
        "gateway        wrk -t1 -c{CONNECTIONS} -d{}s, POST /call/echo.echo, {rounds} rounds, interleaved",
        duration.as_secs()
    );
    for round in 1..=rounds {
        let mut rates = Vec::new();
        for (name, port, _) in targets {
            let r = run_wrk(&script, port, duration)
                .await
                .with_context(|| format!("wrk against the {name}"))?;
            rates.push(r);
        }
        let (g, p) = (&rates[0], &rates[1]);
        println!(
            "gateway        round {round}: gateway {:>8} req/s (p99 {})   plain axum {:>8} req/s (p99 {})   ratio {:.2}",
            fmt_rate(g.per_second),
            g.p99,
            fmt_rate(p.per_second),
            p.p99,
            g.per_second / p.per_second.max(1e-9)
        );
    }
    let _ = std::fs::remove_file(&script);
    server.abort();
    host.stop().await;
    Ok(())
}

/// What a plain axum service would write: the path's method called with
/// the body as its params.
async fn plain_call(
    State(client): State<Client>,
    Path(target): Path<String>,
    Json(params): Json<Value>,
) -> Response {
    match client.call::<_, Value>(&target, &params).await {
        Ok(v) => Json(json!({ "result": v })).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": e }))).into_response(),
    }
}

/// One request by hand: the answer must be 200 with the echoed body.
async fn check_answers(port: u16, token: Option<&str>) -> anyhow::Result<()> {
    let (status, answer) = http_once(port, "POST", "/call/echo.echo", token, BODY).await?;
    if status != 200 || !answer.contains("hello from wrk") {
        bail!("unexpected answer: {answer}");
    }
    Ok(())
}

struct WrkResult {
    per_second: f64,
    p99: String,
}

/// `wrk` for `duration` against `port`; fails on any error or non-2xx
/// answer, so a refused or failing target cannot pass for a fast one.
async fn run_wrk(
    script: &std::path::Path,
    port: u16,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/call/echo.echo"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("the gateway scenario needs wrk on PATH (Debian: apt install wrk)")
            }
            _ => e.into(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors:\n{text}");
    }
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
    };
    let per_second = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = field("99%").unwrap_or_default();
    Ok(WrkResult { per_second, p99 })
}
