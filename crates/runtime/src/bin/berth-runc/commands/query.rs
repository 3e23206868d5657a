//! `state`, `list`, `ps`.

use std::io::Write;

use anyhow::{Context, Result};
use berth_runtime::Runtime;

use crate::cli::Format;

pub(crate) fn state(rt: &Runtime, id: &str) -> Result<u8> {
    let s = rt.state(id)?;
    super::out(&serde_json::to_string_pretty(&s)?)?;
    Ok(0)
}

pub(crate) fn list(rt: &Runtime, format: Format, quiet: bool) -> Result<u8> {
    let all = rt.list()?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &all {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(0);
    }
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&all)?)?,
        Format::Table => {
            writeln!(
                out,
                "{:<12}{:<10}{:<10}{:<40}{:<32}OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &all {
                writeln!(
                    out,
                    "{:<12}{:<10}{:<10}{:<40}{:<32}{}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    if s.owner.is_empty() { "root" } else { &s.owner }
                )?;
            }
        }
    }
    Ok(0)
}

pub(crate) fn ps(rt: &Runtime, id: &str, format: Format, ps_args: &[String]) -> Result<u8> {
    let pids = rt.ps(id)?;
    match format {
        Format::Json => super::out(&serde_json::to_string(&pids)?)?,
        Format::Table => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("no PID column in ps output")?;
            super::out(header)?;
            for l in lines {
                if l.split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|p| pids.contains(&p))
                {
                    super::out(l)?;
                }
            }
        }
    }
    Ok(0)
}
