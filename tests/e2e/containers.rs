//! The Containers service: `ctr containers create/ls/info/label/rm` against berthd, events,
//! containers as GC roots, and containerd's errors for bad requests.

use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, UpdateContainerRequest, container::Runtime,
};
use berth_e2e::{Daemon, busybox_oci_archive, fails, ok, with_ns};

fn spec() -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: br#"{"ociVersion":"1.1.0"}"#.to_vec(),
    }
}

#[test]
fn ctr_containers_lifecycle_and_gc_roots() {
    let d = Daemon::start();
    d.wait_startup_collection();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "docker.io/library/box:1", &[("etc/motd", b"c\n")]);
    ok(d.ctr(&["-n", "c", "images", "import", archive.to_str().unwrap()]));
    let mut events = berth_e2e::Events::start(&d, "ctr");
    ok(d.ctr(&["-n", "c", "containers", "create", &img.name, "web", "sh"]));
    let ls = ok(d.ctr(&["-n", "c", "containers", "ls"]));
    assert!(
        ls.contains("web") && ls.contains(&img.name) && ls.contains("io.containerd.runc.v2"),
        "{ls}"
    );
    let info = ok(d.ctr(&["-n", "c", "containers", "info", "web"]));
    assert!(info.contains("\"SnapshotKey\": \"web\""), "{info}");
    assert!(info.contains("\"Snapshotter\": \"overlayfs\""), "{info}");
    ok(d.ctr(&["-n", "c", "containers", "label", "web", "tier=front"]));
    let ls = ok(d.ctr(&["-n", "c", "containers", "ls", "labels.tier==front"]));
    assert!(ls.contains("web"), "{ls}");
    let e = fails(d.ctr(&["-n", "c", "containers", "create", &img.name, "web", "sh"]));
    assert!(e.contains("already exists"), "{e}");

    // The container holds its snapshot (and through it, the image's layers) after the image goes.
    ok(d.ctr(&["-n", "c", "images", "rm", "--sync", &img.name]));
    let snaps = ok(d.ctr(&["-n", "c", "snapshots", "ls"]));
    assert!(snaps.lines().any(|l| l.starts_with("web ")), "{snaps}");
    assert_eq!(snaps.lines().count(), 4, "web and its two parents: {snaps}");

    ok(d.ctr(&["-n", "c", "containers", "rm", "web"]));
    assert!(
        ok(d.ctr(&["-n", "c", "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    // The collection the removal scheduled takes the snapshots.
    berth_e2e::wait_for("the snapshots collected", || {
        ok(d.ctr(&["-n", "c", "snapshots", "ls"])).lines().count() == 1
    });
    let e = fails(d.ctr(&["-n", "c", "containers", "rm", "web"]));
    assert!(e.contains("not found"), "{e}");

    let out = events.sync().join("\n");
    for topic in [
        "/containers/create",
        "/containers/update",
        "/containers/delete",
    ] {
        assert!(out.contains(topic), "{topic} in {out}");
    }
}

#[tokio::test]
async fn bad_container_requests_get_containerds_codes() {
    let d = Daemon::start();
    let mut c = ContainersClient::new(d.channel().await);
    let good = Container {
        id: "x".into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(spec()),
        ..Default::default()
    };
    let create = |c: Container| with_ns("bad", CreateContainerRequest { container: Some(c) });
    let cases = [
        (
            Container {
                spec: None,
                ..good.clone()
            },
            "container.spec",
        ),
        (
            Container {
                runtime: None,
                ..good.clone()
            },
            "container.runtime.name",
        ),
        (
            Container {
                id: "a/b".into(),
                ..good.clone()
            },
            "container.id",
        ),
        (
            Container {
                snapshot_key: "k".into(),
                ..good.clone()
            },
            "container.snapshotter",
        ),
    ];
    for (bad, field) in cases {
        let e = c.create(create(bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    c.create(create(good.clone())).await.unwrap();
    let e = c.create(create(good.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let changed = Container {
        runtime: Some(Runtime {
            name: "io.containerd.other.v1".into(),
            options: None,
        }),
        ..good.clone()
    };
    let e = c
        .update(with_ns(
            "bad",
            UpdateContainerRequest {
                container: Some(changed),
                update_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("immutable"), "{}", e.message());
    let e = c
        .update(with_ns(
            "bad",
            UpdateContainerRequest {
                container: Some(good.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["runtime".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .update(with_ns(
            "bad",
            UpdateContainerRequest {
                container: Some(Container {
                    id: "missing".into(),
                    ..good
                }),
                update_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
