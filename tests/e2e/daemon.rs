//! berthd as a process, driven by Debian's `ctr`, `berthctl` and raw gRPC.

use berth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest,
    Namespace, UpdateNamespaceRequest,
};
use berth_e2e::{Daemon, fails, ok};
use tonic::Code;

#[test]
fn ctr_version_namespaces_and_plugins() {
    let d = Daemon::start();
    let v = ok(d.ctr(&["version"]));
    assert!(v.contains("Server:"), "{v}");
    assert!(v.contains("Version:  v1.7.24+berth."), "{v}");
    assert!(v.contains("UUID: "), "{v}");

    ok(d.ctr(&["namespaces", "create", "e2e-one", "team=storage"]));
    ok(d.ctr(&["namespaces", "create", "e2e-two"]));
    let e = fails(d.ctr(&["namespaces", "create", "e2e-one"]));
    assert!(e.contains("already exists"), "{e}");
    ok(d.ctr(&["namespaces", "label", "e2e-two", "color=blue", "size=xl"]));
    ok(d.ctr(&["namespaces", "label", "e2e-two", "size="]));
    let ls = ok(d.ctr(&["namespaces", "ls"]));
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "LABELS"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["e2e-one", "team=storage"]),
        "{ls}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["e2e-two", "color=blue"]),
        "{ls}"
    );
    assert_eq!(ok(d.ctr(&["namespaces", "ls", "-q"])), "e2e-one\ne2e-two\n");

    assert_eq!(ok(d.ctr(&["namespaces", "rm", "e2e-one"])), "e2e-one\n");
    // ctr treats NotFound on rm as done (it prints the name); the daemon must answer NotFound,
    // not an error ctr would report.
    let out = d.ctr(&["namespaces", "rm", "e2e-missing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(d.ctr(&["namespaces", "ls", "-q"])), "e2e-two\n");
    let e = fails(d.ctr(&["namespaces", "create", "bad/name"]));
    assert!(e.contains("must match"), "{e}");

    let plugins = ok(d.ctr(&["plugins", "ls"]));
    let rows: Vec<Vec<&str>> = plugins
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["TYPE", "ID", "PLATFORMS", "STATUS"]);
    for id in ["version", "namespaces", "introspection", "healthcheck"] {
        assert!(
            rows.contains(&vec!["io.containerd.grpc.v1", id, "-", "ok"]),
            "{plugins}"
        );
    }
    let filtered = ok(d.ctr(&["plugins", "ls", "type==io.containerd.metadata.v1"]));
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    let detailed = ok(d.ctr(&["plugins", "ls", "-d", "id==namespaces"]));
    assert!(
        detailed.contains("io.containerd.metadata.v1"),
        "requires shown: {detailed}"
    );
}

#[test]
fn berthctl_version_namespaces_and_plugins() {
    let d = Daemon::start();
    let v = ok(d.berthctl(&["version"]));
    assert!(v.contains("v1.7.24+berth."), "{v}");
    ok(d.berthctl(&["namespaces", "create", "alpha", "a=1"]));
    ok(d.berthctl(&["ns", "label", "alpha", "b=2"]));
    assert_eq!(ok(d.berthctl(&["ns", "label", "alpha"])), "a=1\nb=2\n");
    ok(d.berthctl(&["ns", "label", "alpha", "a"]));
    let ls = ok(d.berthctl(&["ns", "ls"]));
    assert_eq!(ls, "NAME  LABELS \nalpha b=2    \n");
    let e = fails(d.berthctl(&["ns", "create", "alpha"]));
    assert!(e.contains("AlreadyExists"), "{e}");
    let e = fails(d.berthctl(&["ns", "rm", "nope"]));
    assert!(e.contains("NotFound"), "{e}");
    assert_eq!(ok(d.berthctl(&["ns", "rm", "alpha"])), "alpha\n");
    let p = ok(d.berthctl(&["plugins", "ls", "id==namespaces"]));
    assert_eq!(p.lines().count(), 2, "{p}");
    let e = fails(d.berthctl(&["plugins", "ls", "id=="]));
    assert!(
        e.contains("InvalidArgument") && e.contains("filters"),
        "{e}"
    );
    let e = fails(
        std::process::Command::new(berth_e2e::bin("berthctl"))
            .args(["-a", "/nonexistent/berthd.sock", "version"])
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("cannot reach berthd at /nonexistent/berthd.sock"),
        "{e}"
    );
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(st) => st.code(),
    }
}

#[tokio::test]
async fn grpc_codes_match_containerd() {
    let d = Daemon::start();
    let mut ns = NamespacesClient::new(d.channel().await);

    // Get of a missing namespace answers OK with empty labels.
    let got = ns
        .get(GetNamespaceRequest {
            name: "ghost".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.namespace.unwrap().name, "ghost");

    assert_eq!(
        code(
            ns.delete(DeleteNamespaceRequest {
                name: "ghost".into()
            })
            .await
        ),
        Code::NotFound
    );
    let create = |name: &str, labels: &[(&str, String)]| CreateNamespaceRequest {
        namespace: Some(Namespace {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }),
    };
    assert_eq!(
        code(ns.create(create("..", &[])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ns.create(create(&"x".repeat(77), &[])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ns.create(CreateNamespaceRequest { namespace: None }).await),
        Code::InvalidArgument
    );
    let big = "v".repeat(4096);
    let st = ns
        .create(create("biglabels", &[("k", big.clone())]))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("labels"), "{}", st.message());
    ns.create(create("real", &[("k", "v".into())]))
        .await
        .unwrap();
    assert_eq!(
        code(ns.create(create("real", &[])).await),
        Code::AlreadyExists
    );
    let st = ns
        .update(UpdateNamespaceRequest {
            namespace: Some(Namespace {
                name: "real".into(),
                labels: Default::default(),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = ns
        .list(ListNamespacesRequest {
            filter: "name==".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let only = ns
        .list(ListNamespacesRequest {
            filter: "labels.k==v".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.namespaces.len(), 1);

    // A malformed message: field 1 sent as a varint where a string is expected.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bogus {
        #[prost(uint64, tag = "1")]
        name: u64,
    }
    let mut raw = tonic::client::Grpc::new(d.channel().await);
    raw.ready().await.unwrap();
    let st = raw
        .unary::<Bogus, Bogus, _>(
            tonic::Request::new(Bogus { name: 7 }),
            "/containerd.services.namespaces.v1.Namespaces/Create"
                .parse()
                .unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Internal, "{st:?}");
    // Random garbage as the message body.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Blob {
        #[prost(bytes = "vec", tag = "1")]
        b: Vec<u8>,
    }
    for method in ["Create", "Get", "Update", "Delete", "List"] {
        let path = format!("/containerd.services.namespaces.v1.Namespaces/{method}");
        raw.ready().await.unwrap();
        let _ = raw
            .unary::<Blob, Blob, _>(
                tonic::Request::new(Blob { b: vec![0xff; 300] }),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await;
    }
    // Unknown service: Unimplemented.
    raw.ready().await.unwrap();
    let st = raw
        .unary::<Blob, Blob, _>(
            tonic::Request::new(Blob::default()),
            "/containerd.services.nothing.v1.Nothing/Get"
                .parse()
                .unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unimplemented);

    // The daemon is alive and its store intact.
    let names: Vec<String> = ns
        .list(ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["real"]);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[tokio::test]
async fn introspection_and_health() {
    let d = Daemon::start();
    let mut i = IntrospectionClient::new(d.channel().await);
    let s = i.server(()).await.unwrap().into_inner();
    assert_eq!(s.pid, u64::from(d.pid()));
    assert!(s.pidns > 0);
    let all = i
        .plugins(
            berth_api::containerd::services::introspection::v1::PluginsRequest { filters: vec![] },
        )
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert!(all.len() >= 5);
    let or = i
        .plugins(
            berth_api::containerd::services::introspection::v1::PluginsRequest {
                filters: vec!["id==version".into(), "id==namespaces".into()],
            },
        )
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(or.len(), 2);
    let st = i
        .plugin_info(
            berth_api::containerd::services::introspection::v1::PluginInfoRequest {
                r#type: "io.containerd.grpc.v1".into(),
                id: "nope".into(),
                options: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    let mut h = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn state_survives_restart_and_crash() {
    let mut d = Daemon::start();
    let uuid = IntrospectionClient::new(d.channel().await)
        .server(())
        .await
        .unwrap()
        .into_inner()
        .uuid;
    ok(d.ctr(&["namespaces", "create", "keep", "a=1"]));
    let st = d.stop();
    assert!(st.success(), "clean exit on SIGTERM: {st}\n{}", d.log());
    assert!(!d.sock.exists(), "socket removed on shutdown");
    d.restart();
    let uuid2 = IntrospectionClient::new(d.channel().await)
        .server(())
        .await
        .unwrap()
        .into_inner()
        .uuid;
    assert_eq!(uuid, uuid2, "UUID persists across restarts");
    ok(d.ctr(&["namespaces", "create", "crash"]));
    // An acknowledged change survives a crash: the daemon flushed before answering.
    d.kill9();
    d.restart();
    let ls = ok(d.ctr(&["namespaces", "ls", "-q"]));
    assert_eq!(ls, "crash\nkeep\n");
}

#[test]
fn socket_mode_and_refusing_a_second_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second daemon on the same socket refuses to steal it.
    let out = std::process::Command::new(berth_e2e::bin("berthd"))
        .args(["--root", &d.dir.path().join("root2").display().to_string()])
        .args([
            "--state",
            &d.dir.path().join("state2").display().to_string(),
        ])
        .args(["--address", &d.sock.display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and so does one on the same root (the database is locked).
    let out = std::process::Command::new(berth_e2e::bin("berthd"))
        .args(["--root", &d.root().display().to_string()])
        .args([
            "--state",
            &d.dir.path().join("state3").display().to_string(),
        ])
        .args([
            "--address",
            &d.dir.path().join("other.sock").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another berthd is using"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ok(d.ctr(&["version"])).contains("berth"));
}

#[test]
fn bad_config_files_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let default = ok(std::process::Command::new(berth_e2e::bin("berthd"))
        .args(["config", "default"])
        .output()
        .unwrap());
    assert!(default.contains("root = \"/var/lib/berth\""));
    assert!(default.contains("address = \"/run/berth/berthd.sock\""));
    let truncated = &default[..default.find("[grpc]").unwrap() + 4];
    let cases = [
        (truncated.to_string(), "line"),
        ("[grpc]\nadress = \"/tmp/x.sock\"\n".to_string(), "adress"),
        ("version = 7\n".to_string(), "version"),
        ("root = \"relative/dir\"\n".to_string(), "root"),
        ("[log]\nformat = \"yaml\"\n".to_string(), "yaml"),
        ("\u{0}\u{1}\u{2}".to_string(), "line"),
    ];
    for (text, needle) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let out = std::process::Command::new(berth_e2e::bin("berthd"))
            .arg("--config")
            .arg(&cfg)
            .args(["--root", &dir.path().join("root").display().to_string()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("config file") && err.contains(needle),
            "{text:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !dir.path().join("root").exists(),
            "nothing created on a bad config"
        );
    }
    std::fs::write(&cfg, [0xff, 0xfe, 0x00]).unwrap();
    let out = std::process::Command::new(berth_e2e::bin("berthd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    let out = std::process::Command::new(berth_e2e::bin("berthd"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn json_logs() {
    let mut d = Daemon::start_with(&["--log-format", "json"]);
    ok(d.ctr(&["namespaces", "create", "logged"]));
    d.stop();
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
    assert!(log.contains("namespace created"), "{log}");
}

/// The harness reports a daemon that dies while a test holds it as a failure of its own, with
/// its exit status (here a SIGKILL from outside), and keeps its log.
#[test]
fn a_daemon_that_dies_during_a_test_fails_it_with_its_status() {
    let d = Daemon::start();
    let pidfd = berth_runtime::pidfd::Pidfd::open(d.pid() as i32).expect("pidfd");
    pidfd.send_signal(libc::SIGKILL).expect("kill");
    // Readable once the whole process has exited (its leader's zombie state alone is not
    // enough: other threads may still be on their way out, and waitpid waits for them).
    assert!(pidfd.wait_exit(std::time::Duration::from_secs(20)));
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(d)))
        .expect_err("dropping a daemon that died must fail the test");
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("died during the test") && msg.contains("SIGKILL"),
        "{msg}"
    );
    let kept = berth_e2e::bin_dir().join("e2e-logs");
    assert!(
        std::fs::read_dir(&kept).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e
            .file_name()
            .to_string_lossy()
            .contains("a_daemon_that_dies")))),
        "log kept under {}",
        kept.display()
    );
}
