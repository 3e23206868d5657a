//! Multi-platform images: an OCI index with an amd64 and an arm64 manifest, pushed with
//! `skopeo copy --all`; berthctl pull picks the host's, or the one `--platform` names.

use berth_e2e::{Daemon, Registry, busybox_layer, ok, sha256};

fn gz_layer(path: &str, data: &[u8]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
    let raw = b.into_inner().unwrap();
    let id = sha256(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    (gz.finish().unwrap(), id)
}

/// Writes an OCI layout directory whose index lists one manifest per architecture; returns
/// the manifest digests by architecture.
fn multi_platform_layout(dir: &std::path::Path) -> Vec<(String, String)> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> String {
        let d = sha256(b);
        std::fs::write(blobs.join(&d[7..]), b).unwrap();
        d
    };
    let (bb, bb_id) = busybox_layer(&[]);
    let bb_digest = put(&bb);
    let mut manifests = Vec::new();
    let mut out = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (l, id) = gz_layer("etc/arch", arch.as_bytes());
        let ld = put(&l);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [bb_id, id]},
        }))
        .unwrap();
        let cd = put(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": bb_digest, "size": bb.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": l.len()},
            ],
        }))
        .unwrap();
        let md = put(&manifest);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
        out.push((arch.to_string(), md));
    }
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let id = put(&inner);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": inner.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    out
}

#[test]
fn pulls_pick_the_platform() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let digests = multi_platform_layout(&layout);
    let reference = format!("{}/multi/arch:1", reg.host);
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start();
    let host = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let digest_of = |a: &str| digests.iter().find(|(x, _)| x == a).unwrap().1.clone();

    ok(d.berthctl(&["-n", "host", "pull", "--plain", &reference]));
    let content = ok(d.ctr(&["-n", "host", "content", "ls", "-q"]));
    assert!(content.contains(&digest_of(host)), "{content}");
    assert!(!content.contains(&digest_of(other)), "{content}");
    let check = ok(d.ctr(&["-n", "host", "images", "check"]));
    assert!(check.trim_end().ends_with("true"), "{check}");

    let platform = format!("linux/{other}");
    ok(d.berthctl(&[
        "-n",
        "other",
        "pull",
        "--plain",
        "--platform",
        &platform,
        &reference,
    ]));
    let content = ok(d.ctr(&["-n", "other", "content", "ls", "-q"]));
    assert!(content.contains(&digest_of(other)), "{content}");
    assert!(!content.contains(&digest_of(host)), "{content}");

    let e = berth_e2e::fails(d.berthctl(&[
        "-n",
        "x",
        "pull",
        "--plain",
        "--platform",
        "linux/riscv64",
        &reference,
    ]));
    assert!(e.contains("no manifest for platform linux/riscv64"), "{e}");
    let e = berth_e2e::fails(d.berthctl(&["-n", "x", "pull", "--platform", "linux/", &reference]));
    assert!(e.contains("--platform"), "{e}");
}
