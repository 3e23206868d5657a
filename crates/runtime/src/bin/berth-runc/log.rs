//! logrus-compatible log lines.

use std::io::Write;
use std::path::PathBuf;

use crate::cli::LogFormat;

#[derive(Debug)]
pub(crate) struct Logger {
    path: Option<PathBuf>,
    format: LogFormat,
}

impl Logger {
    pub(crate) fn new(path: Option<PathBuf>, format: LogFormat, _debug: bool) -> Self {
        Logger { path, format }
    }

    /// A failed command's error, as runc reports it: the log line (logrus text or JSON, as
    /// `--log-format` says) goes to the `--log` file and the bare message to stderr; without
    /// `--log`, the log line goes to stderr (tools match on `level=error msg=...`).
    pub(crate) fn fatal(&self, msg: &str) {
        let time = berth_runtime::time::rfc3339_secs(std::time::SystemTime::now());
        let line = match self.format {
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({"level": "error", "msg": msg, "time": time})
            ),
            LogFormat::Text => format!("time={time:?} level=error msg={msg:?}\n"),
        };
        let Some(p) = &self.path else {
            let _ = std::io::stderr().write_all(line.as_bytes());
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = f.write_all(line.as_bytes());
        }
        eprintln!("{msg}");
    }
}
