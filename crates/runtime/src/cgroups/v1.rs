//! cgroup v1: one directory per controller (plus the unified directory on hybrid hosts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::stats::{HugetlbStats, MemoryEntry, Stats, parse_blkio_v1};
use super::{
    CgResult, Cgroup, CgroupError, CgroupPaths, FreezerState, check_page_size, device_rules,
    flat_keyed, read, read_u64, remove_dir, write,
};

const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

pub(crate) fn is_controller(s: &str) -> bool {
    CONTROLLERS.contains(&s)
}

/// A v1 (or hybrid) cgroup.
#[derive(Debug, Clone)]
pub struct V1Cgroup {
    paths: BTreeMap<String, PathBuf>,
}

impl V1Cgroup {
    /// The cgroup at these directories (controller → directory).
    pub fn from_paths(paths: BTreeMap<String, PathBuf>) -> Self {
        V1Cgroup { paths }
    }

    fn dir(&self, ctrl: &str) -> CgResult<&Path> {
        self.paths
            .get(ctrl)
            .map(PathBuf::as_path)
            .ok_or_else(|| CgroupError::NoController(ctrl.to_string()))
    }

    /// A new cpuset directory starts with empty cpus/mems, and the kernel refuses tasks then:
    /// copy the parent's values down each level that is still empty (as runc does).
    fn init_cpuset(dir: &Path) -> CgResult<()> {
        if dir.join("cpuset.cpus").exists() {
            if !read(dir, "cpuset.cpus")?.is_empty() && !read(dir, "cpuset.mems")?.is_empty() {
                return Ok(());
            }
        } else {
            let Some(parent) = dir
                .parent()
                .filter(|p| p.starts_with("/sys/fs/cgroup") || p.join("cpuset.cpus").exists())
            else {
                return Err(CgroupError::NoController("cpuset".into()));
            };
            if !parent.join("cpuset.cpus").exists() {
                Self::init_cpuset(parent)?;
            }
            std::fs::create_dir(dir)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(super::io_err("create", dir))?;
        }
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if read(dir, f)?.is_empty() {
                write(dir, f, &read(parent, f)?)?;
            }
        }
        Ok(())
    }

    fn set_memory(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(m) = r.memory() else { return Ok(()) };
        let dir = self.dir("memory")?;
        let num = |v: i64| {
            if v < -1 {
                Err(CgroupError::Invalid("memory", v.to_string()))
            } else {
                Ok(v.to_string())
            }
        };
        match (m.limit(), m.swap()) {
            (Some(l), Some(s)) => {
                let (l, s) = (num(l)?, num(s)?);
                // memsw must stay >= limit at every step: try one order, then the other.
                if write(dir, "memory.limit_in_bytes", &l).is_err() {
                    write(dir, "memory.memsw.limit_in_bytes", &s)?;
                    write(dir, "memory.limit_in_bytes", &l)?;
                } else if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &s)?;
                }
            }
            (Some(l), None) => {
                let l = num(l)?;
                if let Err(e) = write(dir, "memory.limit_in_bytes", &l) {
                    // Raising the limit above memsw needs memsw raised first.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(dir, "memory.memsw.limit_in_bytes", &l)?;
                        write(dir, "memory.limit_in_bytes", &l)?;
                    } else {
                        return Err(e);
                    }
                }
            }
            (None, Some(s)) => write(dir, "memory.memsw.limit_in_bytes", &num(s)?)?,
            (None, None) => {}
        }
        if let Some(v) = m.reservation() {
            write(dir, "memory.soft_limit_in_bytes", &num(v)?)?;
        }
        if let Some(v) = m.kernel_tcp() {
            write(dir, "memory.kmem.tcp.limit_in_bytes", &num(v)?)?;
        }
        if let Some(v) = m.swappiness() {
            if v > 100 {
                return Err(CgroupError::Invalid("memory swappiness", v.to_string()));
            }
            write(dir, "memory.swappiness", &v.to_string())?;
        }
        if m.disable_oom_killer() == Some(true) {
            write(dir, "memory.oom_control", "1")?;
        }
        Ok(())
    }

    fn set_cpu(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(c) = r.cpu() else { return Ok(()) };
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.realtime_period().is_some()
            || c.realtime_runtime().is_some()
            || c.burst().is_some()
            || c.idle().is_some()
        {
            let dir = self.dir("cpu")?;
            if let Some(v) = c.shares() {
                write(dir, "cpu.shares", &v.to_string())?;
            }
            if let Some(v) = c.period() {
                write(dir, "cpu.cfs_period_us", &v.to_string())?;
            }
            if let Some(v) = c.quota() {
                write(dir, "cpu.cfs_quota_us", &v.max(-1).to_string())?;
            }
            if let Some(v) = c.burst() {
                write(dir, "cpu.cfs_burst_us", &v.to_string())?;
            }
            if let Some(v) = c.realtime_period() {
                write(dir, "cpu.rt_period_us", &v.to_string())?;
            }
            if let Some(v) = c.realtime_runtime() {
                write(dir, "cpu.rt_runtime_us", &v.to_string())?;
            }
            if let Some(v) = c.idle() {
                write(dir, "cpu.idle", &v.to_string())?;
            }
        }
        for (val, file) in [(c.cpus(), "cpuset.cpus"), (c.mems(), "cpuset.mems")] {
            if let Some(v) = val.as_deref().filter(|v| !v.is_empty()) {
                write(self.dir("cpuset")?, file, v)?;
            }
        }
        Ok(())
    }

    fn set_blkio(&self, r: &LinuxResources) -> CgResult<()> {
        let Some(b) = r.block_io() else { return Ok(()) };
        let dir = self.dir("blkio")?;
        // CFQ's files where the kernel has them, else BFQ's (runc's choice). A weight of 0
        // means "not set" (docker sends one for every container) and is not written: a
        // kernel with neither scheduler has neither file.
        let (weight_file, weight_device_file) = if dir.join("blkio.weight").exists() {
            ("blkio.weight", "blkio.weight_device")
        } else {
            ("blkio.bfq.weight", "blkio.bfq.weight_device")
        };
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            write(dir, weight_file, &w.to_string())?;
        }
        if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
            write(dir, "blkio.leaf_weight", &w.to_string())?;
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight().filter(|&w| w != 0) {
                write(
                    dir,
                    weight_device_file,
                    &format!("{}:{} {w}", d.major(), d.minor()),
                )?;
            }
            if let Some(w) = d.leaf_weight().filter(|&w| w != 0) {
                write(
                    dir,
                    "blkio.leaf_weight_device",
                    &format!("{}:{} {w}", d.major(), d.minor()),
                )?;
            }
        }
        let throttles = [
            (
                b.throttle_read_bps_device(),
                "blkio.throttle.read_bps_device",
            ),
            (
                b.throttle_write_bps_device(),
                "blkio.throttle.write_bps_device",
            ),
            (
                b.throttle_read_iops_device(),
                "blkio.throttle.read_iops_device",
            ),
            (
                b.throttle_write_iops_device(),
                "blkio.throttle.write_iops_device",
            ),
        ];
        for (list, file) in throttles {
            for d in list.iter().flatten() {
                write(
                    dir,
                    file,
                    &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                )?;
            }
        }
        Ok(())
    }

    fn set_rest(&self, r: &LinuxResources) -> CgResult<()> {
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(self.dir("pids")?, "pids.max", &v)?;
        }
        for h in r.hugepage_limits().iter().flatten() {
            check_page_size(h.page_size())?;
            let dir = self.dir("hugetlb")?;
            write(
                dir,
                &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
                &h.limit().to_string(),
            )?;
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                write(self.dir("net_cls")?, "net_cls.classid", &id.to_string())?;
            }
            for p in n.priorities().iter().flatten() {
                write(
                    self.dir("net_prio")?,
                    "net_prio.ifpriomap",
                    &format!("{} {}", p.name(), p.priority()),
                )?;
            }
        }
        if let Some(u) = r.unified()
            && !u.is_empty()
        {
            return Err(CgroupError::Unsupported(
                "unified",
                "unified resources need cgroup v2".into(),
            ));
        }
        if let Some(devs) = r.devices() {
            let rules = device_rules(devs)?;
            super::devices::apply_v1(self.dir("devices")?, &rules)?;
        }
        Ok(())
    }
}

impl Cgroup for V1Cgroup {
    fn create(&self) -> CgResult<()> {
        for (ctrl, dir) in &self.paths {
            if ctrl == "cpuset" {
                Self::init_cpuset(dir)?;
            } else {
                std::fs::create_dir_all(dir).map_err(super::io_err("create", dir))?;
            }
        }
        Ok(())
    }

    fn join(&self, pid: i32) -> CgResult<()> {
        for dir in self.paths.values() {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn set(&self, r: &LinuxResources) -> CgResult<()> {
        self.set_memory(r)?;
        self.set_cpu(r)?;
        self.set_blkio(r)?;
        self.set_rest(r)
    }

    fn freeze(&self, state: FreezerState) -> CgResult<()> {
        let dir = self.dir("freezer")?;
        let want = match state {
            FreezerState::Frozen => "FROZEN",
            FreezerState::Thawed => "THAWED",
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            write(dir, "freezer.state", want)?;
            if read(dir, "freezer.state")? == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                // Leave it thawed rather than half frozen.
                let _ = write(dir, "freezer.state", "THAWED");
                return Err(CgroupError::FreezeTimeout(dir.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn freezer_state(&self) -> CgResult<FreezerState> {
        let Ok(dir) = self.dir("freezer") else {
            return Ok(FreezerState::Thawed);
        };
        match read(dir, "freezer.state") {
            Ok(s) if s == "THAWED" => Ok(FreezerState::Thawed),
            Ok(_) => Ok(FreezerState::Frozen),
            Err(CgroupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(FreezerState::Thawed)
            }
            Err(e) => Err(e),
        }
    }

    fn pids(&self) -> CgResult<Vec<i32>> {
        let dir = self
            .paths
            .get("pids")
            .or_else(|| self.paths.get("freezer"))
            .or_else(|| self.paths.values().next())
            .ok_or(CgroupError::NoHierarchy)?;
        let text = read(dir, "cgroup.procs")?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn stats(&self) -> CgResult<Stats> {
        let mut s = Stats::default();
        if let Ok(dir) = self.dir("cpuacct") {
            s.cpu.usage.total = read_u64(dir, "cpuacct.usage")?;
            s.cpu.usage.percpu = read(dir, "cpuacct.usage_percpu")?
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            // cpuacct.stat is in USER_HZ ticks.
            // SAFETY: sysconf has no memory effects.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let st = flat_keyed(&read(dir, "cpuacct.stat")?);
            s.cpu.usage.user = st.get("user").copied().unwrap_or(0) * 1_000_000_000 / hz;
            s.cpu.usage.kernel = st.get("system").copied().unwrap_or(0) * 1_000_000_000 / hz;
        }
        if let Ok(dir) = self.dir("cpu") {
            let st = flat_keyed(&read(dir, "cpu.stat")?);
            s.cpu.throttling.periods = st.get("nr_periods").copied().unwrap_or(0);
            s.cpu.throttling.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.cpu.throttling.throttled_time = st.get("throttled_time").copied().unwrap_or(0);
        }
        if let Ok(dir) = self.dir("memory") {
            let entry = |prefix: &str| -> CgResult<MemoryEntry> {
                if !dir.join(format!("{prefix}usage_in_bytes")).exists() {
                    return Ok(MemoryEntry::default());
                }
                Ok(MemoryEntry {
                    limit: read_u64(dir, &format!("{prefix}limit_in_bytes"))?,
                    usage: read_u64(dir, &format!("{prefix}usage_in_bytes"))?,
                    max: read_u64(dir, &format!("{prefix}max_usage_in_bytes"))?,
                    failcnt: read_u64(dir, &format!("{prefix}failcnt"))?,
                })
            };
            s.memory.usage = entry("memory.")?;
            s.memory.swap = entry("memory.memsw.")?;
            s.memory.kernel = entry("memory.kmem.")?;
            s.memory.kernel_tcp = entry("memory.kmem.tcp.")?;
            s.memory.raw = flat_keyed(&read(dir, "memory.stat")?);
            s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        }
        if let Ok(dir) = self.dir("pids") {
            s.pids.current = read_u64(dir, "pids.current")?;
            let max = read_u64(dir, "pids.max")?;
            s.pids.limit = if max == u64::MAX { 0 } else { max };
        }
        if let Ok(dir) = self.dir("blkio") {
            let pick = |a: &str, b: &str| {
                let v = parse_blkio_v1(&read(dir, a).unwrap_or_default());
                if v.is_empty() {
                    parse_blkio_v1(&read(dir, b).unwrap_or_default())
                } else {
                    v
                }
            };
            s.blkio.io_service_bytes_recursive = pick(
                "blkio.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes_recursive",
            );
            s.blkio.io_serviced_recursive = pick(
                "blkio.io_serviced_recursive",
                "blkio.throttle.io_serviced_recursive",
            );
        }
        if let Ok(dir) = self.dir("hugetlb") {
            for size in hugepage_sizes() {
                let f = |k: &str| read_u64(dir, &format!("hugetlb.{size}.{k}"));
                s.hugetlb.insert(
                    size.clone(),
                    HugetlbStats {
                        usage: f("usage_in_bytes")?,
                        max: f("max_usage_in_bytes")?,
                        failcnt: f("failcnt")?,
                    },
                );
            }
        }
        Ok(s)
    }

    fn destroy(&self) -> CgResult<()> {
        let mut first_err = None;
        for dir in self.paths.values() {
            if let Err(e) = remove_dir(dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn paths(&self) -> CgroupPaths {
        CgroupPaths::V1 {
            paths: self.paths.clone(),
        }
    }
}

/// Hugepage sizes the kernel offers, as cgroup file names spell them ("2MB", "1GB"), sorted:
/// also how runc and the kubelet name them in hugepage limits.
pub fn hugepage_sizes() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(if kb >= 1 << 20 {
                format!("{}GB", kb >> 20)
            } else if kb >= 1 << 10 {
                format!("{}MB", kb >> 10)
            } else {
                format!("{kb}KB")
            })
        })
        .collect();
    out.sort();
    out
}

/// Real v1 cgroups of this host (root only): create, limit, read back, freeze, remove.
#[cfg(test)]
mod tests {
    use super::super::Layout;
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    struct Guard(V1Cgroup);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.destroy();
        }
    }

    #[test]
    fn real_v1_cgroup_roundtrip() {
        let layout = Layout::detect().unwrap();
        if !matches!(layout, Layout::V1 { .. }) {
            eprintln!("host is not v1/hybrid; skipped");
            return;
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("/berth-test-v1-{}/nested", std::process::id());
        let CgroupPaths::V1 { paths } = layout.resolve(&name, &own).unwrap() else {
            unreachable!()
        };
        let cg = Guard(V1Cgroup::from_paths(paths));
        // A child that sleeps, moved into the cgroup.
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        cg.0.apply(pid).unwrap();
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(20_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(7).build().unwrap())
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(1)
                    .minor(3)
                    .access("rw")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        cg.0.set(&res).unwrap();
        let p = &cg.0.paths;
        assert_eq!(
            read(&p["memory"], "memory.limit_in_bytes").unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&p["cpu"], "cpu.shares").unwrap(), "512");
        assert_eq!(read(&p["cpu"], "cpu.cfs_quota_us").unwrap(), "20000");
        assert_eq!(read(&p["cpuset"], "cpuset.cpus").unwrap(), "0");
        assert_eq!(read(&p["pids"], "pids.max").unwrap(), "7");
        assert_eq!(read(&p["devices"], "devices.list").unwrap(), "c 1:3 rw");
        assert_eq!(cg.0.pids().unwrap(), vec![pid]);
        cg.0.freeze(FreezerState::Frozen).unwrap();
        assert_eq!(cg.0.freezer_state().unwrap(), FreezerState::Frozen);
        cg.0.freeze(FreezerState::Thawed).unwrap();
        let s = cg.0.stats().unwrap();
        assert_eq!(s.pids.current, 1);
        assert_eq!(s.pids.limit, 7);
        assert!(s.memory.usage.limit == 64 << 20);
        // Bad input: negative memory below -1.
        let bad = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-2).build().unwrap())
            .build()
            .unwrap();
        assert!(cg.0.set(&bad).is_err());
        // destroy kills the member and removes every directory.
        cg.0.destroy().unwrap();
        let _ = child.wait();
        for dir in cg.0.paths.values() {
            assert!(!dir.exists(), "{} left behind", dir.display());
            let _ = std::fs::remove_dir(dir.parent().unwrap());
        }
    }
}
