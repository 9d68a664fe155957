//! The person at the desk: progress lines on stdout, the new PIN (typed twice on the terminal
//! without echo, or read from a 0600 file), and yes/no confirmations (on the terminal, or given
//! up front with `--confirm-reset`).
use super::StationError;
use crate::piv::Secret;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;

/// What the station needs from the operator.
pub trait Operator {
    /// A step that is about to happen ("[3] set the management key …").
    fn step(&mut self, text: &str);
    /// A detail line under the current step.
    fn note(&mut self, text: &str);
    /// The person's new PIN (validated: 6–8 characters, not the factory PIN).
    fn new_pin(&mut self) -> Result<Secret, StationError>;
    /// The person's current PIN, typed once (renewal: the new keys sign their proofs).
    fn pin(&mut self) -> Result<Secret, StationError>;
    /// Whether the operator agrees to `question` (something that destroys data).
    fn confirm(&mut self, question: &str) -> Result<bool, StationError>;
}

/// The terminal: stdout for progress, `/dev/tty` for PIN entry and confirmations.
pub struct TerminalOperator {
    pin_file: Option<PathBuf>,
    confirmed_up_front: bool,
    step: usize,
}

impl TerminalOperator {
    pub fn new(pin_file: Option<PathBuf>, confirmed_up_front: bool) -> TerminalOperator {
        TerminalOperator {
            pin_file,
            confirmed_up_front,
            step: 0,
        }
    }
}

impl Operator for TerminalOperator {
    fn step(&mut self, text: &str) {
        self.step += 1;
        println!("[{:>2}] {text}", self.step);
        let _ = std::io::stdout().flush();
    }

    fn note(&mut self, text: &str) {
        println!("     {text}");
        let _ = std::io::stdout().flush();
    }

    fn new_pin(&mut self) -> Result<Secret, StationError> {
        let pin = match &self.pin_file {
            Some(path) => {
                let pin = read_pin_file(path)?;
                self.note(&format!("new PIN read from {}", path.display()));
                pin
            }
            None => {
                let mut tty = Tty::open(
                    "the new PIN",
                    "give --pin-file with a 0600 file holding the PIN",
                )?;
                let first = tty.read_secret("New PIN for the token (6-8 characters): ")?;
                let second = tty.read_secret("The same PIN again: ")?;
                if !first.matches(&second) {
                    return Err(StationError::PinMismatch);
                }
                first
            }
        };
        check_new_pin(&pin)?;
        Ok(pin)
    }

    fn pin(&mut self) -> Result<Secret, StationError> {
        let pin = match &self.pin_file {
            Some(path) => {
                let pin = read_pin_file(path)?;
                self.note(&format!("PIN read from {}", path.display()));
                pin
            }
            None => Tty::open(
                "the person's PIN",
                "give --pin-file with a 0600 file holding the PIN",
            )?
            .read_secret("The person's PIN (the token's, not shown): ")?,
        };
        if !(6..=8).contains(&pin.expose().len()) {
            return Err(StationError::CurrentPinLength);
        }
        Ok(pin)
    }

    fn confirm(&mut self, question: &str) -> Result<bool, StationError> {
        if self.confirmed_up_front {
            self.note(&format!("{question} yes (--confirm-reset)"));
            return Ok(true);
        }
        let mut tty = Tty::open("a confirmation", "pass --confirm-reset to confirm up front")?;
        let answer = tty.read_line(&format!("{question} [y/N] "))?;
        Ok(matches!(
            answer.trim().to_ascii_lowercase().as_str(),
            "y" | "yes"
        ))
    }
}

/// The PIN in a file: the first line, which only the owner may read.
pub fn read_pin_file(path: &std::path::Path) -> Result<Secret, StationError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read_error = |source| StationError::ReadFile {
        what: "PIN file",
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StationError::PinFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(read_error)?);
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Secret::new(line.to_vec()))
}

/// A new PIN must fit the PIV rules (6–8 characters) and must not be the factory PIN.
pub fn check_new_pin(pin: &Secret) -> Result<(), StationError> {
    if !(6..=8).contains(&pin.expose().len()) {
        return Err(StationError::PinLength);
    }
    if pin.matches(&Secret::new(b"123456".to_vec())) {
        return Err(StationError::PinIsFactoryDefault);
    }
    Ok(())
}

/// The controlling terminal, for questions that must not come from a pipe.
struct Tty {
    file: std::fs::File,
}

impl Tty {
    fn open(what: &'static str, instead: &'static str) -> Result<Tty, StationError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map(|file| Tty { file })
            .map_err(|_| StationError::NoTerminal { what, instead })
    }

    fn read_line(&mut self, prompt: &str) -> Result<String, StationError> {
        self.file
            .write_all(prompt.as_bytes())
            .map_err(StationError::Terminal)?;
        let mut line = String::new();
        std::io::BufReader::new(&self.file)
            .read_line(&mut line)
            .map_err(StationError::Terminal)?;
        Ok(line)
    }

    /// Reads a line with echo off; the terminal's echo comes back even when reading fails.
    /// Echo goes off (dropping anything typed ahead) before the prompt appears, so nothing
    /// typed after the prompt is ever echoed.
    fn read_secret(&mut self, prompt: &str) -> Result<Secret, StationError> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(&self.file).map_err(|e| StationError::Terminal(e.into()))?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&self.file, OptionalActions::Flush, &quiet)
            .map_err(|e| StationError::Terminal(e.into()))?;
        let mut line = zeroize::Zeroizing::new(String::new());
        let read = self
            .file
            .write_all(prompt.as_bytes())
            .and_then(|()| std::io::BufReader::new(&self.file).read_line(&mut line));
        let restored = tcsetattr(&self.file, OptionalActions::Now, &saved);
        let _ = self.file.write_all(b"\n");
        read.map_err(StationError::Terminal)?;
        restored.map_err(|e| StationError::Terminal(e.into()))?;
        let trimmed = line.trim_end_matches(['\n', '\r']);
        Ok(Secret::new(trimmed.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn pin_file_must_be_private_and_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "24681357\r\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_pin_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the PIN file {0} can be read by other users (mode 644); run `chmod 600 {0}`",
                path.display()
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            read_pin_file(&path)
                .unwrap()
                .matches(&Secret::new(b"24681357".to_vec()))
        );
    }

    #[test]
    fn new_pins_are_checked() {
        assert_eq!(
            check_new_pin(&Secret::new(b"12345".to_vec()))
                .unwrap_err()
                .to_string(),
            "the new PIN must be 6 to 8 characters"
        );
        assert_eq!(
            check_new_pin(&Secret::new(b"123456".to_vec()))
                .unwrap_err()
                .to_string(),
            "the new PIN must not be the factory PIN 123456"
        );
        check_new_pin(&Secret::new(b"24681357".to_vec())).unwrap();
    }
}
