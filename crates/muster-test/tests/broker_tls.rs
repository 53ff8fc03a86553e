//! TLS to a broker: a NATS server and a Redis server of the test's own
//! that require TLS, and the machine's RabbitMQ behind a TLS front of the
//! test's own, each with a certificate signed by a CA the test makes
//! (openssl). A muster service and client given the CA (`?tls_ca=FILE`)
//! call and publish through it; without the CA the connection is refused
//! with an error, never made in the clear. Each runs where that broker
//! runs (`MUSTER_TEST_NATS`, `MUSTER_TEST_REDIS`, `MUSTER_TEST_AMQP`, so
//! in CI), else SKIPPED.

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

/// Terminates TLS on `port` of 127.0.0.1 with the test's server
/// certificate and relays each connection to `target` (the machine's
/// RabbitMQ, which listens in the clear): what a TLS load balancer in
/// front of a broker does. Runs until the test ends.
async fn tls_front(dir: &Path, port: u16, target: String) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (acceptor, target) = (acceptor.clone(), target.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate ends here.
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_over_tls_with_the_ca_and_refused_without() {
    let Some(base) = broker_url(
        "MUSTER_TEST_AMQP",
        "amqp_over_tls_with_the_ca_and_refused_without",
    ) else {
        return;
    };
    let dir = test_dir("amqp");
    // amqp://USER:PASS@HOST:PORT/VHOST: TLS in front of HOST:PORT.
    let (auth, rest) = base
        .strip_prefix("amqp://")
        .and_then(|b| b.split_once('@'))
        .expect("amqp://USER:PASS@HOST:PORT/VHOST");
    let (target, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let vhost = vhost.split('?').next().unwrap_or("");
    let port = muster_test::free_port_base();
    tls_front(&dir, port, target.to_owned()).await;
    let ca = dir.join("ca.pem");
    let exchange = format!("tls{:x}", muster::id::random_u64() & 0xff_ffff);
    works_with_the_ca_only(
        &format!(
            "amqps://{auth}@127.0.0.1:{port}/{vhost}?exchange={exchange}&tls_ca={}",
            ca.display()
        ),
        &[format!("amqps://{auth}@127.0.0.1:{port}/{vhost}")],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
