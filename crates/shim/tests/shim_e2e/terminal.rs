//! `terminal: true`: the runtime hands the pty master over the console socket; ResizePty sets its
//! size; input and output go through it.

use std::time::Duration;

use berth_api::containerd::task::v2::{CloseIoRequest, ExecProcessRequest, ResizePtyRequest};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_init_and_exec() {
    let mut w = World::new("tty");
    // Prints the terminal's size and name, then echoes one line of input.
    let script = "stty size; tty; read line; echo got:$line; exit 7";
    bundle(&w.bundle, &["sh", "-c", script], true, &w.cgroup);
    let stdin = mkfifo(&w.t().join("stdin"));
    let stdout = mkfifo(&w.t().join("stdout"));
    let out_r = open_output(&stdout);
    let task = w.start_shim().await;
    task.create(&opts(), &w.create_request(&stdout, "", &stdin, true))
        .await
        .unwrap();
    let out = collect(out_r);
    task.resize_pty(
        &opts(),
        &ResizePtyRequest {
            id: w.id.clone(),
            exec_id: String::new(),
            width: 123,
            height: 45,
        },
    )
    .await
    .unwrap();
    task.start(&opts(), &w.start_req("")).await.unwrap();
    // An exec with its own terminal while the init waits.
    let exec_out = mkfifo(&w.t().join("exec-out"));
    let exec_r = open_output(&exec_out);
    task.exec(
        &opts(),
        &ExecProcessRequest {
            id: w.id.clone(),
            exec_id: "tty-exec".into(),
            terminal: true,
            stdin: String::new(),
            stdout: exec_out.clone(),
            stderr: String::new(),
            spec: Some(process_spec(&w.bundle, &["sh", "-c", "tty; exit 0"], true)),
        },
    )
    .await
    .unwrap();
    let exec_collect = collect(exec_r);
    task.start(&opts(), &w.start_req("tty-exec")).await.unwrap();
    let e = task.wait(&opts(), &w.wait_req("tty-exec")).await.unwrap();
    assert_eq!(e.exit_status, 0);
    let exec_text = String::from_utf8_lossy(&exec_collect.await.unwrap()).into_owned();
    assert!(
        exec_text.contains("/dev/pts/"),
        "exec output: {exec_text:?}"
    );

    let mut input = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&stdin)
        .unwrap();
    input.write_all(b"hello\n").await.unwrap();
    let waited = task.wait(&opts(), &w.wait_req("")).await.unwrap();
    assert_eq!(waited.exit_status, 7);
    task.close_io(
        &opts(),
        &CloseIoRequest {
            id: w.id.clone(),
            exec_id: String::new(),
            stdin: true,
        },
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(
        &tokio::time::timeout(Duration::from_secs(10), out)
            .await
            .unwrap()
            .unwrap(),
    )
    .into_owned();
    assert!(
        text.contains("45 123"),
        "stty size through the pty: {text:?}"
    );
    assert!(text.contains("/dev/pts/"), "tty: {text:?}");
    assert!(
        text.contains("got:hello"),
        "input through the pty: {text:?}"
    );
    task.delete(&opts(), &w.delete_req("")).await.unwrap();
    w.events
        .expect(&[
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete",
        ])
        .await;
    w.shutdown(&task).await;
    w.assert_clean();
}
