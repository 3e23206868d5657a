//! A container's `LinuxContainerResources` as the OCI spec's `linux.resources`, for the host
//! at hand: what the host cannot apply is handled here, at CreateContainer (or
//! UpdateContainerResources), as containerd's CRI handles it — dropped, or refused with
//! InvalidArgument naming the field — never left for the runtime to fail at StartContainer.
//!
//! - `hugepage_limits`: the kubelet sends a limit of 0 for every page size the host lists
//!   in `/sys/kernel/mm/hugepages`, whether or not a hugetlb cgroup controller exists. Without
//!   one they are dropped (`tolerate_missing_hugetlb_controller`, on by default) or refused.
//! - `memory_swap_limit_in_bytes`: applied where swap is accounted; a memory limit without one
//!   also limits swap to the same total (no swapping, containerd's default); without swap
//!   accounting it is dropped.
//! - `unified` (cgroup v2 keys): refused on a v1 host (runc and berth-runc cannot apply them).
//! - Values no cgroup file takes (negative shares or period, a quota below -1, an
//!   `oom_score_adj` outside -1000..=1000, a cpuset list that is not one, or names CPUs or
//!   memory nodes the host does not have) are refused.

use berth_api::runtime::v1 as cri;
use berth_runtime::cgroups::{Layout, Optional};
use serde_json::{Value, json};
use tonic::Status;

use crate::CriConfig;

/// What becomes of hugepage limits on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hugepages {
    /// The controller is there: limits go into the spec.
    Apply,
    /// Dropped (no controller and tolerated, or disabled by configuration).
    Drop,
    /// No controller, not tolerated: InvalidArgument.
    Refuse,
}

/// What this host can apply of a container's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostLimits {
    pub(crate) hugepages: Hugepages,
    /// Swap is accounted (`memory.swap` applies).
    pub(crate) swap: bool,
    /// The runtime drives cgroup v1 here (hybrid hosts too): `unified` cannot apply.
    pub(crate) v1: bool,
}

impl HostLimits {
    /// This host, for a container whose cgroup is `cgroups_path` (absolute).
    pub(crate) fn detect(cfg: &CriConfig, cgroups_path: &str) -> HostLimits {
        Self::from_layout(cfg, Layout::detect().ok().as_ref(), cgroups_path)
    }

    /// As [`HostLimits::detect`] for a given layout (`None`: no cgroups at all).
    pub(crate) fn from_layout(
        cfg: &CriConfig,
        layout: Option<&Layout>,
        cgroups_path: &str,
    ) -> HostLimits {
        let has = |o| layout.is_some_and(|l| l.supports(o, cgroups_path));
        let hugepages = if cfg.disable_hugetlb_controller {
            Hugepages::Drop
        } else if has(Optional::Hugetlb) {
            Hugepages::Apply
        } else if cfg.tolerate_missing_hugetlb_controller {
            Hugepages::Drop
        } else {
            Hugepages::Refuse
        };
        HostLimits {
            hugepages,
            swap: has(Optional::Swap),
            v1: matches!(layout, Some(Layout::V1 { .. })),
        }
    }
}

/// `r` as OCI `linux.resources` for `host`; `field` names `r` in error messages
/// (`linux.resources`, or `linux` for an update).
pub(crate) fn to_spec(
    r: &cri::LinuxContainerResources,
    host: &HostLimits,
    field: &str,
) -> Result<Value, Status> {
    let bad =
        |name: &str, why: String| Err(Status::invalid_argument(format!("{field}.{name}: {why}")));
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares < 0 {
        return bad("cpu_shares", format!("{} is negative", r.cpu_shares));
    }
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota < -1 {
        return bad(
            "cpu_quota",
            format!("{} is below -1 (no limit)", r.cpu_quota),
        );
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period < 0 {
        return bad("cpu_period", format!("{} is negative", r.cpu_period));
    }
    if r.cpu_period != 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    for (name, key, list, host_list) in [
        ("cpuset_cpus", "cpus", &r.cpuset_cpus, "cpuset.cpus"),
        ("cpuset_mems", "mems", &r.cpuset_mems, "cpuset.mems"),
    ] {
        if list.is_empty() {
            continue;
        }
        let Some(ids) = parse_id_list(list) else {
            return bad(
                name,
                format!("{list:?} is not a list of numbers and ranges (0-3,6)"),
            );
        };
        if let Some(have) = host_ids(host_list)
            && let Some(missing) = ids.iter().find(|i| !have.contains(i))
        {
            return bad(
                name,
                format!("{list:?} names {missing}, which this host does not have"),
            );
        }
        cpu.insert(key.into(), json!(list));
    }
    let mut mem = serde_json::Map::new();
    if r.memory_limit_in_bytes != 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    // memory + swap: as asked, else the memory limit itself (no swapping), where accounted.
    let swap = if r.memory_swap_limit_in_bytes != 0 {
        r.memory_swap_limit_in_bytes
    } else {
        r.memory_limit_in_bytes
    };
    if swap != 0 && host.swap {
        mem.insert("swap".into(), json!(swap));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return bad(
            "oom_score_adj",
            format!("{} is outside -1000..1000", r.oom_score_adj),
        );
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    if !r.hugepage_limits.is_empty() {
        match host.hugepages {
            Hugepages::Apply => {
                out.insert(
                    "hugepageLimits".into(),
                    r.hugepage_limits
                        .iter()
                        .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                        .collect(),
                );
            }
            Hugepages::Drop => tracing::debug!(
                limits = r.hugepage_limits.len(),
                "{field}.hugepage_limits dropped: no hugetlb cgroup controller here, or disabled"
            ),
            Hugepages::Refuse => {
                return bad(
                    "hugepage_limits",
                    "this host has no hugetlb cgroup controller (and \
                     cri.tolerate_missing_hugetlb_controller is false)"
                        .into(),
                );
            }
        }
    }
    if !r.unified.is_empty() {
        if host.v1 {
            let mut keys: Vec<&str> = r.unified.keys().map(String::as_str).collect();
            keys.sort_unstable();
            return bad(
                "unified",
                format!(
                    "cgroup v2 settings ({}) cannot apply on this cgroup v1 host",
                    keys.join(", ")
                ),
            );
        }
        out.insert("unified".into(), json!(r.unified));
    }
    Ok(Value::Object(out))
}

/// A cpuset list ("0-3,6"): the ids, or None when it is not one.
fn parse_id_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if a > b || b - a > 65_536 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// The CPUs or memory nodes the host offers (the root cpuset's `file`), if readable.
fn host_ids(file: &str) -> Option<Vec<u32>> {
    let dir = match Layout::detect().ok()? {
        Layout::V1 { mounts, .. } => mounts.get("cpuset")?.0.clone(),
        Layout::V2 { mount } => mount,
    };
    let text = std::fs::read_to_string(dir.join(format!("{file}.effective")))
        .or_else(|_| std::fs::read_to_string(dir.join(file)))
        .ok()?;
    parse_id_list(text.trim()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet_resources() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 102,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 968,
            hugepage_limits: vec![
                cri::HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0,
                },
                cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
            ],
            ..Default::default()
        }
    }

    const V1_SWAP: HostLimits = HostLimits {
        hugepages: Hugepages::Drop,
        swap: true,
        v1: true,
    };

    #[test]
    fn hugepage_limits_follow_the_controller() {
        let r = kubelet_resources();
        let dropped = to_spec(&r, &V1_SWAP, "linux.resources").unwrap();
        assert!(dropped.get("hugepageLimits").is_none(), "{dropped}");
        assert_eq!(dropped["memory"]["limit"], json!(128 << 20));
        assert_eq!(dropped["memory"]["swap"], json!(128 << 20), "no swapping");
        assert_eq!(
            dropped["cpu"],
            json!({"shares": 102, "quota": 50000, "period": 100000})
        );
        let applied = to_spec(
            &r,
            &HostLimits {
                hugepages: Hugepages::Apply,
                ..V1_SWAP
            },
            "linux.resources",
        )
        .unwrap();
        assert_eq!(
            applied["hugepageLimits"],
            json!([{"pageSize": "1GB", "limit": 0}, {"pageSize": "2MB", "limit": 0}])
        );
        let e = to_spec(
            &r,
            &HostLimits {
                hugepages: Hugepages::Refuse,
                ..V1_SWAP
            },
            "linux.resources",
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("linux.resources.hugepage_limits: "),
            "{}",
            e.message()
        );
    }

    #[test]
    fn host_limits_from_config_and_layout() {
        let cfg = CriConfig::default();
        let no_hugetlb = Layout::from_mountinfo(
            "36 31 0:33 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap();
        let with_hugetlb = Layout::from_mountinfo(
            "37 31 0:34 / /sys/fs/cgroup/hugetlb rw - cgroup cgroup rw,hugetlb\n",
        )
        .unwrap();
        let l = |cfg: &CriConfig, layout| HostLimits::from_layout(cfg, Some(layout), "/k/p/c");
        assert_eq!(l(&cfg, &no_hugetlb).hugepages, Hugepages::Drop);
        assert!(l(&cfg, &no_hugetlb).v1);
        assert_eq!(l(&cfg, &with_hugetlb).hugepages, Hugepages::Apply);
        let strict = CriConfig {
            tolerate_missing_hugetlb_controller: false,
            ..CriConfig::default()
        };
        assert_eq!(l(&strict, &no_hugetlb).hugepages, Hugepages::Refuse);
        assert_eq!(l(&strict, &with_hugetlb).hugepages, Hugepages::Apply);
        let disabled = CriConfig {
            disable_hugetlb_controller: true,
            ..strict
        };
        assert_eq!(l(&disabled, &with_hugetlb).hugepages, Hugepages::Drop);
        assert_eq!(
            HostLimits::from_layout(&cfg, None, "/x"),
            HostLimits {
                hugepages: Hugepages::Drop,
                swap: false,
                v1: false
            }
        );
    }

    #[test]
    fn swap_and_unified_follow_the_host() {
        let mut r = kubelet_resources();
        r.memory_swap_limit_in_bytes = 256 << 20;
        let no_swap = HostLimits {
            swap: false,
            ..V1_SWAP
        };
        let v = to_spec(&r, &no_swap, "linux.resources").unwrap();
        assert_eq!(v["memory"], json!({"limit": 128 << 20}), "swap dropped");
        let v = to_spec(&r, &V1_SWAP, "linux.resources").unwrap();
        assert_eq!(v["memory"]["swap"], json!(256 << 20));
        r.unified = [("memory.high".to_string(), "1G".to_string())].into();
        let e = to_spec(&r, &V1_SWAP, "linux").unwrap_err();
        assert!(
            e.message().starts_with("linux.unified: ") && e.message().contains("memory.high"),
            "{}",
            e.message()
        );
        let v2 = HostLimits {
            v1: false,
            ..V1_SWAP
        };
        assert_eq!(
            to_spec(&r, &v2, "linux").unwrap()["unified"],
            json!({"memory.high": "1G"})
        );
    }

    #[test]
    fn values_no_cgroup_takes_are_refused_by_name() {
        type Set = fn(&mut cri::LinuxContainerResources);
        let cases: [(&str, Set); 6] = [
            ("cpu_shares", |r| r.cpu_shares = -2),
            ("cpu_quota", |r| r.cpu_quota = -5),
            ("cpu_period", |r| r.cpu_period = -1),
            ("oom_score_adj", |r| r.oom_score_adj = 1001),
            ("cpuset_cpus", |r| r.cpuset_cpus = "0-x".into()),
            ("cpuset_mems", |r| r.cpuset_mems = "3-1".into()),
        ];
        for (field, set) in cases {
            let mut r = kubelet_resources();
            set(&mut r);
            let e = to_spec(&r, &V1_SWAP, "linux.resources").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message()
                    .starts_with(&format!("linux.resources.{field}: ")),
                "{field}: {}",
                e.message()
            );
        }
        let mut r = kubelet_resources();
        r.cpu_quota = -1;
        r.cpuset_cpus = "0".into();
        assert!(to_spec(&r, &V1_SWAP, "linux.resources").is_ok());
        r.cpuset_cpus = "100000".into();
        let e = to_spec(&r, &V1_SWAP, "linux.resources").unwrap_err();
        assert!(e.message().contains("does not have"), "{}", e.message());
        assert_eq!(parse_id_list("0-2, 5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_id_list(""), None);
    }
}
