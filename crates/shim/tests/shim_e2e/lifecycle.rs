//! Create → Start → Wait → Delete → Shutdown, with stdout/stderr through FIFOs, exit codes,
//! events in order, and nothing left behind.

use std::time::Duration;

use berth_api::containerd::events::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use berth_api::containerd::task::v2::{StateRequest, WaitRequest};
use berth_api::containerd::v1::types::Status as TaskStatus;
use berth_ttrpc::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_wait_delete() {
    let mut w = World::new("life");
    // Enough output to fill pipes and FIFOs many times over: nothing may be lost.
    let script = "echo out-line; echo err-line >&2; yes 0123456789abcdef | head -c 3000000; exit 3";
    bundle(&w.bundle, &["sh", "-c", script], false, &w.cgroup);
    let stdout = mkfifo(&w.t().join("stdout"));
    let stderr = mkfifo(&w.t().join("stderr"));
    let out_r = open_output(&stdout);
    let err_r = open_output(&stderr);
    let task = w.start_shim().await;
    assert_eq!(
        std::fs::read_to_string(w.bundle.join("address")).unwrap(),
        w.address,
        "address file in the bundle"
    );

    let st = task
        .state(
            &opts(),
            &StateRequest {
                id: "no-such-task".into(),
                exec_id: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st}");

    let created = task
        .create(&opts(), &w.create_request(&stdout, &stderr, "", false))
        .await
        .unwrap();
    assert!(created.pid > 0);
    // CVE-2019-5736: the shim (whose clone the container's process is until its execve, when
    // the runtime runs in-process) runs from a read-only mount of its binary, so its exe link
    // cannot be reopened for writing even once no process runs the binary (ETXTBSY) any more.
    let shim_exe = std::ffi::CString::new(format!("/proc/{}/exe", w.shim_pid.unwrap())).unwrap();
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we own from a valid path.
    let rc = unsafe { libc::statvfs(shim_exe.as_ptr(), &mut vfs) };
    assert_eq!(rc, 0);
    assert_ne!(
        vfs.f_flag & libc::ST_RDONLY,
        0,
        "the shim's binary is on a writable mount"
    );
    // ...without a mount namespace of its own (which would cut the containers' bidirectional
    // volumes off the host's propagation).
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/mnt", w.shim_pid.unwrap())).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the shim made a mount namespace"
    );
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/exe", w.shim_pid.unwrap()));
    assert!(write.is_err(), "the shim's binary opened for writing");
    let out = collect(out_r);
    let err = collect(err_r);
    let state = task.state(&opts(), &w.state_req("")).await.unwrap();
    assert_eq!(state.status, TaskStatus::Created as i32);
    assert_eq!(state.pid, created.pid);
    assert_eq!(state.stdout, stdout);

    // Wait before Start blocks until the exit, as ctr relies on.
    let waiter = {
        let task = task.clone();
        let id = w.id.clone();
        tokio::spawn(async move {
            task.wait(
                &opts(),
                &WaitRequest {
                    id,
                    exec_id: String::new(),
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "Wait returned before Start");
    let started = task.start(&opts(), &w.start_req("")).await.unwrap();
    assert_eq!(started.pid, created.pid);
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited.exit_status, 3);
    assert!(waited.exited_at.is_some());

    // By the time Wait returns, every byte is in the FIFOs and they are closed.
    let out = tokio::time::timeout(Duration::from_secs(5), out)
        .await
        .expect("stdout EOF")
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), err)
        .await
        .expect("stderr EOF")
        .unwrap();
    assert_eq!(err, b"err-line\n");
    assert!(out.starts_with(b"out-line\n"));
    assert_eq!(
        out.len(),
        "out-line\n".len() + 3_000_000,
        "stdout lost or gained bytes"
    );

    let state = task.state(&opts(), &w.state_req("")).await.unwrap();
    assert_eq!(state.status, TaskStatus::Stopped as i32);
    assert_eq!(state.exit_status, 3);

    // A second Start is refused.
    let st = task.start(&opts(), &w.start_req("")).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st}");

    let deleted = task.delete(&opts(), &w.delete_req("")).await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (created.pid, 3));
    let st = task.state(&opts(), &w.state_req("")).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "state after delete: {st}");

    let evs = w.events.expect(&INIT_EVENTS).await;
    let c: TaskCreate = payload(&evs[0]);
    assert_eq!(
        (c.container_id.as_str(), c.pid),
        (w.id.as_str(), created.pid)
    );
    assert_eq!(c.io.unwrap().stdout, stdout);
    assert_eq!(c.rootfs.len(), 1);
    let s: TaskStart = payload(&evs[1]);
    assert_eq!(s.pid, created.pid);
    let e: TaskExit = payload(&evs[2]);
    assert_eq!(
        (e.id.as_str(), e.pid, e.exit_status),
        (w.id.as_str(), created.pid, 3)
    );
    let d: TaskDelete = payload(&evs[3]);
    assert_eq!((d.pid, d.exit_status), (created.pid, 3));

    w.shutdown(&task).await;
    assert!(!alive(created.pid as i32));
    w.assert_clean();
    w.events.expect_none().await;
    w.events.stop().await;
}

/// A created task that is deleted without being started: the runtime kills the waiting init,
/// its exit is reported, then the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_created_task() {
    let mut w = World::new("created");
    bundle(&w.bundle, &["sh", "-c", "echo never"], false, &w.cgroup);
    let task = w.start_shim().await;
    let created = task
        .create(&opts(), &w.create_request("", "", "", false))
        .await
        .unwrap();
    assert!(alive(created.pid as i32));
    let deleted = task.delete(&opts(), &w.delete_req("")).await.unwrap();
    assert_eq!(deleted.pid, created.pid);
    assert_eq!(deleted.exit_status, 137);
    w.events
        .expect(&["/tasks/create", "/tasks/exit", "/tasks/delete"])
        .await;
    w.shutdown(&task).await;
    assert!(!alive(created.pid as i32));
    w.assert_clean();
}
