//! The coordinator's durable record of the run: `journal.jsonl` in the run directory,
//! one JSON entry per line, appended and flushed to disk (fsync) before the change it
//! records is acted on. A coordinator restarted with the same run directory replays it
//! and resumes at the next round; `metrics.jsonl` is rebuilt from it, so a crash between
//! the two files never loses or repeats a row.
//!
//! A crash can leave a torn last line (a write that never completed, hence was never
//! acted on): [`Journal::open`] cuts it off. Any other unreadable line is corruption,
//! and an error naming the file and line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wdml_files::{append_durable, sync_dir};

use crate::members::MembershipEvent;
use crate::report::MetricsRow;
use crate::{Error, Result};

/// The journal's file name in the run directory.
pub const FILE: &str = "journal.jsonl";

/// The longest line the journal may hold (a round of thousands of nodes fits).
const MAX_LINE: u64 = 64 << 20;

/// One record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// The run began: its id and the resolved scenario.
    Start {
        run_id: String,
        /// Random, this run's alone (see `RunSettings.run_instance`).
        #[serde(default)]
        instance: String,
        config: serde_json::Value,
        at_ms: u64,
    },
    /// A membership change, with what the summary needs of the member.
    Member {
        event: MembershipEvent,
        model: String,
        parameters: u64,
        at_ms: u64,
    },
    /// A closed round (numbered from 1, as in every record): who was sent it, and every
    /// report that came in time.
    Round {
        round: u32,
        round_ms: f64,
        sent: Vec<u32>,
        rows: Vec<MetricsRow>,
        at_ms: u64,
    },
    /// The coordinator came back after a crash.
    Resume {
        /// The last round closed before the outage (none: it happened before round 0 closed).
        after_round: Option<u32>,
        /// Seconds from the last record before the crash to the restart.
        down_s: f64,
        at_ms: u64,
    },
    /// The run ended.
    End { finished: bool, reason: String, at_ms: u64 },
}

impl Entry {
    pub fn at_ms(&self) -> u64 {
        match self {
            Entry::Start { at_ms, .. }
            | Entry::Member { at_ms, .. }
            | Entry::Round { at_ms, .. }
            | Entry::Resume { at_ms, .. }
            | Entry::End { at_ms, .. } => *at_ms,
        }
    }
}

/// Milliseconds since the Unix epoch, for the record. The one wall clock the coordinator
/// reads: a timestamp written to a file must be the calendar's; every deadline and
/// duration is measured on tokio's clock instead (`tokio::time::Instant`).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The append end of `journal.jsonl`.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts a new journal in `dir` (there must be none).
    pub fn create(dir: &Path) -> Result<Journal> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Journal { file, path })
    }

    /// Opens the journal in `dir` for appending, after reading every entry; a torn last
    /// line is cut off first.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<Entry>)> {
        let path = dir.join(FILE);
        let (entries, intact) = read(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let length = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if intact < length {
            tracing::warn!(
                path = %path.display(),
                bytes = length - intact,
                "cutting off a torn last journal line (a record the crash interrupted)"
            );
            file.set_len(intact).map_err(|e| Error::io(&path, e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        Ok((Journal { file, path }, entries))
    }

    /// Appends `entry` and waits until it is on disk.
    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends `entries` with one write and one fsync (group commit): what arrived
    /// together is made durable together, so a burst of events costs one fsync.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut lines, entry)?;
            lines.push(b'\n');
        }
        append_durable(&mut self.file, &lines).map_err(|e| Error::io(&self.path, e))
    }
}

/// Whether `entries` record a finished run (an `End` that says so); an interrupted run's
/// journal does not.
pub(crate) fn finished(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(e, Entry::End { finished: true, .. }))
}

/// Every entry of the journal at `path`, and the length of its intact part (up to the
/// end of the last complete, readable line).
pub(crate) fn read(path: &Path) -> Result<(Vec<Entry>, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let (mut entries, mut intact, mut number) = (Vec::new(), 0u64, 0usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        number += 1;
        let read = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        if line.len() as u64 > MAX_LINE {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("line {number} is longer than {MAX_LINE} bytes"),
            });
        }
        let complete = line.last() == Some(&b'\n');
        match serde_json::from_slice::<Entry>(&line) {
            Ok(entry) if complete => {
                entries.push(entry);
                intact += read as u64;
            }
            // The last line, never finished: the crash came mid-write.
            _ if !complete => break,
            Ok(_) => unreachable!("complete is true here"),
            Err(e) => {
                // A complete line that does not parse is corruption unless it is the
                // last one (a torn write can end in a newline of the next record's).
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).map_err(|e| Error::io(path, e))?;
                if rest.iter().all(|b| b.is_ascii_whitespace()) {
                    break;
                }
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("line {number}: {e}"),
                });
            }
        }
    }
    Ok((entries, intact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wdml-journal-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn end(reason: &str) -> Entry {
        Entry::End {
            finished: true,
            reason: reason.into(),
            at_ms: 1,
        }
    }

    #[test]
    fn entries_come_back_and_a_torn_tail_is_cut() {
        let dir = dir("torn");
        let mut journal = Journal::create(&dir).unwrap();
        journal.append(&end("a")).unwrap();
        journal.append(&end("b")).unwrap();
        drop(journal);
        assert!(Journal::create(&dir).is_err(), "a journal is never started twice");
        // A crash in the middle of the third record.
        let mut file = OpenOptions::new().append(true).open(dir.join(FILE)).unwrap();
        file.write_all(br#"{"kind":"end","finis"#).unwrap();
        drop(file);
        let (mut journal, entries) = Journal::open(&dir).unwrap();
        assert_eq!(entries, [end("a"), end("b")]);
        journal.append(&end("c")).unwrap();
        let (_, entries) = Journal::open(&dir).unwrap();
        assert_eq!(entries, [end("a"), end("b"), end("c")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corruption_in_the_middle_names_the_line() {
        let dir = dir("corrupt");
        let mut journal = Journal::create(&dir).unwrap();
        journal.append(&end("a")).unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(dir.join(FILE)).unwrap();
        file.write_all(b"not json\n").unwrap();
        file.write_all(&serde_json::to_vec(&end("b")).unwrap()).unwrap();
        file.write_all(b"\n").unwrap();
        drop(file);
        let error = Journal::open(&dir).err().unwrap().to_string();
        assert!(error.contains("journal.jsonl") && error.contains("line 2"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
