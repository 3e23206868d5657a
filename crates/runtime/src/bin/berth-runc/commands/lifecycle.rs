//! `start`, `kill`, `delete`, `pause`, `resume`: thin calls into the library.

use anyhow::Result;
use berth_runtime::{Runtime, parse_signal};

pub(crate) fn start(rt: &Runtime, id: &str) -> Result<u8> {
    rt.start(id)?;
    Ok(0)
}

pub(crate) fn kill(rt: &Runtime, id: &str, signal: &str, all: bool) -> Result<u8> {
    rt.kill(id, parse_signal(signal)?, all)?;
    Ok(0)
}

pub(crate) fn delete(rt: &Runtime, id: &str, force: bool) -> Result<u8> {
    rt.delete(id, force)?;
    Ok(0)
}

pub(crate) fn pause(rt: &Runtime, id: &str) -> Result<u8> {
    rt.pause(id)?;
    Ok(0)
}

pub(crate) fn resume(rt: &Runtime, id: &str) -> Result<u8> {
    rt.resume(id)?;
    Ok(0)
}
