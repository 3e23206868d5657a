//! A container's cgroups (found from its init's `/proc/<pid>/cgroup`) and their statistics as
//! containerd's cgroup v1 `Metrics` (type URL `io.containerd.cgroups.v1.Metrics`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_api::io::containerd::cgroups::v1 as m;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The container's cgroup directories.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cgroups {
    /// v1 controller name → directory.
    v1: HashMap<String, PathBuf>,
    /// The v2 (unified) directory, if any.
    v2: Option<PathBuf>,
}

impl Cgroups {
    /// The cgroups of `pid`.
    pub(crate) fn of_pid(pid: u32) -> std::io::Result<Cgroups> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(Cgroups::parse(&text, Path::new(CGROUP_ROOT)))
    }

    pub(crate) fn parse(text: &str, root: &Path) -> Cgroups {
        let mut cg = Cgroups::default();
        let pure_v2 = root.join("cgroup.controllers").exists();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if ctrls.is_empty() {
                let base = if pure_v2 {
                    root.to_path_buf()
                } else {
                    root.join("unified")
                };
                cg.v2 = Some(base.join(rel));
                continue;
            }
            let names: Vec<&str> = ctrls
                .split(',')
                .filter(|c| !c.starts_with("name="))
                .collect();
            if names.is_empty() {
                continue;
            }
            let joined = root.join(names.join(","));
            for n in &names {
                let dir = if joined.exists() {
                    joined.clone()
                } else {
                    root.join(n)
                };
                cg.v1.insert((*n).to_string(), dir.join(rel));
            }
        }
        cg
    }

    /// The v1 memory cgroup directory.
    pub(crate) fn memory(&self) -> Option<&Path> {
        self.v1.get("memory").map(PathBuf::as_path)
    }

    /// The unified directory on a cgroup v2-only host (no v1 controller); none on v1 or
    /// hybrid hosts.
    pub(crate) fn v2_only(&self) -> Option<&Path> {
        self.v2.as_deref().filter(|_| self.v1.is_empty())
    }

    /// True when none of the container's cgroup directories exists any more.
    pub(crate) fn gone(&self) -> bool {
        match self.v2_only() {
            Some(d) => !d.exists(),
            None => self.v1.values().all(|d| !d.exists()),
        }
    }

    fn file(&self, ctrl: &str, name: &str) -> Option<PathBuf> {
        self.v1.get(ctrl).map(|d| d.join(name))
    }

    fn u64(&self, ctrl: &str, name: &str) -> u64 {
        self.file(ctrl, name)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn keyed(&self, ctrl: &str, name: &str) -> HashMap<String, u64> {
        self.file(ctrl, name)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| parse_keyed(&s))
            .unwrap_or_default()
    }

    /// cgroup v1 metrics.
    pub(crate) fn metrics(&self) -> m::Metrics {
        m::Metrics {
            hugetlb: self.hugetlb(),
            pids: self.v1.contains_key("pids").then(|| m::PidsStat {
                current: self.u64("pids", "pids.current"),
                limit: self.u64("pids", "pids.max"),
            }),
            cpu: self.cpu(),
            memory: self.memory_stat(),
            blkio: self.blkio(),
            memory_oom_control: self.v1.contains_key("memory").then(|| {
                let o = self.keyed("memory", "memory.oom_control");
                m::MemoryOomControl {
                    oom_kill_disable: o.get("oom_kill_disable").copied().unwrap_or(0),
                    under_oom: o.get("under_oom").copied().unwrap_or(0),
                    oom_kill: o.get("oom_kill").copied().unwrap_or(0),
                }
            }),
            ..Default::default()
        }
    }

    fn cpu(&self) -> Option<m::CpuStat> {
        if !self.v1.contains_key("cpuacct") && !self.v1.contains_key("cpu") {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as u64 } else { 100 };
        let ticks = self.keyed("cpuacct", "cpuacct.stat");
        let to_ns = |k: &str| ticks.get(k).copied().unwrap_or(0) * 1_000_000_000 / hz;
        let per_cpu = self
            .file("cpuacct", "cpuacct.usage_percpu")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let t = self.keyed("cpu", "cpu.stat");
        Some(m::CpuStat {
            usage: Some(m::CpuUsage {
                total: self.u64("cpuacct", "cpuacct.usage"),
                kernel: to_ns("system"),
                user: to_ns("user"),
                per_cpu,
            }),
            throttling: Some(m::Throttle {
                periods: t.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: t.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: t.get("throttled_time").copied().unwrap_or(0),
            }),
        })
    }

    fn memory_entry(&self, prefix: &str) -> Option<m::MemoryEntry> {
        let usage = self.file("memory", &format!("{prefix}.usage_in_bytes"))?;
        if !usage.exists() {
            return None;
        }
        Some(m::MemoryEntry {
            limit: self.u64("memory", &format!("{prefix}.limit_in_bytes")),
            usage: self.u64("memory", &format!("{prefix}.usage_in_bytes")),
            max: self.u64("memory", &format!("{prefix}.max_usage_in_bytes")),
            failcnt: self.u64("memory", &format!("{prefix}.failcnt")),
        })
    }

    fn memory_stat(&self) -> Option<m::MemoryStat> {
        if !self.v1.contains_key("memory") {
            return None;
        }
        let s = self.keyed("memory", "memory.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        Some(m::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: self.memory_entry("memory"),
            swap: self.memory_entry("memory.memsw"),
            kernel: self.memory_entry("memory.kmem"),
            kernel_tcp: self.memory_entry("memory.kmem.tcp"),
        })
    }

    fn hugetlb(&self) -> Vec<m::HugetlbStat> {
        let Some(dir) = self.v1.get("hugetlb") else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut sizes: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("hugetlb.")
                    .and_then(|r| r.strip_suffix(".usage_in_bytes"))
                    .map(str::to_string)
            })
            .collect();
        sizes.sort();
        sizes
            .into_iter()
            .map(|size| m::HugetlbStat {
                usage: self.u64("hugetlb", &format!("hugetlb.{size}.usage_in_bytes")),
                max: self.u64("hugetlb", &format!("hugetlb.{size}.max_usage_in_bytes")),
                failcnt: self.u64("hugetlb", &format!("hugetlb.{size}.failcnt")),
                pagesize: size,
            })
            .collect()
    }

    fn blkio(&self) -> Option<m::BlkIoStat> {
        let dir = self.v1.get("blkio")?;
        // The CFQ files when the scheduler provides them, the throttle ones otherwise.
        let cfq = dir.join("blkio.io_serviced_recursive").exists();
        let read = |name: &str| -> Vec<m::BlkIoEntry> {
            let file = if cfq {
                format!("blkio.{name}")
            } else {
                format!("blkio.throttle.{name}")
            };
            std::fs::read_to_string(dir.join(file))
                .map(|s| parse_blkio(&s))
                .unwrap_or_default()
        };
        let cfq_only = |name: &str| -> Vec<m::BlkIoEntry> {
            if cfq {
                std::fs::read_to_string(dir.join(format!("blkio.{name}")))
                    .map(|s| parse_blkio(&s))
                    .unwrap_or_default()
            } else {
                Vec::new()
            }
        };
        Some(m::BlkIoStat {
            io_service_bytes_recursive: read("io_service_bytes_recursive"),
            io_serviced_recursive: read("io_serviced_recursive"),
            io_queued_recursive: cfq_only("io_queued_recursive"),
            io_service_time_recursive: cfq_only("io_service_time_recursive"),
            io_wait_time_recursive: cfq_only("io_wait_time_recursive"),
            io_merged_recursive: cfq_only("io_merged_recursive"),
            io_time_recursive: cfq_only("time_recursive"),
            sectors_recursive: cfq_only("sectors_recursive"),
        })
    }
}

/// `key value` lines.
fn parse_keyed(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

fn device_name(major: u64, minor: u64) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .unwrap_or_default()
}

/// `major:minor [op] value` lines (the `Total` line is skipped).
fn parse_blkio(s: &str) -> Vec<m::BlkIoEntry> {
    let mut names: HashMap<(u64, u64), String> = HashMap::new();
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, v] => (*dev, *op, *v),
                [dev, v] => (*dev, "", *v),
                _ => return None,
            };
            let (ma, mi) = dev.split_once(':')?;
            let (major, minor) = (ma.parse().ok()?, mi.parse().ok()?);
            let device = names
                .entry((major, minor))
                .or_insert_with(|| device_name(major, minor))
                .clone();
            Some(m::BlkIoEntry {
                op: op.to_string(),
                device,
                major,
                minor,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroup_hybrid() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("cpu,cpuacct")).unwrap();
        let text = "12:pids:/c1\n4:cpu,cpuacct:/c1\n1:name=systemd:/c1\n0::/c1\n";
        let cg = Cgroups::parse(text, root.path());
        assert_eq!(cg.v1["pids"], root.path().join("pids/c1"));
        assert_eq!(cg.v1["cpu"], root.path().join("cpu,cpuacct/c1"));
        assert_eq!(cg.v1["cpuacct"], root.path().join("cpu,cpuacct/c1"));
        assert!(!cg.v1.contains_key("name=systemd"));
        assert_eq!(cg.v2, Some(root.path().join("unified/c1")));
        assert!(cg.v2_only().is_none());
    }

    #[test]
    fn reads_v1_files() {
        let root = tempfile::tempdir().unwrap();
        let mem = root.path().join("memory/c");
        let pids = root.path().join("pids/c");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 10\nrss 20\ntotal_rss 30\npgfault 7\n",
        )
        .unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "8192\n").unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(pids.join("pids.current"), "3\n").unwrap();
        std::fs::write(pids.join("pids.max"), "max\n").unwrap();
        let cg = Cgroups::parse("9:memory:/c\n8:pids:/c\n", root.path());
        let m = cg.metrics();
        let mem = m.memory.unwrap();
        assert_eq!(
            (mem.cache, mem.rss, mem.total_rss, mem.pg_fault),
            (10, 20, 30, 7)
        );
        let usage = mem.usage.unwrap();
        assert_eq!((usage.usage, usage.limit), (4096, 8192));
        assert!(mem.swap.is_none());
        assert_eq!(
            m.pids.unwrap(),
            m::PidsStat {
                current: 3,
                limit: 0
            }
        );
        assert_eq!(m.memory_oom_control.unwrap().oom_kill, 2);
        assert!(m.cpu.is_none());
    }

    #[test]
    fn blkio_lines() {
        let e = parse_blkio("8:0 Read 100\n8:0 Write 5\nTotal 105\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 100)
        );
    }
}
