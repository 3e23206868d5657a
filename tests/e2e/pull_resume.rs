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

/// A one-layer image (busybox and `mib` MiB of random bytes) pushed as `<name>:1`; the
/// reference and the layer (digest, bytes).
fn one_layer_image(
    reg: &Registry,
    dir: &std::path::Path,
    name: &str,
    mib: usize,
) -> (String, String, Vec<u8>) {
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let (gz, diff_id) = berth_e2e::busybox_layer(&[("data.bin", &data)]);
    let archive = dir.join(format!("{name}.tar"));
    let img = berth_e2e::oci_archive(
        &archive,
        &format!("{name}:1"),
        &[(
            gz.clone(),
            diff_id,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )],
    );
    let reference = reg.push(&archive, &format!("resume/{name}:1"));
    (reference, img.layers[0].clone(), gz)
}

/// Leaves what a killed pull leaves: an uncommitted ingest of `data` under the pull's ref for
/// layer `digest` in namespace `ns`.
async fn partial_ingest(d: &Daemon, ns: &str, digest: &str, total: usize, data: &[u8]) {
    use berth_api::containerd::services::content::v1::content_client::ContentClient;
    use berth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};
    use tokio_stream::StreamExt;
    let r = format!("layer-{digest}");
    let mut msgs = vec![WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r.clone(),
        total: total as i64,
        expected: digest.to_string(),
        ..Default::default()
    }];
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        msgs.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r.clone(),
            offset: (i << 20) as i64,
            data: chunk.to_vec(),
            ..Default::default()
        });
    }
    let mut out = ContentClient::new(d.channel().await)
        .write(berth_e2e::with_ns(ns, tokio_stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = out.next().await {
        r.unwrap();
    }
}

/// A registry front that answers every Range request with 416 Range Not Satisfiable and
/// passes every other request on (one per connection: `Connection: close` is added, so a
/// client cannot slip a Range request through a kept-alive connection).
struct RangeRefuser {
    host: String,
}

impl RangeRefuser {
    fn start(upstream: &str) -> RangeRefuser {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let mut client = client;
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if text.contains("\r\nrange:") {
                        let _ = client.write_all(
                            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                    let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head);
                    let head =
                        head.trim_end_matches("\r\n").to_string() + "\r\nConnection: close\r\n\r\n";
                    if server.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let _ = std::io::copy(&mut server, &mut client);
                });
            }
        });
        RangeRefuser { host }
    }
}

/// What a pull killed at the wrong moment leaves never wedges the next pull: a layer
/// downloaded in full but not committed is committed (no Range request past its end, which a
/// registry answers with 416); one whose kept bytes do not verify is downloaded again; and a
/// registry that refuses to resume (416) gets the layer asked for again from byte 0.
#[tokio::test(flavor = "multi_thread")]
async fn partial_downloads_that_cannot_be_resumed_are_started_over() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    let pull = |ns: &str, reference: &str| {
        let out = ok(d.berthctl(&["-n", ns, "pull", "--plain", reference]));
        assert!(out.contains("pulled and unpacked"), "{out}");
        let check = ok(d.ctr(&["-n", ns, "images", "check"]));
        assert!(check.trim_end().ends_with("true"), "{check}");
        assert_eq!(active_bytes(&d, ns), 0, "no ingest left");
    };

    // Complete and right: committed as it is.
    let (reference, digest, layer) = one_layer_image(&reg, dir.path(), "complete", 2);
    partial_ingest(&d, "a", &digest, layer.len(), &layer).await;
    pull("a", &reference);
    assert!(d.log().contains("committing a complete partial download"));
    assert!(!d.log().contains("downloading the layer again"));

    // Complete but wrong bytes (a torn write): verified, refused, downloaded again.
    let (reference, digest, layer) = one_layer_image(&reg, dir.path(), "torn", 2);
    let mut wrong = layer.clone();
    let mid = wrong.len() / 2;
    wrong[mid] ^= 0xff;
    partial_ingest(&d, "b", &digest, layer.len(), &wrong).await;
    pull("b", &reference);
    assert!(d.log().contains("does not verify"), "{}", d.log());

    // Half downloaded, and the registry will not resume: 416, then a download from byte 0.
    let (reference, digest, layer) = one_layer_image(&reg, dir.path(), "refused", 2);
    partial_ingest(&d, "c", &digest, layer.len(), &layer[..layer.len() / 2]).await;
    let front = RangeRefuser::start(&reg.host);
    let reference = reference.replace(&reg.host, &front.host);
    pull("c", &reference);
    let log = d.log();
    assert!(
        log.contains("416") && log.contains("downloading the layer again"),
        "{log}"
    );
}
