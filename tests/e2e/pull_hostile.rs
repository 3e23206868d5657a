//! Pulls from a registry that lies: a manifest whose bytes do not match its digest, a blob
//! longer than its descriptor says, garbage documents, server errors, and a layer that tries
//! to write outside its snapshot. Each is a clear error and leaves no image, snapshot or lease.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use berth_e2e::{Daemon, fails, ok, sha256};

type Route = (u16, String, Vec<u8>);

/// A tiny HTTP/1.1 registry answering from a fixed table of `path -> (status, type, body)`.
/// HEAD answers with the headers of GET. Every response closes the connection.
struct FakeRegistry {
    host: String,
}

impl FakeRegistry {
    fn start(routes: HashMap<String, Route>) -> FakeRegistry {
        FakeRegistry::start_with_token(routes, None)
    }

    /// With `token`, `/v2/` paths want `Authorization: Bearer <token>`; without it they answer
    /// 401 with a Bearer challenge whose realm is this server's `/token`, which hands out the
    /// token for a `repository:<name>:pull` scope.
    fn start_with_token(
        routes: HashMap<String, Route>,
        token: Option<&'static str>,
    ) -> FakeRegistry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = l.local_addr().unwrap().to_string();
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let routes = routes.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut auth = String::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("authorization")
                        {
                            auth = v.trim().to_string();
                        }
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let host = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let mut extra = String::new();
                    let (status, ct, body) = match token {
                        Some(t) if path.starts_with("/token?") => {
                            if path.contains("scope=repository%3Aauth%2Fimg%3Apull") {
                                let body = format!("{{\"token\":\"{t}\"}}");
                                (200, "application/json".to_string(), body.into_bytes())
                            } else {
                                (403, "text/plain".into(), b"bad scope".to_vec())
                            }
                        }
                        Some(t) if path.starts_with("/v2/") && auth != format!("Bearer {t}") => {
                            extra = format!(
                                "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"fake\"\r\n"
                            );
                            (401, "text/plain".into(), b"auth first".to_vec())
                        }
                        _ => routes.get(&path).cloned().unwrap_or((
                            404,
                            "text/plain".into(),
                            b"nope".to_vec(),
                        )),
                    };
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}",
                        body.len()
                    );
                    if path.contains("/manifests/") && status == 200 {
                        head.push_str(&format!("Docker-Content-Digest: {}\r\n", sha256(&body)));
                    }
                    head.push_str("\r\n");
                    let _ = conn.write_all(head.as_bytes());
                    if method != "HEAD" {
                        let _ = conn.write_all(&body);
                    }
                });
            }
        });
        FakeRegistry { host }
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn tar_gz(entries: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Routes for repository `repo` tag `1`: manifest, config and one layer; `tweak` may change them.
fn image(
    repo: &str,
    layer: &[u8],
    diff_id: &str,
    layer_size: Option<usize>,
    routes: &mut HashMap<String, Route>,
) -> String {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        sha256(config.as_bytes()),
        config.len(),
        sha256(layer),
        layer_size.unwrap_or(layer.len())
    );
    let md = sha256(manifest.as_bytes());
    let m: Route = (200, MANIFEST.into(), manifest.into_bytes());
    routes.insert(format!("/v2/{repo}/manifests/1"), m.clone());
    routes.insert(format!("/v2/{repo}/manifests/{md}"), m);
    routes.insert(
        format!("/v2/{repo}/blobs/{}", sha256(config.as_bytes())),
        (200, "application/octet-stream".into(), config.into_bytes()),
    );
    routes.insert(
        format!("/v2/{repo}/blobs/{}", sha256(layer)),
        (200, "application/octet-stream".into(), layer.to_vec()),
    );
    md
}

fn nothing_left(d: &Daemon, ns: &str) {
    assert!(
        ok(d.ctr(&["-n", ns, "images", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert!(
        ok(d.ctr(&["-n", ns, "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    // The snapshots go with the collection the failed pull scheduled.
    berth_e2e::wait_for("the pull's snapshots collected", || {
        ok(d.ctr(&["-n", ns, "snapshots", "ls"])).lines().count() == 1
    });
}

#[test]
fn lying_and_hostile_registries_are_clear_errors() {
    let mut routes = HashMap::new();
    let (layer, diff_id) = tar_gz(&[("etc/hello", b"hi\n")]);
    // 1. A manifest whose bytes do not hash to the digest the tag resolved to.
    let md = image("lie/digest", &layer, &diff_id, None, &mut routes);
    // (Same length, one byte different.)
    let body = &mut routes
        .get_mut(&format!("/v2/lie/digest/manifests/{md}"))
        .unwrap()
        .2;
    let at = body.iter().position(|&b| b == b'2').unwrap();
    body[at] = b'3';
    // 2. A blob longer than its descriptor says.
    image(
        "lie/size",
        &layer,
        &diff_id,
        Some(layer.len() - 10),
        &mut routes,
    );
    // 3. Garbage where the manifest should be (with a matching digest).
    let garbage = b"\x00\x01 this is not JSON".to_vec();
    routes.insert(
        "/v2/garbage/img/manifests/1".into(),
        (200, MANIFEST.into(), garbage.clone()),
    );
    routes.insert(
        format!("/v2/garbage/img/manifests/{}", sha256(&garbage)),
        (200, MANIFEST.into(), garbage),
    );
    // 4. A server error.
    routes.insert(
        "/v2/broken/img/manifests/1".into(),
        (500, "text/plain".into(), b"database on fire".to_vec()),
    );
    // 5. A layer that climbs out of its root.
    let (evil, evil_id) = tar_gz(&[("../../escaped-by-layer", b"gotcha\n")]);
    image("evil/img", &evil, &evil_id, None, &mut routes);
    // 6. A layer whose content does not match the config's diff id.
    image(
        "lie/diffid",
        &layer,
        &sha256(b"something else"),
        None,
        &mut routes,
    );

    let reg = FakeRegistry::start(routes);
    let d = Daemon::start();
    let cases = [
        ("lie/digest", "digest mismatch"),
        ("lie/size", "size mismatch"),
        ("garbage/img", "parsing manifest"),
        ("broken/img", "500"),
        ("evil/img", "climbs out"),
        ("lie/diffid", "does not match the config's diff id"),
        ("missing/img", "not found"),
    ];
    for (repo, want) in cases {
        let reference = format!("{}/{repo}:1", reg.host);
        let e = fails(d.berthctl(&["-n", "h", "pull", "--plain", &reference]));
        assert!(e.contains(want), "{repo}: want {want:?} in {e}");
        nothing_left(&d, "h");
    }
    // Nothing was written outside the snapshot directories.
    let root = d.root();
    assert!(!root.join("escaped-by-layer").exists());
    assert!(!root.join("snapshots").join("escaped-by-layer").exists());
    assert!(!root.parent().unwrap().join("escaped-by-layer").exists());
    assert!(!std::path::Path::new("/escaped-by-layer").exists());
}

#[test]
fn bearer_tokens_and_mirrors() {
    let mut routes = HashMap::new();
    let (layer, diff_id) = tar_gz(&[("etc/hello", b"token\n")]);
    image("auth/img", &layer, &diff_id, None, &mut routes);
    let reg = FakeRegistry::start_with_token(routes.clone(), Some("t0k3n"));
    let d = Daemon::start();
    // The registry's challenge sends us to its token server; the token opens the repository.
    let out = ok(d.berthctl(&[
        "-n",
        "b",
        "pull",
        "--plain",
        &format!("{}/auth/img:1", reg.host),
    ]));
    assert!(out.contains("pulled and unpacked"), "{out}");

    // A mirror in hosts.toml serves a registry that does not exist.
    let mirror = FakeRegistry::start(routes);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("registry.invalid");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry.invalid\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host
        ),
    )
    .unwrap();
    let out = ok(d.berthctl(&[
        "-n",
        "m",
        "pull",
        "--plain",
        "--hosts-dir",
        dir.path().to_str().unwrap(),
        "registry.invalid/auth/img:1",
    ]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    // Without the mirror: a clear error naming the registry.
    let empty = tempfile::tempdir().unwrap();
    let e = fails(d.berthctl(&[
        "-n",
        "m",
        "pull",
        "--plain",
        "--hosts-dir",
        empty.path().to_str().unwrap(),
        "registry.invalid/auth/img:2",
    ]));
    assert!(e.contains("registry.invalid"), "{e}");
}

#[test]
fn concurrent_pulls_of_one_image_share_the_work() {
    let mut routes = HashMap::new();
    let big: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (layer, diff_id) = tar_gz(&[("data/big.bin", &big)]);
    image("same/img", &layer, &diff_id, None, &mut routes);
    let reg = FakeRegistry::start(routes);
    let proxy = berth_e2e::SlowProxy::start(&reg.host, 4 << 20, None);
    let d = Daemon::start();
    let reference = format!("{}/same/img:1", proxy.host);
    let pulls: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(berth_e2e::bin("berthctl"))
                .args([
                    "--address",
                    d.sock.to_str().unwrap(),
                    "-n",
                    "c",
                    "pull",
                    "--plain",
                    &reference,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snaps = ok(d.ctr(&["-n", "c", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 2, "one layer, one snapshot: {snaps}");
    assert!(!snaps.contains("extract"), "{snaps}");
    let check = ok(d.ctr(&["-n", "c", "images", "check"]));
    assert!(check.trim_end().ends_with("true"), "{check}");
    assert!(ok(d.ctr(&["-n", "c", "content", "active"])).lines().count() <= 1);
}
