//! cgroup v2: one directory, controllers enabled through the ancestors' `cgroup.subtree_control`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::stats::{HugetlbStats, MemoryEntry, Stats, parse_io_stat_v2};
use super::{
    CgResult, Cgroup, CgroupError, CgroupPaths, FreezerState, check_page_size, device_rules,
    flat_keyed, read, read_u64, remove_dir, write,
};

/// A v2 cgroup directory.
#[derive(Debug, Clone)]
pub struct V2Cgroup {
    path: PathBuf,
}

/// runc's conversion of v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// runc's conversion of v1 blkio weight (10..1000) to v2 `io.weight` (1..10000).
pub(crate) fn blkio_to_io_weight(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990
}

fn limit_str(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

impl V2Cgroup {
    /// The cgroup at this directory.
    pub fn new(path: PathBuf) -> Self {
        V2Cgroup { path }
    }

    /// Enables every controller it may in `cgroup.subtree_control` of each ancestor, from the
    /// cgroup2 mount's root down (creating the ancestors that do not exist yet), as runc does.
    fn enable_controllers(&self) -> CgResult<()> {
        let is_cgroup = |d: &std::path::Path| d.join("cgroup.controllers").exists();
        let mut chain = Vec::new();
        let mut cur = self.path.parent();
        let mut found_root = false;
        while let Some(d) = cur {
            chain.push(d.to_path_buf());
            // The mount's root: a cgroup whose parent is none.
            if is_cgroup(d) && !d.parent().is_some_and(is_cgroup) {
                found_root = true;
                break;
            }
            cur = d.parent();
        }
        if !found_root {
            return Ok(());
        }
        chain.reverse();
        for dir in chain {
            std::fs::create_dir_all(&dir).map_err(super::io_err("create", &dir))?;
            let avail = read(&dir, "cgroup.controllers")?;
            let enabled = read(&dir, "cgroup.subtree_control")?;
            let want: Vec<String> = avail
                .split_whitespace()
                .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                // Controllers the kernel will not delegate here are not fatal (runc ignores them
                // too); the limits that need them fail later with a clear error.
                let _ = write(&dir, "cgroup.subtree_control", &want.join(" "));
            }
        }
        Ok(())
    }

    fn set_memory(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(m) = r.memory() else { return Ok(()) };
        let dir = &self.path;
        if let Some(v) = m.limit() {
            if v < -1 {
                return Err(CgroupError::Invalid("memory limit", v.to_string()));
            }
            write(dir, "memory.max", &limit_str(v))?;
        }
        if let Some(s) = m.swap() {
            // The spec's swap is memory+swap (v1 semantics); v2 wants swap alone.
            let v = match (s, m.limit()) {
                (-1, _) | (_, None | Some(-1)) => limit_str(s),
                (s, Some(l)) if s >= l => (s - l).to_string(),
                (s, Some(l)) => {
                    return Err(CgroupError::Invalid(
                        "memory swap",
                        format!("swap {s} below limit {l}"),
                    ));
                }
            };
            write(dir, "memory.swap.max", &v)?;
        }
        if let Some(v) = m.reservation() {
            write(dir, "memory.low", &limit_str(v))?;
        }
        if m.swappiness().is_some() || m.kernel_tcp().is_some() {
            return Err(CgroupError::Unsupported(
                "memory",
                "swappiness and kernelTCP do not exist in cgroup v2".into(),
            ));
        }
        Ok(())
    }

    fn set_cpu(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(c) = r.cpu() else { return Ok(()) };
        let dir = &self.path;
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let period = c.period().filter(|p| *p != 0).unwrap_or(100_000);
            write(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(b) = c.burst() {
            write(dir, "cpu.max.burst", &b.to_string())?;
        }
        if let Some(i) = c.idle() {
            write(dir, "cpu.idle", &i.to_string())?;
        }
        for (val, file) in [(c.cpus(), "cpuset.cpus"), (c.mems(), "cpuset.mems")] {
            if let Some(v) = val.as_deref().filter(|v| !v.is_empty()) {
                write(dir, file, v)?;
            }
        }
        Ok(())
    }

    fn set_io(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(b) = r.block_io() else { return Ok(()) };
        let dir = &self.path;
        // A weight of 0 means "not set" (runc skips it too).
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            write(
                dir,
                "io.weight",
                &format!("default {}", blkio_to_io_weight(w)),
            )?;
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight().filter(|&w| w != 0) {
                write(
                    dir,
                    "io.weight",
                    &format!("{}:{} {}", d.major(), d.minor(), blkio_to_io_weight(w)),
                )?;
            }
        }
        let throttles = [
            (b.throttle_read_bps_device(), "rbps"),
            (b.throttle_write_bps_device(), "wbps"),
            (b.throttle_read_iops_device(), "riops"),
            (b.throttle_write_iops_device(), "wiops"),
        ];
        for (list, key) in throttles {
            for d in list.iter().flatten() {
                write(
                    dir,
                    "io.max",
                    &format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                )?;
            }
        }
        Ok(())
    }
}

impl Cgroup for V2Cgroup {
    fn create(&self) -> CgResult<()> {
        self.enable_controllers()?;
        std::fs::create_dir_all(&self.path).map_err(super::io_err("create", &self.path))
    }

    fn join(&self, pid: i32) -> CgResult<()> {
        write(&self.path, "cgroup.procs", &pid.to_string())
    }

    fn set(&self, r: &LinuxResources) -> CgResult<()> {
        self.set_memory(r)?;
        self.set_cpu(r)?;
        self.set_io(r)?;
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(&self.path, "pids.max", &v)?;
        }
        for h in r.hugepage_limits().iter().flatten() {
            check_page_size(h.page_size())?;
            write(
                &self.path,
                &format!("hugetlb.{}.max", h.page_size()),
                &limit_str(h.limit()),
            )?;
        }
        for (k, v) in r.unified().iter().flatten() {
            if k.contains('/') || k.starts_with('.') || k.starts_with("cgroup.") {
                return Err(CgroupError::Invalid("unified key", k.clone()));
            }
            write(&self.path, k, v)?;
        }
        if let Some(devs) = r.devices() {
            let rules = device_rules(devs)?;
            super::devices::attach_v2(&self.path, &rules)?;
        }
        Ok(())
    }

    fn freeze(&self, state: FreezerState) -> CgResult<()> {
        let want = match state {
            FreezerState::Frozen => "1",
            FreezerState::Thawed => "0",
        };
        write(&self.path, "cgroup.freeze", want)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = flat_keyed(&read(&self.path, "cgroup.events")?);
            if events.get("frozen").map(u64::to_string).as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = write(&self.path, "cgroup.freeze", "0");
                return Err(CgroupError::FreezeTimeout(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn freezer_state(&self) -> CgResult<FreezerState> {
        match read(&self.path, "cgroup.freeze") {
            Ok(s) if s == "1" => Ok(FreezerState::Frozen),
            Ok(_) => Ok(FreezerState::Thawed),
            Err(CgroupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(FreezerState::Thawed)
            }
            Err(e) => Err(e),
        }
    }

    fn pids(&self) -> CgResult<Vec<i32>> {
        let text = read(&self.path, "cgroup.procs")?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn stats(&self) -> CgResult<Stats> {
        let dir = &self.path;
        let mut s = Stats::default();
        let opt = |f: &str| -> Option<String> { read(dir, f).ok() };
        if let Some(cpu) = opt("cpu.stat") {
            let st = flat_keyed(&cpu);
            let us = |k: &str| st.get(k).copied().unwrap_or(0) * 1000;
            s.cpu.usage.total = us("usage_usec");
            s.cpu.usage.user = us("user_usec");
            s.cpu.usage.kernel = us("system_usec");
            s.cpu.throttling.periods = st.get("nr_periods").copied().unwrap_or(0);
            s.cpu.throttling.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.cpu.throttling.throttled_time = us("throttled_usec");
        }
        if dir.join("memory.current").exists() {
            s.memory.usage = MemoryEntry {
                usage: read_u64(dir, "memory.current")?,
                limit: read_u64(dir, "memory.max")?,
                max: opt("memory.peak").and_then(|v| v.parse().ok()).unwrap_or(0),
                failcnt: flat_keyed(&opt("memory.events").unwrap_or_default())
                    .get("max")
                    .copied()
                    .unwrap_or(0),
            };
            if dir.join("memory.swap.current").exists() {
                s.memory.swap = MemoryEntry {
                    usage: read_u64(dir, "memory.swap.current")?,
                    limit: read_u64(dir, "memory.swap.max")?,
                    ..Default::default()
                };
            }
            s.memory.raw = flat_keyed(&opt("memory.stat").unwrap_or_default());
            s.memory.cache = s.memory.raw.get("file").copied().unwrap_or(0);
        }
        if dir.join("pids.current").exists() {
            s.pids.current = read_u64(dir, "pids.current")?;
            let max = read_u64(dir, "pids.max")?;
            s.pids.limit = if max == u64::MAX { 0 } else { max };
        }
        if let Some(io) = opt("io.stat") {
            s.blkio = parse_io_stat_v2(&io);
        }
        for size in super::v1::hugepage_sizes() {
            if let Ok(usage) = read_u64(dir, &format!("hugetlb.{size}.current")) {
                let events =
                    flat_keyed(&opt(&format!("hugetlb.{size}.events")).unwrap_or_default());
                s.hugetlb.insert(
                    size,
                    HugetlbStats {
                        usage,
                        max: 0,
                        failcnt: events.get("max").copied().unwrap_or(0),
                    },
                );
            }
        }
        Ok(s)
    }

    fn destroy(&self) -> CgResult<()> {
        if self.path.join("cgroup.kill").exists() {
            let _ = write(&self.path, "cgroup.kill", "1");
        }
        remove_dir(&self.path)
    }

    fn paths(&self) -> CgroupPaths {
        CgroupPaths::V2 {
            path: self.path.clone(),
        }
    }
}

/// Fixture trees for tests: a fake v2 hierarchy in a temp dir.
#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::path::Path;

    fn touch(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (f, v) in files {
            std::fs::write(dir.join(f), v).unwrap();
        }
    }

    fn fixture() -> (tempfile::TempDir, V2Cgroup) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        touch(
            root,
            &[
                ("cgroup.controllers", "cpu io memory pids"),
                ("cgroup.subtree_control", ""),
            ],
        );
        let c = root.join("c1");
        touch(
            &c,
            &[
                ("cgroup.procs", ""),
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("memory.low", "0"),
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("pids.max", "max"),
                ("cgroup.freeze", "0"),
                ("cgroup.events", "populated 1\nfrozen 0\n"),
                ("memory.current", "4096"),
                ("memory.stat", "anon 100\nfile 200\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\n"),
                ("pids.current", "2"),
                (
                    "cpu.stat",
                    "usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 1\nnr_throttled 0\nthrottled_usec 0\n",
                ),
                (
                    "io.stat",
                    "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
                ),
            ],
        );
        (t, V2Cgroup::new(c))
    }

    #[test]
    fn set_writes_v2_files() {
        let (t, cg) = fixture();
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1 << 20)
                    .swap(3 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap();
        cg.set(&res).unwrap();
        let r = |f: &str| std::fs::read_to_string(t.path().join("c1").join(f)).unwrap();
        assert_eq!(r("memory.max"), "1048576");
        assert_eq!(r("memory.swap.max"), (2 << 20).to_string());
        assert_eq!(r("cpu.weight"), "39");
        assert_eq!(r("cpu.max"), "50000 100000");
        assert_eq!(r("pids.max"), "10");
        cg.apply(4242).unwrap();
        assert_eq!(r("cgroup.procs"), "4242");
        assert_eq!(
            std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +io +memory +pids"
        );
    }

    #[test]
    fn bad_values_rejected() {
        let (_t, cg) = fixture();
        let res = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-5).build().unwrap())
            .build()
            .unwrap();
        assert!(matches!(cg.set(&res), Err(CgroupError::Invalid(..))));
        let mut u = std::collections::HashMap::new();
        u.insert("../../etc/passwd".to_string(), "x".to_string());
        let res = LinuxResourcesBuilder::default().unified(u).build().unwrap();
        assert!(matches!(cg.set(&res), Err(CgroupError::Invalid(..))));
    }

    #[test]
    fn stats_and_freezer() {
        let (t, cg) = fixture();
        let s = cg.stats().unwrap();
        assert_eq!(s.memory.usage.usage, 4096);
        assert_eq!(s.memory.usage.failcnt, 3);
        assert_eq!(s.memory.cache, 200);
        assert_eq!(s.pids.current, 2);
        assert_eq!(s.cpu.usage.total, 10_000);
        assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
        assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
        // The fake kernel reports "frozen 1" once we have "written" it.
        std::fs::write(t.path().join("c1/cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze(FreezerState::Frozen).unwrap();
        assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    }

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }
}
