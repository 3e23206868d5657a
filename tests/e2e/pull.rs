//! `ctr images pull --plain-http` against berthd, from Debian's docker-registry on loopback: the
//! client-side pull (leases, Content.Write, Images.Create, Snapshots, Diff.Apply) end to end.

use berth_e2e::{Daemon, Registry, busybox_oci_archive, ok};

#[test]
fn ctr_pull_from_a_local_registry_unpacks() {
    let reg = Registry::start();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "pulled:1", &[("etc/motd", b"pulled\n")]);
    let reference = reg.push(&archive, "library/pulled:1");
    let out = ok(d.ctr(&["-n", "pull", "images", "pull", "--plain-http", &reference]));
    assert!(out.contains("unpacking") && out.contains("done"), "{out}");
    let ls = ok(d.ctr(&["-n", "pull", "images", "ls"]));
    assert!(
        ls.contains(&reference) && ls.contains(&img.manifest),
        "{ls}"
    );
    let check = ok(d.ctr(&["-n", "pull", "images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.trim_end().ends_with("true")),
        "{check}"
    );
    let snaps = ok(d.ctr(&["-n", "pull", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 3, "two layers, committed: {snaps}");
    // Pulling again is a no-op that still succeeds.
    ok(d.ctr(&["-n", "pull", "images", "pull", "--plain-http", &reference]));
    // Every blob on disk matches its digest, and the leases ctr used are gone.
    let blobs = berth_e2e::blobs_on_disk(&d.root());
    assert!(blobs.contains_key(&img.layers[0]) && blobs.contains_key(&img.config));
    assert!(
        ok(d.ctr(&["-n", "pull", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
}

#[test]
fn berthctl_pull_unpacks_server_side() {
    let reg = Registry::start();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "served:1", &[("etc/motd", b"server side\n")]);
    let reference = reg.push(&archive, "library/served:1");
    let out = ok(d.berthctl(&["-n", "pull", "pull", "--plain", &reference]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    // ctr sees an unpacked image with containerd's labels.
    let check = ok(d.ctr(&["-n", "pull", "images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.trim_end().ends_with("true")),
        "{check}"
    );
    let ls = ok(d.ctr(&["-n", "pull", "images", "ls"]));
    assert!(ls.contains(&img.manifest), "{ls}");
    let info = ok(d.ctr(&["-n", "pull", "content", "ls"]));
    assert!(info.contains("containerd.io/uncompressed="), "{info}");
    assert!(
        info.contains("containerd.io/gc.ref.snapshot.overlayfs="),
        "{info}"
    );
    let snaps = ok(d.ctr(&["-n", "pull", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 3, "two committed layers: {snaps}");
    assert!(
        !snaps.contains("extract-"),
        "no extraction snapshot left: {snaps}"
    );
    // The top snapshot holds the image's files: view it and look.
    let top = snaps
        .lines()
        .skip(1)
        .find(|l| !l.split_whitespace().nth(1).unwrap_or("").is_empty() && l.contains("sha256"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let _ = top;
    // A second pull reuses everything.
    let again = ok(d.berthctl(&["-n", "pull", "pull", "--plain", &reference]));
    assert!(again.contains("pulled and unpacked"), "{again}");
    assert!(
        ok(d.ctr(&["-n", "pull", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    // Unknown tag and unknown registry fail clearly.
    let missing =
        berth_e2e::fails(d.berthctl(&["-n", "pull", "pull", &format!("{reference}-nope")]));
    assert!(missing.contains("not found"), "{missing}");
}

#[test]
fn berthctl_pull_from_a_tls_registry_with_basic_auth() {
    let (reg, sec) = Registry::start_secure();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "secure:1", &[("etc/motd", b"tls\n")]);
    let reference = reg.push(&archive, "team/secure:1");
    // hosts.toml trusts the test CA for this registry.
    let certs = dir.path().join("certs.d");
    let host_dir = certs.join(&reg.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            reg.host,
            sec.ca.display()
        ),
    )
    .unwrap();
    let config = format!(
        "[registry]\nconfig_path = \"{}\"\ndocker_config = \"\"\n",
        certs.display()
    );
    let d = Daemon::start_with_config(&config, &[]);
    // No credentials: the registry's challenge is answered with a clear error.
    let e = berth_e2e::fails(d.berthctl(&["-n", "s", "pull", "--plain", &reference]));
    assert!(e.contains("user name and password"), "{e}");
    let e = berth_e2e::fails(d.berthctl(&[
        "-n",
        "s",
        "pull",
        "--plain",
        "--user",
        "berth:wrong",
        &reference,
    ]));
    assert!(e.contains("refused the credentials"), "{e}");
    // Credentials over the Transfer auth stream.
    let user = format!("{}:{}", sec.user, sec.password);
    let out = ok(d.berthctl(&["-n", "s", "pull", "--plain", "--user", &user, &reference]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    let ls = ok(d.ctr(&["-n", "s", "images", "ls"]));
    assert!(ls.contains(&img.manifest), "{ls}");
    // Without the CA the certificate is not trusted.
    let empty = dir.path().join("no-ca");
    std::fs::create_dir_all(empty.join(&reg.host)).unwrap();
    std::fs::write(
        empty.join(&reg.host).join("hosts.toml"),
        format!("server = \"https://{}\"\n", reg.host),
    )
    .unwrap();
    let e = berth_e2e::fails(d.berthctl(&[
        "-n",
        "s",
        "pull",
        "--plain",
        "--user",
        &user,
        "--hosts-dir",
        empty.to_str().unwrap(),
        &reference,
    ]));
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    drop(d);

    // Credentials from the config file, and from a Docker config.json.
    let docker = dir.path().join("docker.json");
    let auth = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(user.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    std::fs::write(
        &docker,
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\"}}}}}}",
            reg.host,
            String::from_utf8_lossy(&auth.stdout)
        ),
    )
    .unwrap();
    for config in [
        format!(
            "[registry]\nconfig_path = \"{}\"\ndocker_config = \"{}\"\n",
            certs.display(),
            docker.display()
        ),
        format!(
            "[registry]\nconfig_path = \"{}\"\ndocker_config = \"\"\n[registry.auths.\"{}\"]\nusername = \"{}\"\npassword = \"{}\"\n",
            certs.display(),
            reg.host,
            sec.user,
            sec.password
        ),
    ] {
        let d = Daemon::start_with_config(&config, &[]);
        let out = ok(d.berthctl(&["-n", "s", "pull", "--plain", &reference]));
        assert!(out.contains("pulled and unpacked"), "{out}");
    }
}

#[test]
fn berthctl_push_then_pull_back() {
    let reg = Registry::start();
    let (secure, sec) = Registry::start_secure();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "pushed:1", &[("etc/motd", b"round trip\n")]);
    let reference = reg.push(&archive, "library/orig:1");
    ok(d.berthctl(&["-n", "push", "pull", "--plain", &reference]));
    // To another repository of the same registry, then back into a fresh namespace.
    let copy = format!("{}/copies/pushed:2", reg.host);
    let out = ok(d.berthctl(&["-n", "push", "push", "--plain", &reference, &copy]));
    assert!(out.contains("pushed to"), "{out}");
    let back = ok(d.berthctl(&["-n", "back", "pull", "--plain", &copy]));
    assert!(back.contains("pulled and unpacked"), "{back}");
    let ls = ok(d.ctr(&["-n", "back", "images", "ls"]));
    assert!(ls.contains(&img.manifest), "same manifest digest: {ls}");
    // Pushing again finds every blob there already.
    ok(d.berthctl(&["-n", "push", "push", "--plain", &reference, &copy]));
    // To the TLS registry with basic auth, trusting its CA through hosts.toml.
    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(certs.join(&secure.host)).unwrap();
    std::fs::write(
        certs.join(&secure.host).join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            secure.host,
            sec.ca.display()
        ),
    )
    .unwrap();
    let remote = format!("{}/team/pushed:3", secure.host);
    let hosts = certs.to_str().unwrap();
    let e = berth_e2e::fails(d.berthctl(&[
        "-n",
        "push",
        "push",
        "--plain",
        "--hosts-dir",
        hosts,
        &reference,
        &remote,
    ]));
    assert!(e.contains("user name and password"), "{e}");
    let user = format!("{}:{}", sec.user, sec.password);
    ok(d.berthctl(&[
        "-n",
        "push",
        "push",
        "--plain",
        "--hosts-dir",
        hosts,
        "--user",
        &user,
        &reference,
        &remote,
    ]));
    let back = ok(d.berthctl(&[
        "-n",
        "back2",
        "pull",
        "--plain",
        "--hosts-dir",
        hosts,
        "--user",
        &user,
        &remote,
    ]));
    assert!(back.contains("pulled and unpacked"), "{back}");
    // An image that does not exist here.
    let e = berth_e2e::fails(d.berthctl(&["-n", "push", "push", "--plain", "nope:1", &copy]));
    assert!(e.contains("not found"), "{e}");
}
