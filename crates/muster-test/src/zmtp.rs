//! A raw ZMTP 3.0 peer over a plain TCP stream, written from the ZMTP
//! specification (RFC 23), for tests that must send what no ZeroMQ library
//! would: a subscriber that sends data frames, empty messages, frames no
//! socket type allows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connected peer that has done the NULL handshake.
#[derive(Debug)]
pub struct RawPeer {
    stream: TcpStream,
}

impl RawPeer {
    /// Connects to `tcp://HOST:PORT` (or `HOST:PORT`) as `socket_type`
    /// (`"SUB"`, `"DEALER"`, ...) and completes the greeting and READY.
    ///
    /// # Errors
    /// When the peer cannot be reached or the handshake fails.
    pub fn connect(endpoint: &str, socket_type: &str) -> std::io::Result<Self> {
        let addr = endpoint.trim_start_matches("tcp://");
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3; // version 3.0
        greeting[11] = 0;
        greeting[12..16].copy_from_slice(b"NULL");
        stream.write_all(&greeting)?;
        let mut theirs = [0u8; 64];
        stream.read_exact(&mut theirs)?;
        if theirs[0] != 0xff || theirs[9] != 0x7f {
            return Err(std::io::Error::other("not a ZMTP peer"));
        }
        let mut ready = Vec::new();
        ready.push(5u8);
        ready.extend_from_slice(b"READY");
        ready.push(11);
        ready.extend_from_slice(b"Socket-Type");
        ready.extend_from_slice(&u32::try_from(socket_type.len()).unwrap_or(0).to_be_bytes());
        ready.extend_from_slice(socket_type.as_bytes());
        let mut peer = Self { stream };
        peer.write_frame(0x04, &ready)?;
        // Their READY command.
        let (flags, _) = peer.read_frame()?;
        if flags & 0x04 == 0 {
            return Err(std::io::Error::other("expected the peer's READY"));
        }
        Ok(peer)
    }

    fn write_frame(&mut self, flags: u8, body: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(body.len() + 9);
        if let Ok(short) = u8::try_from(body.len()) {
            out.push(flags);
            out.push(short);
        } else {
            out.push(flags | 0x02);
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(body);
        self.stream.write_all(&out)
    }

    fn read_frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut flags = [0u8; 1];
        self.stream.read_exact(&mut flags)?;
        let len = if flags[0] & 0x02 != 0 {
            let mut n = [0u8; 8];
            self.stream.read_exact(&mut n)?;
            usize::try_from(u64::from_be_bytes(n)).map_err(std::io::Error::other)?
        } else {
            let mut n = [0u8; 1];
            self.stream.read_exact(&mut n)?;
            usize::from(n[0])
        };
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((flags[0], body))
    }

    /// Sends one message of `frames` (an empty slice sends one empty frame).
    ///
    /// # Errors
    /// When the connection is gone.
    pub fn send(&mut self, frames: &[&[u8]]) -> std::io::Result<()> {
        if frames.is_empty() {
            return self.write_frame(0, &[]);
        }
        for (i, f) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { 0x01 } else { 0 };
            self.write_frame(more, f)?;
        }
        self.stream.flush()
    }

    /// Reads one whole message (commands such as PING are skipped).
    ///
    /// # Errors
    /// On a timeout (5 s) or a closed connection.
    pub fn recv(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        loop {
            let (flags, body) = self.read_frame()?;
            if flags & 0x04 != 0 {
                continue;
            }
            frames.push(body);
            if flags & 0x01 == 0 {
                return Ok(frames);
            }
        }
    }
}
