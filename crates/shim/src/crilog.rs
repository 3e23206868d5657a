//! Container logs in the CRI format, written by the shim itself (no copy through the daemon):
//! a `cri-log://<path>?max-line=<n>` stdio URI names a file both output streams share, where
//! every line is `<RFC 3339 time, 9 digits> <stdout|stderr> <F|P> <text>`. A line longer than
//! `max-line` is cut into partial (`P`) lines, and so is a last line without a newline, as the
//! kubelet's log reader expects (containerd's CRI writes the same). ReopenContainerLog reaches
//! the shim as a task Update with [`REOPEN_ANNOTATION`]: the file is opened again at its path
//! (the kubelet has just renamed the old one).

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The task Update annotation that asks for the log to be reopened (berth-cri sends it).
pub(crate) const REOPEN_ANNOTATION: &str = "io.berth.cri.reopen-log";

const SCHEME: &str = "cri-log://";
const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// One log file, shared by a process's stdout and stderr.
#[derive(Debug)]
pub(crate) struct CriLog {
    path: PathBuf,
    max_line: usize,
    // std Mutex: one short append per line, never held across an await.
    file: Mutex<std::fs::File>,
}

fn open_append(path: &PathBuf) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl CriLog {
    /// The log a URI names, if it is a `cri-log://` one.
    pub(crate) fn parse(uri: &str) -> Option<(PathBuf, usize)> {
        let rest = uri.strip_prefix(SCHEME)?;
        let (path, query) = match rest.rsplit_once('?') {
            Some((p, q)) if q.starts_with("max-line=") => (p, Some(q)),
            _ => (rest, None),
        };
        let max = query
            .and_then(|q| q.strip_prefix("max-line="))
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_MAX_LINE);
        Some((PathBuf::from(path), max))
    }

    pub(crate) fn open(path: PathBuf, max_line: usize) -> io::Result<Arc<CriLog>> {
        let file = open_append(&path)?;
        Ok(Arc::new(CriLog {
            path,
            max_line,
            file: Mutex::new(file),
        }))
    }

    /// Opens the file again at its path (after the kubelet renamed it away).
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let f = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }

    fn write_line(&self, stream: &str, full: bool, text: &[u8]) -> io::Result<()> {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = berth_runtime::time::rfc3339_fixed(d.as_secs() as i64, d.subsec_nanos());
        let mut line = Vec::with_capacity(ts.len() + text.len() + 12);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        // One write per line: appends of both streams never interleave inside a line.
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&line)
    }
}

/// One stream's writer: keeps the unfinished line until its newline comes.
#[derive(Debug)]
pub(crate) struct CriStream {
    log: Arc<CriLog>,
    stream: &'static str,
    pending: Vec<u8>,
}

impl CriStream {
    pub(crate) fn new(log: Arc<CriLog>, stream: &'static str) -> CriStream {
        CriStream {
            log,
            stream,
            pending: Vec::new(),
        }
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let max = self.log.max_line;
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) if self.pending.len() + i <= max => {
                    if self.pending.is_empty() {
                        self.log.write_line(self.stream, true, &data[..i])?;
                    } else {
                        self.pending.extend_from_slice(&data[..i]);
                        let line = std::mem::take(&mut self.pending);
                        self.log.write_line(self.stream, true, &line)?;
                    }
                    data = &data[i + 1..];
                }
                _ => {
                    // No newline within reach: fill the line up to the limit and cut it.
                    let room = max - self.pending.len();
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == max && data.first().is_none_or(|b| *b != b'\n') {
                        let line = std::mem::take(&mut self.pending);
                        self.log.write_line(self.stream, false, &line)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end of the stream: what is left is a partial line.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.pending);
        self.log.write_line(self.stream, false, &line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &std::path::Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().unwrap().to_string();
                assert_eq!(ts.len(), 30, "fixed 9-digit nanoseconds: {ts}");
                assert!(ts.ends_with('Z'));
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn uri_forms() {
        assert_eq!(
            CriLog::parse("cri-log:///var/log/a.log?max-line=300"),
            Some((PathBuf::from("/var/log/a.log"), 300))
        );
        assert_eq!(
            CriLog::parse("cri-log:///x?y"),
            Some((PathBuf::from("/x?y"), DEFAULT_MAX_LINE))
        );
        assert_eq!(CriLog::parse("file:///x"), None);
    }

    #[test]
    fn full_partial_and_split_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let log = CriLog::open(p.clone(), 8).unwrap();
        let mut out = CriStream::new(log.clone(), "stdout");
        let mut err = CriStream::new(log.clone(), "stderr");
        out.write(b"hel").unwrap();
        err.write(b"oops\n").unwrap();
        out.write(b"lo\nworld\n").unwrap();
        out.write(b"0123456789ab\n").unwrap();
        out.write(b"01234567\n").unwrap();
        out.write(b"tail").unwrap();
        out.finish().unwrap();
        let got = lines(&p);
        let want: Vec<(&str, &str, &str)> = vec![
            ("stderr", "F", "oops"),
            ("stdout", "F", "hello"),
            ("stdout", "F", "world"),
            ("stdout", "P", "01234567"),
            ("stdout", "F", "89ab"),
            ("stdout", "F", "01234567"),
            ("stdout", "P", "tail"),
        ];
        let got: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reopen_follows_a_rename() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let log = CriLog::open(p.clone(), 100).unwrap();
        let mut out = CriStream::new(log.clone(), "stdout");
        out.write(b"before\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        out.write(b"after\n").unwrap();
        assert_eq!(lines(&p)[0].2, "after");
        assert_eq!(lines(&d.path().join("0.log.1"))[0].2, "before");
    }
}
