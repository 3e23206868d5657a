//! ListMetricDescriptors / ListPodSandboxMetrics: the cAdvisor-named figures the stats
//! already have (CPU time, memory), per container and per pod — cheap, since nothing more is
//! read than for PodSandboxStats.

use berth_api::runtime::v1 as cri;

const METRICS: &[(&str, &str, cri::MetricType)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        cri::MetricType::Counter,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        cri::MetricType::Gauge,
    ),
];

const LABELS: &[&str] = &["container", "pod", "namespace"];

pub(crate) fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: LABELS.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

fn values(cpu: Option<&cri::CpuUsage>, mem: Option<&cri::MemoryUsage>) -> [Option<(i64, u64)>; 3] {
    [
        cpu.and_then(|c| {
            c.usage_core_nano_seconds
                .as_ref()
                .map(|v| (c.timestamp, v.value / 1_000_000_000))
        }),
        mem.and_then(|m| m.usage_bytes.as_ref().map(|v| (m.timestamp, v.value))),
        mem.and_then(|m| m.working_set_bytes.as_ref().map(|v| (m.timestamp, v.value))),
    ]
}

fn metrics(
    labels: &[String],
    cpu: Option<&cri::CpuUsage>,
    mem: Option<&cri::MemoryUsage>,
) -> Vec<cri::Metric> {
    METRICS
        .iter()
        .zip(values(cpu, mem))
        .filter_map(|((name, _, ty), v)| {
            let (ts, value) = v?;
            Some(cri::Metric {
                name: name.to_string(),
                timestamp: ts,
                metric_type: *ty as i32,
                label_values: labels.to_vec(),
                value: Some(cri::UInt64Value { value }),
            })
        })
        .collect()
}

pub(crate) fn pod_metrics(s: &cri::PodSandboxStats) -> cri::PodSandboxMetrics {
    let attrs = s.attributes.clone().unwrap_or_default();
    let md = attrs.metadata.unwrap_or_default();
    let linux = s.linux.clone().unwrap_or_default();
    let pod_labels = vec![String::new(), md.name.clone(), md.namespace.clone()];
    cri::PodSandboxMetrics {
        pod_sandbox_id: attrs.id,
        metrics: metrics(&pod_labels, linux.cpu.as_ref(), linux.memory.as_ref()),
        container_metrics: linux
            .containers
            .iter()
            .map(|c| {
                let a = c.attributes.clone().unwrap_or_default();
                let name = a.metadata.map(|m| m.name).unwrap_or_default();
                cri::ContainerMetrics {
                    container_id: a.id,
                    metrics: metrics(
                        &[name, md.name.clone(), md.namespace.clone()],
                        c.cpu.as_ref(),
                        c.memory.as_ref(),
                    ),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metrics_come_from_stats() {
        let s = cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: "p".into(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: "pod".into(),
                    namespace: "ns".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: 5,
                    usage_core_nano_seconds: Some(cri::UInt64Value {
                        value: 3_000_000_000,
                    }),
                    ..Default::default()
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: 5,
                    usage_bytes: Some(cri::UInt64Value { value: 10 }),
                    working_set_bytes: Some(cri::UInt64Value { value: 8 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            windows: None,
        };
        let m = pod_metrics(&s);
        assert_eq!(m.pod_sandbox_id, "p");
        assert_eq!(m.metrics.len(), 3);
        assert_eq!(m.metrics[0].value.unwrap().value, 3);
        assert_eq!(m.metrics[2].value.unwrap().value, 8);
        assert_eq!(
            m.metrics[1].label_values,
            vec!["".to_string(), "pod".into(), "ns".into()]
        );
        assert_eq!(descriptors().len(), 3);
    }
}
