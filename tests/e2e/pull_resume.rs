//! Pulls that are interrupted: kill -9 of the daemon mid-download (the next pull resumes with a
//! Range request and nothing half-applied is ever committed), and a registry that stalls.

use std::io::Read;
use std::time::{Duration, Instant};

use berth_e2e::{Daemon, Registry, SlowProxy, fails, mkimage, ok};

/// An image whose first layer is `mib` MiB of incompressible bytes; returns the reference.
fn big_image(reg: &Registry, dir: &std::path::Path, mib: usize) -> String {
    let big = dir.join("big");
    let small = dir.join("small");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(big.join("random.bin"), &data).unwrap();
    std::fs::write(small.join("hello"), b"hello\n").unwrap();
    let archive = dir.join("img.tar");
    mkimage(&archive, "resume:1", &[&big, &small]);
    reg.push(&archive, "resume/img:1")
}

/// Largest ingest offset `ctr content active` shows, in bytes.
fn active_bytes(d: &Daemon, ns: &str) -> u64 {
    let out = ok(d.ctr(&["-n", ns, "content", "active"]));
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(parse_size)
        .max()
        .unwrap_or(0)
}

fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let m = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some((n * m) as u64)
}

#[test]
fn kill_9_during_a_pull_then_the_next_pull_resumes() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = big_image(&reg, dir.path(), 48);
    // 12 MB/s: the big layer takes about four seconds.
    let proxy = SlowProxy::start(&reg.host, 12 << 20, None);
    let reference = reference.replace(&reg.host, &proxy.host);
    let mut d = Daemon::start();
    let mut pull = std::process::Command::new(berth_e2e::bin("berthctl"))
        .args([
            "--address",
            d.sock.to_str().unwrap(),
            "-n",
            "r",
            "pull",
            "--plain",
            &reference,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while active_bytes(&d, "r") < 8_000_000 {
        assert!(Instant::now() < deadline, "the download never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    let _ = pull.wait();
    d.restart();
    // The leftovers of the dead pull: its lease is gone at start-up, GC removes its extraction
    // snapshots; the partial download stays to be resumed; nothing is committed.
    d.wait_startup_collection();
    let snaps = ok(d.ctr(&["-n", "r", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 1, "no snapshot survives: {snaps}");
    assert!(
        ok(d.ctr(&["-n", "r", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    // (What the killed writer had not yet handed to the kernel is lost; the rest is kept.)
    let partial = active_bytes(&d, "r");
    assert!(partial >= 4_000_000, "partial download kept: {partial}");
    assert!(
        ok(d.ctr(&["-n", "r", "images", "ls", "-q"]))
            .trim()
            .is_empty()
    );

    let out = ok(d.berthctl(&["-n", "r", "pull", "--plain", &reference]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    assert!(
        d.log().contains("resuming a partial download"),
        "{}",
        d.log()
    );
    let check = ok(d.ctr(&["-n", "r", "images", "check"]));
    assert!(check.trim_end().ends_with("true"), "{check}");
    assert_eq!(active_bytes(&d, "r"), 0);
    let snaps = ok(d.ctr(&["-n", "r", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 3, "{snaps}");
    assert!(!snaps.contains("extract"), "{snaps}");
    // Every blob on disk matches its name (the resumed one included).
    let blobs = berth_e2e::blobs_on_disk(&d.root());
    assert_eq!(blobs.len(), 4, "manifest, config, two layers: {blobs:?}");
}

#[test]
fn a_stalled_registry_is_a_clear_error_and_leaves_nothing_half_done() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = big_image(&reg, dir.path(), 16);
    // Each connection stalls after 1 MiB: the retries (each resuming where the last stopped)
    // run out long before 16 MiB.
    let proxy = SlowProxy::start(&reg.host, 64 << 20, Some(1 << 20));
    let reference = reference.replace(&reg.host, &proxy.host);
    let d = Daemon::start_with_config(
        "[registry]\nstall_timeout_seconds = 1\ndocker_config = \"\"\n",
        &[],
    );
    let started = Instant::now();
    let e = fails(d.berthctl(&["-n", "s", "pull", "--plain", &reference]));
    assert!(e.contains("stalled"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    berth_e2e::wait_for("the pull's extraction snapshots collected", || {
        !ok(d.ctr(&["-n", "s", "snapshots", "ls"])).contains("extract")
    });
    assert!(
        ok(d.ctr(&["-n", "s", "images", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert!(
        ok(d.ctr(&["-n", "s", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
}
