//! The checkpoint file: every signed checkpoint is also appended to a file outside the
//! database, one self-contained JSON line each (`{"sequence":…,"event_hash":…,"at":…,
//! "key_id":…,"signature":…}`, hashes and signature in lower-case hex). The file is opened with
//! `O_APPEND` and never rewritten; the HTTP side serves it at `GET /audit/checkpoints` so that
//! a monitor keeps its own copy, and `tessera audit verify --checkpoints FILE` checks the chain
//! against it ([`super::verify_with_file`]).
use super::AuditError;
use crate::store::{CheckpointRow, Timestamp};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One line of the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointLine {
    /// The sequence of the event the checkpoint covers (the chain head when it was signed).
    pub sequence: i64,
    /// That event's hash, hex.
    pub event_hash: String,
    /// When it was signed (not covered by the signature).
    pub at: String,
    /// The signing key (its `pkcs11:` URI; not covered by the signature).
    pub key_id: String,
    /// ECDSA P-256 / SHA-256 signature (DER, hex) over [`super::checkpoint_message`].
    pub signature: String,
}

impl CheckpointLine {
    pub fn of(row: &CheckpointRow) -> CheckpointLine {
        CheckpointLine {
            sequence: row.sequence,
            event_hash: hex::encode(&row.head_hash),
            at: row.at.to_string(),
            key_id: row.key_id.clone(),
            signature: hex::encode(&row.signature),
        }
    }

    fn to_row(&self) -> Result<CheckpointRow, String> {
        let hash = hex::decode(&self.event_hash)
            .ok()
            .filter(|h| h.len() == 32)
            .ok_or("event_hash is not 64 hex digits")?;
        let signature = hex::decode(&self.signature).map_err(|_| "signature is not hex")?;
        let at =
            Timestamp::parse(&self.at).map_err(|_| format!("at {:?} is not a time", self.at))?;
        if self.sequence < 1 {
            return Err(format!("sequence {} is not positive", self.sequence));
        }
        Ok(CheckpointRow {
            sequence: self.sequence,
            head_hash: hash,
            key_id: self.key_id.clone(),
            signature,
            at,
        })
    }
}

/// The checkpoint file, open for appending (created when missing, mode 0640).
pub struct CheckpointFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl CheckpointFile {
    pub fn open(path: &Path) -> Result<CheckpointFile, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| AuditError::CheckpointFileWrite {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(CheckpointFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `row` as one line (one `write` of the whole line, then synced to disk).
    pub fn append(&self, row: &CheckpointRow) -> Result<(), AuditError> {
        let mut line =
            serde_json::to_string(&CheckpointLine::of(row)).expect("a checkpoint line serialises");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| AuditError::CheckpointFileWrite {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }
}

/// Every checkpoint in the file at `path`, in file order; a line that is not a checkpoint is
/// an error naming its line number (blank lines are skipped).
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<CheckpointRow>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditError::CheckpointFileRead {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_checkpoint_lines(path, &text)
}

/// The checkpoints in `text` (the file's content; `path` names it in errors).
pub fn parse_checkpoint_lines(path: &Path, text: &str) -> Result<Vec<CheckpointRow>, AuditError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| AuditError::CheckpointFileLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let parsed: CheckpointLine =
            serde_json::from_str(line).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        rows.push(parsed.to_row().map_err(bad)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> CheckpointRow {
        CheckpointRow {
            sequence: 7,
            head_hash: vec![0xab; 32],
            key_id: "pkcs11:object=k".into(),
            signature: vec![1, 2, 3],
            at: Timestamp::parse("2026-01-02T03:04:05Z").unwrap(),
        }
    }

    #[test]
    fn a_line_reads_back_as_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let file = CheckpointFile::open(&path).unwrap();
        file.append(&row()).unwrap();
        file.append(&row()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with("{\"sequence\":7,\"event_hash\":\"abab"),
            "{text}"
        );
        assert_eq!(read_checkpoint_file(&path).unwrap(), vec![row(), row()]);
    }

    #[test]
    fn bad_lines_are_named() {
        let path = Path::new("c.jsonl");
        let err = |text: &str| parse_checkpoint_lines(path, text).unwrap_err().to_string();
        let good = serde_json::to_string(&CheckpointLine::of(&row())).unwrap();
        assert_eq!(
            err(&format!("{good}\n\nnot json\n")),
            "checkpoint file c.jsonl, line 3: not a checkpoint: expected ident at line 1 column 2"
        );
        assert_eq!(
            err(&good.replace("\"abab", "\"zz")),
            "checkpoint file c.jsonl, line 1: event_hash is not 64 hex digits"
        );
        assert_eq!(
            err(&good.replace("\"010203\"", "\"x\"")),
            "checkpoint file c.jsonl, line 1: signature is not hex"
        );
    }
}
