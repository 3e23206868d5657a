//! cgroup limits at create time and through update.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use serde_json::json;

use crate::util::{Env, unique};

#[test]
fn update_memory_and_pids() {
    let env = Env::new();
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"]["memory"] = json!({"limit": 128 * 1024 * 1024});
    b.config["linux"]["resources"]["pids"] = json!({"limit": 50});
    b.save();
    let id = unique("upd");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    assert_eq!(
        b.cgroup_file("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(b.cgroup_file("pids", "pids.max"), "50");
    env.ok(&["update", "--memory", "67108864", "--pids-limit", "20", &id]);
    assert_eq!(
        b.cgroup_file("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(b.cgroup_file("pids", "pids.max"), "20");
    // --resources - (what containerd's shim sends).
    let mut child = env
        .cmd(&["update", "--resources", "-", &id])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory":{"limit":33554432},"pids":{"limit":10}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        b.cgroup_file("memory", "memory.limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(b.cgroup_file("pids", "pids.max"), "10");
    // The pids limit holds inside: 10 processes at most.
    let out = env.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo done",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can't fork")
            || err.contains("Resource temporarily unavailable")
            || !out.status.success(),
        "{err}"
    );
    let stats = env.ok(&["events", "--stats", &id]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["data"]["pids"]["limit"], 10);
    assert!(v["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
}

#[test]
fn events_stream_reports_oom() {
    use std::io::BufRead;
    let env = Env::new();
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"]["memory"] =
        json!({"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024});
    b.save();
    let id = unique("oom");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    let mut events = env
        .cmd(&["events", "--interval", "10s", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(events.stdout.take().unwrap()).lines();
    // The first stats event shows the stream is up (and the OOM watch registered).
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"stats\""), "{first}");
    // A 64 MiB buffer in a 16 MiB cgroup: the kernel kills it.
    let o = env.run(&[
        "exec",
        &id,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert!(!o.status.success());
    let mut saw_oom = false;
    for line in lines.by_ref().take(5) {
        let line = line.unwrap();
        if line.contains("\"oom\"") {
            saw_oom = true;
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(saw_oom, "no oom event");
}

/// Block-IO weights of 0 mean "not set" (docker sends `weight: 0` for every container) and
/// need no scheduler file: this kernel may have neither CFQ's `blkio.weight` nor BFQ's
/// `blkio.bfq.weight` (runc skips them too). A real weight goes to whichever file the kernel
/// has, and fails clearly where it has none. Runs against runc as well (BERTH_RUNC_BIN=runc).
#[test]
fn blkio_weight_zero_is_not_set() {
    let env = Env::new();
    // A block device of this machine (throttling takes only those).
    let (major, minor): (u32, u32) = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .find_map(|e| {
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (a, b) = dev.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .expect("a block device in /sys/block");
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"]["blockIO"] = json!({
        "weight": 0,
        "leafWeight": 0,
        "weightDevice": [{"major": major, "minor": minor, "weight": 0, "leafWeight": 0}],
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
    });
    b.save();
    let id = unique("blkio0");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    if crate::util::cgroup_v2() {
        let io = b.cgroup_file("io", "io.max");
        assert!(
            io.starts_with(&format!("{major}:{minor} rbps=1048576 ")),
            "{io}"
        );
    } else {
        assert_eq!(
            b.cgroup_file("blkio", "blkio.throttle.read_bps_device"),
            format!("{major}:{minor} 1048576")
        );
    }

    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"]["blockIO"] = json!({"weight": 500});
    b.save();
    let id = unique("blkio5");
    if crate::util::cgroup_v2() {
        // v2: the weight goes to io.bfq.weight as is, or to io.weight converted to its
        // 1..10000 range (1 + (w - 10) * 9999 / 990), as runc does.
        env.create(&b, &id);
        let dir = format!("/sys/fs/cgroup{}", b.cgroup);
        let (file, want) = match std::fs::read_to_string(format!("{dir}/io.bfq.weight")) {
            Ok(w) => (w, "500"),
            Err(_) => (
                std::fs::read_to_string(format!("{dir}/io.weight")).expect("io.weight"),
                "4950",
            ),
        };
        assert!(file.split_whitespace().any(|w| w == want), "{file}");
        return;
    }
    let dir = Path::new("/sys/fs/cgroup/blkio");
    let file = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .find(|f| dir.join(f).exists());
    match file {
        Some(f) => {
            env.create(&b, &id);
            assert_eq!(b.cgroup_file("blkio", f).trim(), "500");
        }
        None => {
            env.track(&id);
            let err = env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
            assert!(err.contains("blkio.bfq.weight"), "{err}");
        }
    }
}
