//! A registry connection speaking the wire protocol by hand, for tests that
//! play a client the library would never be: an attacker, a careless one.

use std::time::Duration;

use bytes::Bytes;
use muster_core::auth::Credential;
use omq_tokio::{Message, Options, Socket, SocketType};
use serde_json::{Value, json};

/// One DEALER to a bus's registry; verbs signed with a credential when it
/// has one (`docs/protocol.md`, "Registry authentication").
#[derive(Debug)]
pub struct RawRegistry {
    socket: Socket,
    credential: Option<Credential>,
    nonce: Option<String>,
    next: u32,
}

impl RawRegistry {
    /// Connects to the registry of the bus at `bus` (`zmq://...`).
    ///
    /// # Panics
    /// When the socket cannot be made.
    pub async fn connect(bus: &str, credential: Option<Credential>) -> Self {
        let socket = Socket::new(SocketType::Dealer, Options::default());
        socket
            .connect(bus.replace("zmq://", "tcp://").as_str())
            .await
            .unwrap();
        Self {
            socket,
            credential,
            nonce: None,
            next: 0,
        }
    }

    /// Sends `verb` with `body`, signed when it has a credential; the
    /// reply body.
    ///
    /// # Panics
    /// When the bus does not answer within 20 s.
    pub async fn call(&mut self, verb: &str, body: &Value) -> Value {
        if self.credential.is_some() && self.nonce.is_none() {
            let hello = self.raw(verb_header("hello", 0), b"{}".to_vec()).await;
            self.nonce = Some(hello["nonce"].as_str().unwrap().to_owned());
        }
        self.next += 1;
        let id = format!("a{}", self.next);
        let body = body.to_string().into_bytes();
        let auth = self.credential.as_ref().map(|c| {
            let nonce = self.nonce.clone().unwrap();
            let parts: [&[u8]; 5] = [
                b"muster-registry",
                nonce.as_bytes(),
                id.as_bytes(),
                verb.as_bytes(),
                &body,
            ];
            format!("{} {}", c.key_id(), c.mac(&parts))
        });
        let mut header = json!({"id": id, "kind": "control", "method": verb});
        if let Some(a) = auth {
            header["auth"] = json!(a);
        }
        self.raw(header, body).await
    }

    async fn raw(&self, header: Value, body: Vec<u8>) -> Value {
        self.socket
            .send(Message::multipart([
                Bytes::from_static(b"MUSTER/1"),
                Bytes::from(header.to_string()),
                Bytes::from(body),
            ]))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(20), self.socket.recv())
            .await
            .expect("the bus answers")
            .unwrap();
        serde_json::from_slice(&reply.part_bytes(2).unwrap()).unwrap()
    }
}

fn verb_header(verb: &str, n: u32) -> Value {
    json!({"id": format!("h{n}"), "kind": "control", "method": verb})
}
