//! `events`: stats as runc prints them (`{"type":"stats","id":...,"data":{...}}`).

use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use anyhow::{Context, Result, bail};
use berth_runtime::{Runtime, RuntimeError};

fn duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}"),
    };
    if secs <= 0.0 {
        bail!("duration must be greater than 0");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn event(rt: &Runtime, id: &str) -> Result<String, RuntimeError> {
    let s = rt.stats(id)?;
    Ok(serde_json::json!({"type": "stats", "id": id, "data": s}).to_string())
}

pub(crate) fn events(rt: &Runtime, id: &str, stats: bool, interval: &str) -> Result<u8> {
    let every = duration(interval)?;
    if stats {
        super::out(&event(rt, id)?)?;
        return Ok(0);
    }
    // OOM kills are reported as they happen, stats every interval (runc's stream).
    let mut oom = rt.oom_watch(id)?;
    loop {
        match event(rt, id) {
            Ok(line) => super::out(&line)?,
            Err(RuntimeError::NotRunning | RuntimeError::NotExist) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        let deadline = std::time::Instant::now() + every;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Some(watch) = &mut oom else {
                std::thread::sleep(left);
                break;
            };
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(watch.fd(), PollFlags::POLLIN)];
            if matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
                for _ in 0..watch.kills() {
                    super::out(&serde_json::json!({"type": "oom", "id": id}).to_string())?;
                }
            }
        }
    }
}
