//! The vpcd protocol: the card is a TCP client of pcscd's vpcd driver. Each message is a
//! 2-byte big-endian length and a payload; a 1-byte payload is a control code (0 power off,
//! 1 power on, 2 reset, 4 send ATR), anything else a command APDU answered with data + SW.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::card::{CardReply, VirtualCard};

const POWER_OFF: u8 = 0;
const POWER_ON: u8 = 1;
const RESET: u8 = 2;
const GET_ATR: u8 = 4;

/// Why the card stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "no vpcd reader answered at {address} within {seconds} s: {source}; is pcscd with the vpcd driver running (scripts/with-pcscd.sh)?"
    )]
    Connect {
        address: String,
        seconds: u64,
        source: std::io::Error,
    },
    #[error("connection to vpcd at {address} failed: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
}

/// How a session with the reader ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The reader closed the connection (pcscd stopped).
    ReaderClosed,
    /// A fault pulled the card.
    CardPulled,
}

/// Connects to the reader, retrying every 200 ms until `timeout`.
pub fn connect(address: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(address) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(source) if start.elapsed() >= timeout => {
                return Err(TransportError::Connect {
                    address: address.to_owned(),
                    seconds: timeout.as_secs(),
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Serves one connection until the reader closes it or a fault pulls the card.
pub fn serve<S: Read + Write>(
    stream: &mut S,
    card: &mut VirtualCard,
    address: &str,
) -> Result<SessionEnd, TransportError> {
    let io = |source| TransportError::Io {
        address: address.to_owned(),
        source,
    };
    loop {
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(SessionEnd::ReaderClosed);
            }
            Err(e) => return Err(io(e)),
        }
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut payload).map_err(io)?;
        let reply = match payload.as_slice() {
            [POWER_OFF] | [POWER_ON] | [RESET] => {
                card.power_cycle();
                None
            }
            [GET_ATR] => Some(card.atr().to_vec()),
            [other] => {
                tracing::warn!(code = other, "unknown vpcd control code ignored");
                None
            }
            apdu => match card.process(apdu) {
                CardReply::Response(r) => Some(r),
                CardReply::Disconnect => return Ok(SessionEnd::CardPulled),
            },
        };
        if let Some(reply) = reply {
            let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
            let mut frame = n.to_be_bytes().to_vec();
            frame.extend_from_slice(&reply[..usize::from(n)]);
            stream.write_all(&frame).map_err(io)?;
            stream.flush().map_err(io)?;
        }
    }
}
