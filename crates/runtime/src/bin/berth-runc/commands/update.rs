//! `update`.

use std::io::Read;

use anyhow::{Context, Result, bail};
use berth_runtime::Runtime;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use crate::cli::UpdateArgs;

/// Parses "1024", "100k", "64m", "1g" (binary units, as runc's RAMInBytes); "-1" is unlimited.
fn bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.trim_end_matches('b');
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}");
    }
    Ok((n * mul as f64) as i64)
}

pub(crate) fn update(rt: &Runtime, a: &UpdateArgs) -> Result<u8> {
    let mut r: LinuxResources = match &a.resources {
        Some(p) => {
            let mut buf = Vec::new();
            if p.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut buf)?;
            } else {
                buf = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            }
            serde_json::from_slice(&buf).context("parse resources")?
        }
        None => LinuxResources::default(),
    };
    let mut mem = r.memory().unwrap_or_default();
    let mut mem_set = r.memory().is_some();
    for (v, set) in [
        (
            &a.memory,
            LinuxMemory::set_limit as fn(&mut LinuxMemory, Option<i64>) -> &mut LinuxMemory,
        ),
        (&a.memory_swap, LinuxMemory::set_swap),
        (&a.memory_reservation, LinuxMemory::set_reservation),
    ] {
        if let Some(v) = v {
            set(&mut mem, Some(bytes(v)?));
            mem_set = true;
        }
    }
    if a.kernel_memory.is_some() {
        bail!("kernel memory limits are not supported");
    }
    if mem_set {
        r.set_memory(Some(mem));
    }
    let mut cpu: LinuxCpu = r.cpu().clone().unwrap_or_default();
    let before = cpu.clone();
    if let Some(v) = a.cpu_shares {
        cpu.set_shares(Some(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.set_quota(Some(v));
    }
    if let Some(v) = a.cpu_period {
        cpu.set_period(Some(v));
    }
    if let Some(v) = a.cpu_rt_period {
        cpu.set_realtime_period(Some(v));
    }
    if let Some(v) = a.cpu_rt_runtime {
        cpu.set_realtime_runtime(Some(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
    }
    if cpu != before || r.cpu().is_some() {
        r.set_cpu(Some(cpu));
    }
    if let Some(v) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(v);
        r.set_pids(Some(p));
    }
    if let Some(w) = a.blkio_weight {
        let mut b: LinuxBlockIo = r.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        r.set_block_io(Some(b));
    }
    rt.update(&a.id, &r)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::bytes("64m").unwrap(), 64 << 20);
        assert_eq!(super::bytes("1G").unwrap(), 1 << 30);
        assert_eq!(super::bytes("4096").unwrap(), 4096);
        assert_eq!(super::bytes("-1").unwrap(), -1);
        assert!(super::bytes("-5").is_err());
        assert!(super::bytes("lots").is_err());
    }
}
