//! Container and pod statistics from the cgroups Berth put them in (v1 and v2, through
//! berth-runtime's cgroup readers) and the snapshotter's usage of their writable layers.

use std::sync::OnceLock;

use berth_api::containerd::services::snapshots::v1 as snaps;
use berth_api::runtime::v1 as cri;
use berth_runtime::cgroups::{Layout, Stats};
use tonic::Status;

use crate::meta::Container;
use crate::state::Inner;

fn layout() -> Option<&'static Layout> {
    static L: OnceLock<Option<Layout>> = OnceLock::new();
    L.get_or_init(|| Layout::detect().ok()).as_ref()
}

/// The cgroup's statistics (`None` if it does not exist, e.g. the task is gone).
fn read_cgroup(path: &str) -> Option<Stats> {
    let paths = layout()?.resolve(path, "").ok()?;
    paths.open().stats().ok()
}

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// The CRI's memory figures from cgroup statistics: the working set is usage less inactive
/// file pages (as cAdvisor and containerd count it).
pub(crate) fn memory_usage(s: &Stats, ts: i64) -> cri::MemoryUsage {
    let raw = &s.memory.raw;
    let get = |v1: &str, v2: &str| raw.get(v1).or_else(|| raw.get(v2)).copied().unwrap_or(0);
    let inactive = get("total_inactive_file", "inactive_file");
    let usage = s.memory.usage.usage;
    let ws = usage.saturating_sub(inactive);
    let limit = s.memory.usage.limit;
    let available = if limit > 0 && limit < (1 << 62) {
        limit.saturating_sub(ws)
    } else {
        0
    };
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(ws),
        available_bytes: u64v(available),
        usage_bytes: u64v(usage),
        rss_bytes: u64v(get("total_rss", "anon")),
        page_faults: u64v(get("total_pgfault", "pgfault")),
        major_page_faults: u64v(get("total_pgmajfault", "pgmajfault")),
        psi: None,
    }
}

impl Inner {
    /// The stats of the sandboxes `f` selects (by id prefix and labels).
    pub(crate) async fn pod_stats(
        &self,
        f: Option<&cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, Status> {
        let all: Vec<crate::meta::Sandbox> = self
            .meta
            .with(|ix| ix.sandboxes.values().cloned().collect());
        let mut out = Vec::new();
        for sb in all {
            if let Some(f) = f {
                if !f.id.is_empty() && !sb.id.starts_with(&f.id) {
                    continue;
                }
                let labels = &sb.config.labels;
                if !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
                {
                    continue;
                }
            }
            out.push(self.sandbox_stats(&sb).await?);
        }
        Ok(out)
    }

    /// Every sandbox's metrics, as ListPodSandboxMetrics answers them.
    pub(crate) async fn pod_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>, Status> {
        let stats = self.pod_stats(None).await?;
        Ok(stats.iter().map(crate::metrics::pod_metrics).collect())
    }

    /// CPU usage, with the rate since the previous sample of the same key.
    fn cpu_usage(&self, key: &str, s: &Stats, ts: i64) -> cri::CpuUsage {
        let total = s.cpu.usage.total;
        let prev = self
            .cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), (ts, total));
        let nano_cores = prev.and_then(|(pt, pu)| {
            let dt = ts - pt;
            (dt > 0 && total >= pu)
                .then(|| ((total - pu) as u128 * 1_000_000_000 / dt as u128) as u64)
        });
        cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(total),
            usage_nano_cores: nano_cores.and_then(u64v),
            psi: None,
        }
    }

    pub(crate) fn container_cgroup(&self, c: &Container) -> Option<String> {
        let sb = self.meta.sandbox(&c.st.sandbox_id)?;
        Some(format!(
            "{}/{}",
            self.pod_cgroup(&sb.config, &sb.id).trim_end_matches('/'),
            c.id
        ))
    }

    pub(crate) async fn container_stats(
        &self,
        c: &Container,
    ) -> Result<cri::ContainerStats, Status> {
        let ts = crate::now_ns();
        let md = c.config.metadata.clone();
        let mut out = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: md,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            ..Default::default()
        };
        if c.state() == cri::ContainerState::ContainerRunning
            && let Some(s) = self.container_cgroup(c).and_then(|p| read_cgroup(&p))
        {
            out.cpu = Some(self.cpu_usage(&c.id, &s, ts));
            out.memory = Some(memory_usage(&s, ts));
        } else {
            out.cpu = Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(0),
                ..Default::default()
            });
            out.memory = Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(0),
                ..Default::default()
            });
        }
        let usage = self
            .api
            .snapshots()
            .usage(self.api.req(snaps::UsageRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: c.id.clone(),
            }))
            .await
            .map(|r| r.into_inner())
            .unwrap_or_default();
        out.writable_layer = Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.dirs.image_fs.to_string_lossy().into_owned(),
            }),
            used_bytes: u64v(usage.size.max(0) as u64),
            inodes_used: u64v(usage.inodes.max(0) as u64),
        });
        Ok(out)
    }

    pub(crate) async fn list_container_stats(
        &self,
        f: Option<&cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, Status> {
        let all: Vec<Container> = self
            .meta
            .with(|ix| ix.containers.values().cloned().collect());
        let mut out = Vec::new();
        for c in all {
            if let Some(f) = f {
                if !f.id.is_empty() && !c.id.starts_with(&f.id) {
                    continue;
                }
                if !f.pod_sandbox_id.is_empty() && !c.st.sandbox_id.starts_with(&f.pod_sandbox_id) {
                    continue;
                }
                if !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
                {
                    continue;
                }
            }
            out.push(self.container_stats(&c).await?);
        }
        Ok(out)
    }

    pub(crate) async fn sandbox_stats(
        &self,
        sb: &crate::meta::Sandbox,
    ) -> Result<cri::PodSandboxStats, Status> {
        let ts = crate::now_ns();
        let members: Vec<Container> = self.meta.with(|ix| {
            ix.containers
                .values()
                .filter(|c| c.st.sandbox_id == sb.id)
                .cloned()
                .collect()
        });
        let mut containers = Vec::new();
        for c in &members {
            containers.push(self.container_stats(c).await?);
        }
        let mut linux = cri::LinuxPodSandboxStats {
            containers,
            ..Default::default()
        };
        if let Some(s) = read_cgroup(&self.pod_cgroup(&sb.config, &sb.id)) {
            linux.cpu = Some(self.cpu_usage(&sb.id, &s, ts));
            linux.memory = Some(memory_usage(&s, ts));
            linux.process = Some(cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(s.pids.current),
            });
        }
        if sb.st.ready && sb.st.pid > 0 {
            linux.network = network_usage(sb.st.pid, ts);
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: Some(sb.metadata()),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(linux),
            windows: None,
        })
    }
}

/// The pod's interfaces, from `/proc/<pause>/net/dev` (the pause process's network
/// namespace); `eth0`, else the first non-loopback, is the default interface.
fn network_usage(pid: u32, ts: i64) -> Option<cri::NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let ifaces = parse_net_dev(&text);
    let default = ifaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| ifaces.iter().find(|i| i.name != "lo"))
        .cloned();
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: default,
        interfaces: ifaces.into_iter().filter(|i| i.name != "lo").collect(),
    })
}

pub(crate) fn parse_net_dev(text: &str) -> Vec<cri::NetworkInterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() < 16 {
                return None;
            }
            Some(cri::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: u64v(f[0]),
                rx_errors: u64v(f[2]),
                tx_bytes: u64v(f[8]),
                tx_errors: u64v(f[10]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(raw: &[(&str, u64)], usage: u64, limit: u64) -> Stats {
        let mut s = Stats::default();
        s.memory.usage.usage = usage;
        s.memory.usage.limit = limit;
        s.memory.raw = raw.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        s
    }

    #[test]
    fn working_set_from_v1_and_v2_names() {
        let v1 = stats(
            &[
                ("total_inactive_file", 100),
                ("total_rss", 7),
                ("total_pgfault", 9),
            ],
            1000,
            4000,
        );
        let m = memory_usage(&v1, 1);
        assert_eq!(m.working_set_bytes.unwrap().value, 900);
        assert_eq!(m.available_bytes.unwrap().value, 3100);
        assert_eq!(m.rss_bytes.unwrap().value, 7);
        assert_eq!(m.page_faults.unwrap().value, 9);
        let v2 = stats(
            &[("inactive_file", 300), ("anon", 11), ("pgmajfault", 2)],
            1000,
            u64::MAX,
        );
        let m = memory_usage(&v2, 1);
        assert_eq!(m.working_set_bytes.unwrap().value, 700);
        assert_eq!(
            m.available_bytes.unwrap().value,
            0,
            "no limit: nothing to say"
        );
        assert_eq!(m.rss_bytes.unwrap().value, 11);
        assert_eq!(m.major_page_faults.unwrap().value, 2);
    }

    #[test]
    fn net_dev() {
        let t = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n  eth0: 500 5 1 0 0 0 0 0 300 3 2 0 0 0 0 0\n";
        let v = parse_net_dev(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].name, "eth0");
        assert_eq!(v[1].rx_bytes.unwrap().value, 500);
        assert_eq!(v[1].rx_errors.unwrap().value, 1);
        assert_eq!(v[1].tx_bytes.unwrap().value, 300);
        assert_eq!(v[1].tx_errors.unwrap().value, 2);
    }
}
