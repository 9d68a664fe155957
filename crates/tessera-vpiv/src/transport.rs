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
        "no vpcd reader answered at {address} within {seconds:.1} s: {reason}; is pcscd with the vpcd driver running (scripts/with-pcscd.sh)?"
    )]
    Connect {
        address: String,
        seconds: f64,
        reason: std::io::Error,
    },
    #[error("connection to vpcd at {address} failed: {reason}")]
    Io {
        address: String,
        reason: std::io::Error,
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
            Err(reason) if start.elapsed() >= timeout => {
                return Err(TransportError::Connect {
                    address: address.to_owned(),
                    seconds: timeout.as_secs_f64(),
                    reason,
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
    let io = |reason| TransportError::Io {
        address: address.to_owned(),
        reason,
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
            [code @ (POWER_OFF | POWER_ON | RESET)] => {
                tracing::debug!(code, "vpcd: power off (0) / on (1) / reset (2)");
                card.power_cycle();
                None
            }
            [GET_ATR] => {
                tracing::trace!("vpcd: ATR requested");
                Some(card.atr().to_vec())
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::{DeviceFacts, TestRoot};
    use crate::{CardState, FaultPlan};

    /// A byte pipe standing in for the socket: what pcscd sends, and what the card wrote.
    struct Wire {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        payloads
            .iter()
            .flat_map(|p| [&(p.len() as u16).to_be_bytes()[..], p].concat())
            .collect()
    }

    fn card(faults: FaultPlan) -> VirtualCard {
        let facts = DeviceFacts {
            firmware: [5, 4, 3],
            serial: 1,
            form_factor: 1,
            fips: false,
            cspn: false,
        };
        let state = CardState::factory(facts, &TestRoot::generate().unwrap()).unwrap();
        VirtualCard::new(state, None, faults)
    }

    #[test]
    fn answers_atr_and_apdus_and_stays_silent_on_power_codes() {
        let mut card = card(FaultPlan::default());
        let mut wire = Wire {
            input: std::io::Cursor::new(frames(&[&[1], &[4], &[0, 0xFD, 0, 0, 0], &[2], &[0]])),
            output: Vec::new(),
        };
        assert_eq!(
            serve(&mut wire, &mut card, "test").unwrap(),
            SessionEnd::ReaderClosed
        );
        let atr = crate::card::YUBIKEY5_ATR;
        let expected = frames(&[&atr, &[5, 4, 3, 0x90, 0x00]]);
        assert_eq!(wire.output, expected);
    }

    #[test]
    fn a_disconnect_fault_ends_the_session_without_answering() {
        let mut card = card(FaultPlan {
            disconnect_after: Some(1),
            ..FaultPlan::default()
        });
        let mut wire = Wire {
            input: std::io::Cursor::new(frames(&[&[0, 0xFD, 0, 0], &[0, 0xFD, 0, 0]])),
            output: Vec::new(),
        };
        assert_eq!(
            serve(&mut wire, &mut card, "test").unwrap(),
            SessionEnd::CardPulled
        );
        assert_eq!(wire.output, frames(&[&[5, 4, 3, 0x90, 0x00]]));
    }

    #[test]
    fn a_frame_cut_short_is_an_io_error_naming_the_address() {
        let mut card = card(FaultPlan::default());
        let mut wire = Wire {
            input: std::io::Cursor::new(vec![0, 5, 0, 0xFD]),
            output: Vec::new(),
        };
        let err = serve(&mut wire, &mut card, "127.0.0.1:35963")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "connection to vpcd at 127.0.0.1:35963 failed: failed to fill whole buffer"
        );
    }

    #[test]
    fn connect_gives_up_after_the_timeout_naming_the_address() {
        // a port nobody listens on: bind, learn the port, close
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let err = connect(&address, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "no vpcd reader answered at {address} within 0.3 s: "
            )),
            "{err}"
        );
        assert!(
            err.ends_with("is pcscd with the vpcd driver running (scripts/with-pcscd.sh)?"),
            "{err}"
        );
    }
}
