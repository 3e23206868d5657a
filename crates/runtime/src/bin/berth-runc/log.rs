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

    pub(crate) fn error(&self, msg: &str) {
        let Some(p) = &self.path else { return };
        let time = now();
        let line = match self.format {
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({"level": "error", "msg": msg, "time": time})
            ),
            LogFormat::Text => format!("time={time:?} level=error msg={msg:?}\n"),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn now() -> String {
    berth_runtime::time::now_rfc3339()
}
