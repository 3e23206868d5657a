//! The shim v2 binary protocol: what `start` prints for each daemon generation, the v3 task
//! service, the `delete` action after a dead shim, the socket's permissions, and bad input.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_api::containerd::runc::v1::Options;
use berth_api::containerd::runtime::bootstrap::v1::{BootstrapParams, BootstrapResult, Extension};
use berth_api::containerd::task::v2::{CreateTaskRequest, DeleteResponse};
use berth_api::containerd::task::v3;
use berth_ttrpc::{Client, Code};
use prost::Message;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_prints_what_each_daemon_reads() {
    // containerd 1.7 and 2.0-2.2: MAX_SHIM_VERSION set, JSON back.
    let mut w = World::new("json");
    bundle(&w.bundle, &["true"], false, &w.cgroup);
    let out = w.start_shim_raw(&[("MAX_SHIM_VERSION", "2")], &w.options().encode_to_vec());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["version"], 2);
    assert_eq!(v["protocol"], "ttrpc");
    w.address = v["address"].as_str().unwrap().to_string();
    let sock = Path::new(w.address.strip_prefix("unix://").unwrap()).to_path_buf();
    // A filesystem socket, 0600, in a 0700 directory (never an abstract one).
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let task = w.connect().await;
    // A second start for the same id finds the live shim and refuses.
    let again = w.start_shim_raw(&[], &w.options().encode_to_vec());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already serving"));
    w.shutdown(&task).await;
    w.assert_clean();

    // containerd 2.3: BootstrapParams in, BootstrapResult out; the v3 service answers.
    let mut w = World::new("boot");
    bundle(&w.bundle, &["sh", "-c", "exit 4"], false, &w.cgroup);
    let params = BootstrapParams {
        instance_id: w.id.clone(),
        namespace: NS.into(),
        containerd_version: "2.3.0".into(),
        containerd_ttrpc_address: w.events.path.display().to_string(),
        containerd_grpc_address: w.daemon_address().display().to_string(),
        extensions: vec![Extension {
            value: Some(w.options()),
        }],
        socket_dir: Some(w.t().join("sockets").display().to_string()),
        ..Default::default()
    };
    let out = w.start_shim_raw(&[("MAX_SHIM_VERSION", "2")], &params.encode_to_vec());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = BootstrapResult::decode(out.stdout.as_slice()).expect("BootstrapResult on stdout");
    assert_eq!((r.version, r.protocol.as_str()), (3, "ttrpc"));
    assert!(
        r.address
            .starts_with(&format!("unix://{}/", w.t().join("sockets").display()))
    );
    w.address = r.address.clone();
    let _v2 = w.connect().await;
    let path = w.address.strip_prefix("unix://").unwrap().to_string();
    let v3c = v3::task_ttrpc::TaskClient::new(Client::connect(&path).await.unwrap());
    let mut req = w.create_request("", "", "", false);
    req.rootfs.clear();
    std::fs::create_dir_all(w.bundle.join("rootfs/bin")).unwrap();
    Command::new("cp")
        .arg("-a")
        .arg(w.image.join("."))
        .arg(w.bundle.join("rootfs"))
        .status()
        .unwrap();
    let v3req = v3::CreateTaskRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    let pid = v3c.create(&opts(), &v3req).await.unwrap().pid;
    v3c.start(
        &opts(),
        &v3::StartRequest {
            id: w.id.clone(),
            exec_id: String::new(),
        },
    )
    .await
    .unwrap();
    let waited = v3c
        .wait(
            &opts(),
            &v3::WaitRequest {
                id: w.id.clone(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 4);
    let d = v3c
        .delete(
            &opts(),
            &v3::DeleteRequest {
                id: w.id.clone(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 4));
    w.events.expect(&INIT_EVENTS).await;
    let _ = v3c
        .shutdown(
            &opts(),
            &v3::ShutdownRequest {
                id: w.id.clone(),
                now: false,
            },
        )
        .await;
    let spid = w.shim_pid.unwrap();
    assert!(wait_gone(spid, Duration::from_secs(10)).await);
    w.shim_pid = None;
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_action_cleans_up_after_a_dead_shim() {
    let mut w = World::new("dead");
    bundle(&w.bundle, &["sleep", "1000"], false, &w.cgroup);
    let task = w.start_shim().await;
    let pid = w.create_plain(&task).await;
    task.start(&opts(), &w.start_req("")).await.unwrap();
    let shim = w.shim_pid.take().unwrap();
    assert!(
        berth_runtime::pidfd::signal_if(shim, libc::SIGKILL, |p| crate::harness::works_in(
            p, &w.bundle
        )),
        "the shim exited before the test killed it"
    );
    assert!(wait_gone(shim, Duration::from_secs(5)).await);
    assert!(alive(pid as i32), "the container survives its shim");

    let out = Command::new(SHIM)
        .args(["-namespace", NS, "-address"])
        .arg(w.daemon_address())
        .args(["-publish-binary", "/bin/false", "-id", &w.id, "-bundle"])
        .arg(&w.bundle)
        .arg("delete")
        .current_dir(&w.bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::decode(out.stdout.as_slice()).expect("DeleteResponse on stdout");
    assert_eq!((resp.pid, resp.exit_status), (pid, 137));
    assert!(resp.exited_at.is_some());
    assert!(
        wait_gone(pid as i32, Duration::from_secs(5)).await,
        "container killed"
    );
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let mut w = World::new("bad");
    bundle(&w.bundle, &["/no/such/binary"], false, &w.cgroup);
    let task = w.start_shim().await;

    let st = task
        .create(
            &opts(),
            &CreateTaskRequest {
                id: w.id.clone(),
                bundle: "relative/path".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st}");

    // An id that would reach the runtime as a flag.
    let mut flag_id = w.create_request("", "", "", false);
    flag_id.id = "--help".into();
    let st = task.create(&opts(), &flag_id).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st}");

    let mut bad_opts = w.create_request("", "", "", false);
    bad_opts.options = Some(prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0xff, 0xff, 0xff],
    });
    let st = task.create(&opts(), &bad_opts).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st}");

    let mut no_runtime = w.create_request("", "", "", false);
    no_runtime.options = Some(prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: Options {
            binary_name: "/no/such/runc".into(),
            root: w.runc_root().display().to_string(),
            ..Default::default()
        }
        .encode_to_vec(),
    });
    let st = task.create(&opts(), &no_runtime).await.unwrap_err();
    assert!(st.message().contains("/no/such/runc"), "{st}");

    let mut binary_uri = w.create_request("binary:///usr/bin/logger", "", "", false);
    binary_uri.stdout = "binary:///usr/bin/logger".into();
    let st = task.create(&opts(), &binary_uri).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st}");

    // runc refuses a process that does not exist; its logged error comes back.
    let st = task
        .create(&opts(), &w.create_request("", "", "", false))
        .await
        .unwrap_err();
    assert!(st.message().contains("no such file or directory"), "{st}");
    let st = task.state(&opts(), &w.state_req("")).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");
    // Nothing was published for the failed creates, and nothing is left mounted.
    w.events.expect_none().await;
    w.shutdown(&task).await;
    w.assert_clean();
}

/// `-info` (containerd 2.x): RuntimeInfo with our name, the options given, and the runtime's
/// features document.
#[test]
fn info_flag_prints_runtime_info() {
    use std::io::Write;
    let opts = prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: Options {
            binary_name: "runc".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    };
    let mut child = Command::new(SHIM)
        .arg("-info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&opts.encode_to_vec())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let info = berth_api::containerd::types::RuntimeInfo::decode(out.stdout.as_slice()).unwrap();
    assert_eq!(info.name, "io.containerd.berth.v2");
    assert_eq!(info.options, Some(opts));
    let features = info.features.expect("features");
    assert!(features.type_url.ends_with("/features/Features"));
    let doc: serde_json::Value = serde_json::from_slice(&features.value).unwrap();
    assert!(doc["ociVersionMin"].is_string(), "{doc}");
}
