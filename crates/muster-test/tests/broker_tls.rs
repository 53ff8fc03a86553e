//! TLS to a broker: a NATS server and a Redis server of the test's own
//! that require TLS, with a certificate signed by a CA the test makes
//! (openssl). A muster service and client given the CA (`?tls_ca=FILE`)
//! call and publish through it; without the CA the connection is refused
//! with an error, never made in the clear. Each runs where that broker
//! runs (`MUSTER_TEST_NATS`, `MUSTER_TEST_REDIS`, so in CI), else SKIPPED.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use muster::prelude::*;
use muster_test::{Proc, broker_url, eventually};

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, and a server certificate it signed for 127.0.0.1.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=muster test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A service and a client through `url` (which carries the CA): a call
/// and an event; then each of `without_ca` is refused.
async fn works_with_the_ca_only(url: &str, without_ca: &[String]) {
    let echo = Service::new("secure")
        .rpc("echo", |Args(s): Args<String>| async move {
            Ok::<_, RpcError>(s)
        })
        .start(muster::bus::connect(url, None).await.unwrap())
        .await
        .unwrap();
    let client = Client::connect(url).await.unwrap();
    let mut sub = client.subscribe(&["news.>"]).await.unwrap();
    muster_test::wait_registered(&client, "secure", 1).await;
    let back: String = client.call("secure.echo", &"over TLS").await.unwrap();
    assert_eq!(back, "over TLS");
    client.publish("news.tls", &1).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("the event arrives")
        .unwrap();
    assert_eq!(e.payload, serde_json::json!(1));
    for plain in without_ca {
        let refused =
            tokio::time::timeout(Duration::from_secs(30), muster::bus::connect(plain, None))
                .await
                .expect("the refusal comes, not a hang");
        assert!(refused.is_err(), "{plain} connected without the CA");
    }
    echo.stop().await;
    sub.cancel().await;
}

/// Runs `server` (named `what`) until it listens on `port` of 127.0.0.1.
async fn listening(server: Command, port: u16, what: &str) -> Proc {
    let proc = Proc::spawn(what, server);
    eventually(
        Duration::from_secs(20),
        &format!("{what} listens"),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        },
    )
    .await;
    proc
}

fn test_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("muster-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_the_ca_and_refused_without() {
    if broker_url(
        "MUSTER_TEST_REDIS",
        "redis_over_tls_with_the_ca_and_refused_without",
    )
    .is_none()
    {
        return;
    }
    let dir = test_dir("redis");
    let port = muster_test::free_port_base();
    let mut c = Command::new("redis-server");
    c.args([
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
    .arg("--tls-cert-file")
    .arg(dir.join("server.pem"))
    .arg("--tls-key-file")
    .arg(dir.join("server.key"))
    .arg("--tls-ca-cert-file")
    .arg(dir.join("ca.pem"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _server = listening(c, port, "redis-server --tls-port").await;
    let ca = dir.join("ca.pem");
    works_with_the_ca_only(
        &format!(
            "rediss://127.0.0.1:{port}?prefix=tls&tls_ca={}",
            ca.display()
        ),
        &[format!("rediss://127.0.0.1:{port}")],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_the_ca_and_refused_without() {
    if broker_url(
        "MUSTER_TEST_NATS",
        "nats_over_tls_with_the_ca_and_refused_without",
    )
    .is_none()
    {
        return;
    }
    let dir = test_dir("nats");
    let port = muster_test::free_port_base();
    let mut c = Command::new("nats-server");
    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .arg("--tlscert")
        .arg(dir.join("server.pem"))
        .arg("--tlskey")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = listening(c, port, "nats-server --tls").await;

    let ca = dir.join("ca.pem");
    // Without the CA the server's certificate is not trusted: no
    // connection, whether the URL asks for TLS or not.
    works_with_the_ca_only(
        &format!("tls://127.0.0.1:{port}?prefix=tls&tls_ca={}", ca.display()),
        &[
            format!("tls://127.0.0.1:{port}"),
            format!("nats://127.0.0.1:{port}"),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
