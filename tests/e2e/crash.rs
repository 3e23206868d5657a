//! Crash safety: `kill -9` the daemon at random points of a large ingest and of its commit; after
//! every restart the store opens, every blob file matches its digest, no record points at a
//! missing blob, and the partial ingest resumes from the offset the daemon reports.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{AbortRequest, StatusRequest};
use berth_e2e::{Daemon, blobs_on_disk, ok, sha256, with_ns};

const NS: &str = "crash";
const REF: &str = "big-ingest";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn data(len: usize) -> Vec<u8> {
    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn start_ingest(d: &Daemon, input: &'static [u8], dg: &str) -> std::process::Child {
    let mut child = Command::new(berth_e2e::bin("berthctl"))
        .args([
            "--address",
            &d.sock.display().to_string(),
            "-n",
            NS,
            "content",
            "ingest",
            REF,
        ])
        .args([
            "--expected-size",
            &input.len().to_string(),
            "--expected-digest",
            dg,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input);
    });
    child
}

async fn offset(d: &Daemon) -> Option<i64> {
    let mut c = ContentClient::new(d.channel().await);
    c.status(with_ns(NS, StatusRequest { r#ref: REF.into() }))
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
        .map(|s| s.offset)
}

fn check_store(d: &Daemon) {
    let disk = blobs_on_disk(&d.root());
    let listed = ok(d.ctr(&["-n", NS, "content", "ls", "-q"]));
    for dg in listed.lines() {
        assert!(disk.contains_key(dg), "record {dg} has no blob on disk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_ingest_and_commit() {
    let input: &'static [u8] = Box::leak(data(96 << 20).into_boxed_slice());
    let dg = sha256(input);
    let mut d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut resumed_from = Vec::new();
    let mut commit_kills = 0;
    for round in 0..12 {
        if round % 2 == 0 {
            // Mid-ingest rounds start over, so that kills land among the writes again.
            let mut c = ContentClient::new(d.channel().await);
            let _ = c
                .abort(with_ns(NS, AbortRequest { r#ref: REF.into() }))
                .await;
        }
        let mut child = start_ingest(&d, input, &dg);
        if round % 2 == 0 {
            // Mid-ingest: a random moment while data flows.
            tokio::time::sleep(Duration::from_millis(20 + rng.next() % 400)).await;
        } else {
            // Mid-commit: once every byte is in, a random moment of the commit (fsync, rename).
            let deadline = Instant::now() + Duration::from_secs(30);
            while offset(&d).await.unwrap_or(0) < input.len() as i64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_micros(rng.next() % 30_000)).await;
            commit_kills += 1;
        }
        d.kill9();
        let _ = child.kill();
        let _ = child.wait();
        d = tokio::task::spawn_blocking(move || {
            d.restart();
            d
        })
        .await
        .unwrap();
        check_store(&d);
        let committed = blobs_on_disk(&d.root()).contains_key(&dg);
        match offset(&d).await {
            Some(o) => {
                assert!(
                    !committed || o == 0,
                    "ingest left beside its committed blob"
                );
                resumed_from.push(o);
            }
            None if committed => {
                // Finished before the kill (or the commit's rename landed): remove and go again.
                ok(d.ctr(&["-n", NS, "content", "rm", &dg]));
                d.ctr(&["-n", NS, "content", "ls"]);
            }
            None => resumed_from.push(0),
        }
    }
    // Resume to the end: berthctl skips what the daemon reports having.
    let before = offset(&d).await;
    let child = start_ingest(&d, input, &dg);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), dg);
    assert_eq!(
        blobs_on_disk(&d.root()).get(&dg),
        Some(&(input.len() as u64))
    );
    check_store(&d);
    eprintln!(
        "offsets after restarts: {resumed_from:?}; before the final resume: {before:?}; commit kills: {commit_kills}"
    );
    assert!(
        resumed_from
            .iter()
            .any(|&o| o > 0 && o < input.len() as i64),
        "no partial ingest survived a crash: {resumed_from:?}"
    );
}

/// A client command against `d` in the background, its output discarded.
fn background(d: &Daemon, program: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(program)
        .arg("--address")
        .arg(&d.sock)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client")
}

/// `kill -9` of berthd at random moments of pulls, image imports and lease churn (a lease made,
/// a blob written under it, the lease deleted), 50 times (BERTH_CRASH_LOOPS to change). Then
/// the next pull and import succeed, and once every image and lease is removed nothing is left:
/// no content record, no blob on disk, no snapshot — a lease resource record that outlived its
/// lease, or a partial download that wedges its layer, would show here.
#[test]
fn kill9_during_pulls_imports_and_lease_churn_strands_nothing() {
    let loops: usize = berth_e2e::env_count("BERTH_CRASH_LOOPS", 50);
    let reg = berth_e2e::Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let big = data(3 << 20);
    let archive = dir.path().join("pulled.tar");
    berth_e2e::busybox_oci_archive(&archive, "pulled:1", &[("big.bin", &big)]);
    let reference = reg.push(&archive, "crash/pulled:1");
    let imported = dir.path().join("imported.tar");
    let img = berth_e2e::busybox_oci_archive(
        &imported,
        "docker.io/library/imported:1",
        &[("other.bin", &big[..1 << 20])],
    );
    let blob = dir.path().join("blob");
    std::fs::write(&blob, &big[..512 << 10]).unwrap();
    let (berthctl, ctr) = (berth_e2e::bin("berthctl"), std::path::PathBuf::from("ctr"));

    let mut d = Daemon::start();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for i in 0..loops {
        let mut clients = Vec::new();
        match i % 3 {
            0 => clients.push(background(
                &d,
                &berthctl,
                &["-n", NS, "pull", "--plain", &reference],
            )),
            1 => clients.push(background(
                &d,
                &ctr,
                &["-n", NS, "images", "import", imported.to_str().unwrap()],
            )),
            _ => {
                let lease = format!("churn-{i}");
                let sh = format!(
                    "set -e; b='{}'; a='{}'; \
                     $b -a \"$a\" -n {NS} leases create --id {lease} >/dev/null; \
                     $b -a \"$a\" -n {NS} content ingest --lease {lease} r-{i} < '{}' >/dev/null; \
                     $b -a \"$a\" -n {NS} leases rm {lease}",
                    berthctl.display(),
                    d.sock.display(),
                    blob.display()
                );
                clients.push(
                    Command::new("sh")
                        .args(["-c", &sh])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        d.kill9();
        // Restarted before the clients are waited for: ctr waits for the daemon to come back
        // (and may finish its work then). A client that is still at it after 20 s is stopped.
        d.restart();
        for mut c in clients {
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // Nothing is wedged.
    d.wait_startup_collection();
    let out = ok(d.berthctl(&["-n", NS, "pull", "--plain", &reference]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    ok(d.ctr(&["-n", NS, "images", "import", imported.to_str().unwrap()]));
    let check = ok(d.ctr(&["-n", NS, "images", "check"]));
    assert!(
        check
            .lines()
            .skip(1)
            .all(|l| l.trim_end().ends_with("true")),
        "{check}"
    );
    check_store(&d);

    // And nothing is stranded: without images and leases, nothing is held.
    for name in ok(d.ctr(&["-n", NS, "images", "ls", "-q"])).lines() {
        ok(d.ctr(&["-n", NS, "images", "rm", name]));
    }
    for lease in ok(d.ctr(&["-n", NS, "leases", "ls", "-q"])).lines() {
        ok(d.ctr(&["-n", NS, "leases", "rm", lease]));
    }
    ok(d.ctr(&["-n", NS, "leases", "create", "--id", "sync"]));
    ok(d.ctr(&["-n", NS, "leases", "rm", "--sync", "sync"]));
    assert_eq!(ok(d.ctr(&["-n", NS, "content", "ls", "-q"])).trim(), "");
    assert_eq!(
        blobs_on_disk(&d.root()),
        Default::default(),
        "blobs nothing holds ({} loops; {} imported)",
        loops,
        img.name
    );
    let snaps = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 1, "{snaps}");
    // The mounts of applies that were killed went with the restarts.
    assert_eq!(berth_e2e::mounts_under(d.dir.path()), Vec::<String>::new());
}
