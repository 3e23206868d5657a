//! A container's statistics on a cgroup v2-only host, as containerd's cgroup v2 `Metrics`
//! (type URL `io.containerd.cgroups.v2.Metrics`), read from its unified directory.

use std::collections::HashMap;
use std::path::Path;

use berth_api::io::containerd::cgroups::v2 as m;

/// A flat-keyed file (`key value` lines: cpu.stat, memory.stat, memory.events).
fn keyed(dir: &Path, name: &str) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let pairs = text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k.to_string(), v.trim().parse().ok()?))
    });
    pairs.collect()
}

/// A one-value file; `max` reads as the largest number (as containerd reads it), a missing
/// file as 0.
fn value(dir: &Path, name: &str) -> u64 {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(s) if s.trim() == "max" => u64::MAX,
        Ok(s) => s.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// The metrics of the cgroup v2 directory `dir`.
pub(crate) fn metrics(dir: &Path) -> m::Metrics {
    let cpu = keyed(dir, "cpu.stat");
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let mem = keyed(dir, "memory.stat");
    let g = |k: &str| mem.get(k).copied().unwrap_or(0);
    let events = keyed(dir, "memory.events");
    let e = |k: &str| events.get(k).copied().unwrap_or(0);
    m::Metrics {
        pids: Some(m::PidsStat {
            current: value(dir, "pids.current"),
            limit: value(dir, "pids.max"),
        }),
        cpu: Some(m::CpuStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
        }),
        memory: Some(m::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            workingset_refault: g("workingset_refault"),
            workingset_activate: g("workingset_activate"),
            workingset_nodereclaim: g("workingset_nodereclaim"),
            pgrefill: g("pgrefill"),
            pgscan: g("pgscan"),
            pgsteal: g("pgsteal"),
            pgactivate: g("pgactivate"),
            pgdeactivate: g("pgdeactivate"),
            pglazyfree: g("pglazyfree"),
            pglazyfreed: g("pglazyfreed"),
            thp_fault_alloc: g("thp_fault_alloc"),
            thp_collapse_alloc: g("thp_collapse_alloc"),
            usage: value(dir, "memory.current"),
            usage_limit: value(dir, "memory.max"),
            swap_usage: value(dir, "memory.swap.current"),
            swap_limit: value(dir, "memory.swap.max"),
        }),
        rdma: None,
        io: Some(m::IoStat {
            usage: io_stat(&std::fs::read_to_string(dir.join("io.stat")).unwrap_or_default()),
        }),
        hugetlb: hugetlb(dir),
        memory_events: Some(m::MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
        }),
    }
}

/// io.stat: `major:minor rbytes=.. wbytes=.. rios=.. wios=.. ...` a device.
fn io_stat(text: &str) -> Vec<m::IoEntry> {
    let entries = text.lines().filter_map(|l| {
        let mut fields = l.split_whitespace();
        let (major, minor) = fields.next()?.split_once(':')?;
        let mut e = m::IoEntry {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            ..Default::default()
        };
        for f in fields {
            let (k, v) = f.split_once('=')?;
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => e.rbytes = v,
                "wbytes" => e.wbytes = v,
                "rios" => e.rios = v,
                "wios" => e.wios = v,
                _ => {}
            }
        }
        Some(e)
    });
    entries.collect()
}

/// `hugetlb.<size>.current` and `.max` of each page size, sorted by size name.
fn hugetlb(dir: &Path) -> Vec<m::HugeTlbStat> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let names = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let mut sizes: Vec<String> = names
        .filter_map(|n| {
            n.strip_prefix("hugetlb.")?
                .strip_suffix(".current")
                .map(str::to_string)
        })
        .collect();
    sizes.sort();
    let stat = |size: String| m::HugeTlbStat {
        current: value(dir, &format!("hugetlb.{size}.current")),
        max: value(dir, &format!("hugetlb.{size}.max")),
        pagesize: size,
    };
    sizes.into_iter().map(stat).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_directory_reads_as_containerds_v2_metrics() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let files = [
            (
                "cpu.stat",
                "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 2\n",
            ),
            ("memory.stat", "anon 4096\nfile 8192\npgfault 7\n"),
            ("memory.current", "12288\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("pids.current", "2\n"),
            ("pids.max", "50\n"),
            (
                "io.stat",
                "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n",
            ),
            ("hugetlb.2MB.current", "0\n"),
            ("hugetlb.2MB.max", "max\n"),
        ];
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        let m = metrics(d);
        let cpu = m.cpu.unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.nr_periods),
            (100, 60, 2)
        );
        let mem = m.memory.unwrap();
        assert_eq!((mem.anon, mem.file, mem.pgfault), (4096, 8192, 7));
        assert_eq!((mem.usage, mem.usage_limit), (12288, u64::MAX));
        assert_eq!(
            m.pids.unwrap(),
            m::PidsStat {
                current: 2,
                limit: 50
            }
        );
        let io = &m.io.unwrap().usage[0];
        assert_eq!((io.major, io.minor, io.rbytes, io.wios), (8, 0, 1024, 2));
        assert_eq!(m.memory_events.unwrap().oom_kill, 1);
        assert_eq!(m.hugetlb[0].pagesize, "2MB");
        assert_eq!(m.hugetlb[0].max, u64::MAX);
    }
}
