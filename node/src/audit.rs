//! The privacy audit's record (`privacy.audit`): what a node's neighbours received of it
//! each round, kept by the node in its state directory as `audit.jsonl`, so that
//! `wdml privacy RUN` can attack it offline as a curious neighbour would.
//!
//! One JSON object a line, one line for each round in which the node sent its message to
//! at least one neighbour ([`Record`]). For an algorithm that sends predictions (`dml`,
//! `fedmd`, `dsfl`) the line holds them as they were handed to the exchange, before
//! encoding; for one that sends parameters (`fedavg`), the logits those parameters give
//! on the round's public batch, which any neighbour can compute. Recorded at the sender:
//! the encoding, a lost frame or an unreachable neighbour only remove information, so the
//! record is an upper bound on what any one neighbour holds.
//!
//! Append-only and bounded: each record is written whole in one write and flushed to
//! disk before the round goes on; a round is recorded once (a restarted node that runs
//! a round again keeps the first record), so the file grows by at most one line a
//! round. A crash mid-write leaves a torn last line: the writer cuts it off when it
//! opens the file again, and [`read`] ignores it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use crate::{Error, Result};

/// The record's file name in the node's state directory.
pub const FILE: &str = "audit.jsonl";

/// The longest line read or kept: a public batch of the whole 60,000-image pool with
/// 256 classes, at most 16 bytes a value, is below it.
const MAX_LINE_BYTES: u64 = 256 << 20;

/// The largest audit file [`read`] reads whole.
const MAX_FILE_BYTES: u64 = 16 << 30;

/// What the round's message was, and so what the record's logits are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sent {
    /// The node's predictions on the public batch: the logits are the message.
    Predictions,
    /// The node's parameters: the logits are what they give on the round's public batch.
    Parameters,
}

/// One round's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The run's random instance (an earlier run in the same state directory has another).
    pub run_instance: String,
    pub node: u32,
    /// 1-based, as in `metrics.jsonl`.
    pub round: u32,
    /// The round's `StartRound.public_seed`: with the run, it names the public batch.
    pub public_seed: u64,
    pub sent: Sent,
    /// Public rows, and classes a row.
    pub rows: u32,
    pub classes: u32,
    /// `rows × classes` logits, row-major, to 6 significant digits.
    #[serde(serialize_with = "six_digits")]
    pub logits: Vec<f32>,
}

/// Each value to 6 significant digits: the record stays a few tens of kilobytes a round
/// (a softmax of them differs from the exact one by about 1e-6), and JSON carries the
/// shortest form of each.
fn six_digits<S: Serializer>(values: &[f32], serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(|v| {
        if v.is_finite() {
            format!("{v:.5e}").parse::<f64>().unwrap_or(f64::from(*v))
        } else {
            f64::from(*v)
        }
    }))
}

/// The node's audit file, open for appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    run_instance: String,
    node: u32,
    /// The last round recorded: a round at or before it is not recorded again.
    last: Option<u32>,
}

impl AuditLog {
    /// Opens (or creates) `dir`'s audit file for node `node` of run instance
    /// `run_instance`. A torn last line is cut off; a file of an earlier run of this
    /// node is started afresh (as its checkpoint would be); another node's is refused.
    pub fn open(dir: &Path, run_instance: &str, node: u32) -> Result<AuditLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::file(&path, e))?;
        let (keep, line) = last_line(&mut file).map_err(|e| Error::file(&path, e))?;
        let bad = |reason: String| Error::Data {
            path: path.clone(),
            reason,
        };
        let last = match line {
            None => None,
            Some(line) => {
                let record: Record = serde_json::from_slice(&line)
                    .map_err(|e| bad(format!("its last line is not an audit record: {e}")))?;
                if record.run_instance != run_instance {
                    tracing::warn!(
                        path = %path.display(),
                        "the audit record is from an earlier run (instance {}); starting afresh",
                        record.run_instance
                    );
                    file.set_len(0).map_err(|e| Error::file(&path, e))?;
                    None
                } else if record.node != node {
                    return Err(bad(format!(
                        "it records node {}, not node {node}; give this node its own --state-dir",
                        record.node
                    )));
                } else {
                    Some(record.round)
                }
            }
        };
        let length = file.metadata().map_err(|e| Error::file(&path, e))?.len();
        if last.is_some() && keep < length {
            tracing::warn!(path = %path.display(), "cutting off a torn last line ({} bytes)", length - keep);
            file.set_len(keep).map_err(|e| Error::file(&path, e))?;
        } else if last.is_none() && length > 0 && keep == 0 {
            // Nothing but a torn first line.
            file.set_len(0).map_err(|e| Error::file(&path, e))?;
        }
        Ok(AuditLog {
            path,
            file,
            run_instance: run_instance.to_string(),
            node,
            last,
        })
    }

    /// Appends round `round`'s (1-based) record, whole, and flushes it to disk; a round
    /// already recorded is left as it was.
    pub fn record(&mut self, round: u32, public_seed: u64, sent: Sent, classes: usize, logits: &[f32]) -> Result<()> {
        if self.last.is_some_and(|last| round <= last) {
            return Ok(());
        }
        if classes == 0 || !logits.len().is_multiple_of(classes) {
            return Err(Error::config(
                "privacy.audit",
                format!("{} logits are not rows of {classes} classes", logits.len()),
            ));
        }
        let record = Record {
            run_instance: self.run_instance.clone(),
            node: self.node,
            round,
            public_seed,
            sent,
            rows: (logits.len() / classes) as u32,
            classes: classes as u32,
            logits: logits.to_vec(),
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| Error::file(&self.path, std::io::Error::other(e)))?;
        line.push(b'\n');
        wdml_files::append_durable(&mut self.file, &line).map_err(|e| Error::file(&self.path, e))?;
        self.last = Some(round);
        Ok(())
    }
}

/// The length of `file` up to and including its last newline, and the complete line
/// before that newline (`None`: no complete line). Reads backwards from the end, only
/// as far as the last two newlines.
fn last_line(file: &mut File) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    const CHUNK: u64 = 64 << 10;
    let length = file.metadata()?.len();
    // The bytes from `from` to the end, read backwards a chunk at a time.
    let mut tail: Vec<u8> = Vec::new();
    let mut from = length;
    let mut end_of_last = None;
    loop {
        // The newline that ends the last complete line, then the one before it.
        if end_of_last.is_none() {
            end_of_last = tail.iter().rposition(|&b| b == b'\n').map(|i| from + i as u64);
        }
        if let Some(end) = end_of_last {
            let before = (end - from) as usize;
            if let Some(start) = tail[..before].iter().rposition(|&b| b == b'\n') {
                return Ok((end + 1, Some(tail[start + 1..before].to_vec())));
            }
            if from == 0 {
                return Ok((end + 1, Some(tail[..before].to_vec())));
            }
        } else if from == 0 {
            return Ok((0, None));
        }
        if length - from > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let step = CHUNK.min(from);
        from -= step;
        let mut chunk = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

/// An audit file as read back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Audit {
    /// One record a round, in the order written.
    pub records: Vec<Record>,
    /// Whether a torn last line (a crash mid-write) was left out.
    pub torn: bool,
}

/// Reads `path`, checking every record's shape; a torn last line is left out (and
/// said), any other line that is not a record is an error naming its line.
pub fn read(path: &Path) -> Result<Audit> {
    let text = wdml_files::read_bounded_text(path, MAX_FILE_BYTES).map_err(|e| Error::file(path, e))?;
    let bad = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let mut audit = Audit::default();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(line) {
            Ok(record) => record,
            // The last line, with no newline after it: written in part.
            Err(_) if i + 1 == lines.len() => {
                audit.torn = true;
                continue;
            }
            Err(e) => return Err(bad(format!("line {}: not an audit record: {e}", i + 1))),
        };
        if record.classes == 0 || record.logits.len() != record.rows as usize * record.classes as usize {
            return Err(bad(format!(
                "line {}: {} logits for {} rows of {} classes",
                i + 1,
                record.logits.len(),
                record.rows,
                record.classes
            )));
        }
        if audit
            .records
            .last()
            .is_some_and(|last: &Record| last.round >= record.round)
        {
            return Err(bad(format!(
                "line {}: round {} after round {}; rounds are recorded once, in order",
                i + 1,
                record.round,
                audit.records.last().map_or(0, |r| r.round)
            )));
        }
        audit.records.push(record);
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wdml-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_go_once_a_round_to_six_digits_and_read_back() {
        let dir = dir("rounds");
        let mut log = AuditLog::open(&dir, "abc", 3).unwrap();
        log.record(1, 11, Sent::Predictions, 2, &[1.0, -2.5, 0.123_456_79, 3e-9])
            .unwrap();
        log.record(2, 12, Sent::Parameters, 2, &[0.5, 0.25]).unwrap();
        // A round run again (a restarted node) keeps its first record.
        log.record(2, 12, Sent::Parameters, 2, &[9.0, 9.0]).unwrap();
        assert!(log.record(3, 13, Sent::Predictions, 3, &[1.0, 2.0]).is_err());
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(text.contains("[1.0,-2.5,0.123457,3e-9]"), "{text}");
        let audit = read(&dir.join(FILE)).unwrap();
        assert!(!audit.torn);
        assert_eq!(audit.records.len(), 2);
        let first = &audit.records[0];
        assert_eq!(
            (first.node, first.round, first.public_seed, first.rows, first.classes),
            (3, 1, 11, 2, 2)
        );
        assert_eq!(audit.records[1].logits, vec![0.5, 0.25]);
        assert_eq!(audit.records[1].sent, Sent::Parameters);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ignored_by_the_reader_and_cut_by_the_writer() {
        let dir = dir("torn");
        let mut log = AuditLog::open(&dir, "abc", 0).unwrap();
        log.record(1, 1, Sent::Predictions, 1, &[0.5]).unwrap();
        drop(log);
        let path = dir.join(FILE);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"run_instance\":\"abc\",\"node\":0,\"rou")
            .unwrap();
        let audit = read(&path).unwrap();
        assert!(audit.torn);
        assert_eq!(audit.records.len(), 1);
        // Reopened after the crash: the torn line goes, round 1 is not written again.
        let mut log = AuditLog::open(&dir, "abc", 0).unwrap();
        log.record(1, 1, Sent::Predictions, 1, &[7.0]).unwrap();
        log.record(2, 2, Sent::Predictions, 1, &[0.25]).unwrap();
        let audit = read(&path).unwrap();
        assert!(!audit.torn);
        assert_eq!(
            audit.records.iter().map(|r| (r.round, r.logits[0])).collect::<Vec<_>>(),
            [(1, 0.5), (2, 0.25)]
        );
        // A line broken in the middle is an error naming it.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_earlier_runs_record_is_replaced_and_another_nodes_refused() {
        let dir = dir("owner");
        let mut log = AuditLog::open(&dir, "old", 1).unwrap();
        log.record(5, 1, Sent::Predictions, 1, &[0.5]).unwrap();
        drop(log);
        let mut log = AuditLog::open(&dir, "new", 1).unwrap();
        log.record(1, 1, Sent::Predictions, 1, &[0.75]).unwrap();
        let audit = read(&dir.join(FILE)).unwrap();
        assert_eq!(audit.records.len(), 1);
        assert_eq!(audit.records[0].run_instance, "new");
        let error = AuditLog::open(&dir, "new", 2).unwrap_err().to_string();
        assert!(error.contains("node 1") && error.contains("--state-dir"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
