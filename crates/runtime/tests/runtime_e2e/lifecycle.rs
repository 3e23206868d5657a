//! create/start/state/kill/delete, run exit codes, hooks, pause/resume.

use std::process::Stdio;

use serde_json::json;

use crate::util::{Env, unique};

#[test]
fn create_start_kill_delete() {
    let env = Env::new();
    let b = env.bundle(&["sleep", "1000"]);
    let id = unique("life");
    let pid_file = env.tmp.path().join("pid");
    env.track(&id);
    env.ok(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let raw = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!raw.ends_with('\n'), "pid file has a newline: {raw:?}");
    let st = env.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"].as_i64().unwrap().to_string(), raw);
    assert_eq!(st["id"], json!(id));
    assert_eq!(st["bundle"], json!(b.dir.to_str().unwrap()));
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    b.assert_member(st["pid"].as_i64().unwrap());
    // The created init is the process we asked for, not yet executed.
    let err = env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(
        err.contains("container with given ID already exists"),
        "{err}"
    );
    env.ok(&["start", &id]);
    assert_eq!(env.status(&id), "running");
    let list = env.ok(&["list", "--format", "json"]);
    assert!(list.contains(&id), "{list}");
    let ps: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(ps, vec![raw.parse::<i32>().unwrap()]);
    let err = env.fail(&["delete", &id]);
    assert!(err.contains("running"), "{err}");
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    let err = env.fail(&["kill", &id, "TERM"]);
    assert!(err.contains("container not running"), "{err}");
    env.ok(&["delete", &id]);
    let err = env.fail(&["state", &id]);
    assert!(err.contains("container does not exist"), "{err}");
    assert!(!b.cgroup_exists(), "cgroup left behind");
    env.assert_no_mounts();
    assert!(!env.root.join(&id).exists());
}

#[test]
fn delete_created_and_force_running() {
    let env = Env::new();
    let b = env.bundle(&["sleep", "1000"]);
    let id = unique("del");
    env.create(&b, &id);
    env.ok(&["delete", &id]);
    assert!(
        env.fail(&["state", &id])
            .contains("container does not exist")
    );
    let id2 = unique("del");
    env.create(&b, &id2);
    env.ok(&["start", &id2]);
    env.ok(&["delete", "--force", &id2]);
    assert!(!b.cgroup_exists());
    // Forced delete of a missing container is not an error (as runc).
    env.ok(&["delete", "--force", &id2]);
}

#[test]
fn run_exit_codes() {
    let env = Env::new();
    let mut b = env.sh_bundle("echo out; exit 7");
    let (code, out) = env.run_fg(&b, &unique("exit"));
    assert_eq!(code, 7);
    assert_eq!(out, "out\n");
    // Killed by a signal: 128 + 9.
    b.args(&["sleep", "1000"]);
    let id = unique("sig");
    env.track(&id);
    let mut child = env
        .cmd(&["run", "--bundle", b.dir.to_str().unwrap(), &id])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_status(&id, "running");
    env.ok(&["kill", &id, "9"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    // run removes the container once it exits.
    assert!(
        env.fail(&["state", &id])
            .contains("container does not exist")
    );
}

#[test]
fn hostname_env_cwd_and_detach() {
    let env = Env::new();
    let mut b = env.sh_bundle("hostname; echo $FOO; pwd");
    b.config["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    b.config["process"]["cwd"] = json!("/tmp/work");
    b.save();
    let (code, out) = env.run_fg(&b, &unique("env"));
    assert_eq!(code, 0);
    assert_eq!(out, "berth\nbar\n/tmp/work\n");
    b.args(&["sleep", "1000"]);
    let id = unique("detach");
    env.track(&id);
    env.ok(&["run", "--detach", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(env.status(&id), "running");
}

#[test]
fn pause_resume() {
    let env = Env::new();
    let b = env.bundle(&["sleep", "1000"]);
    let id = unique("pause");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    env.ok(&["pause", &id]);
    assert_eq!(env.status(&id), "paused");
    assert_eq!(b.cgroup_file("freezer", "freezer.state"), "FROZEN");
    env.ok(&["resume", &id]);
    assert_eq!(env.status(&id), "running");
    assert_eq!(b.cgroup_file("freezer", "freezer.state"), "THAWED");
    // A paused container goes away with a forced delete (its processes die once thawed).
    env.ok(&["pause", &id]);
    env.ok(&["delete", "--force", &id]);
    assert!(
        env.fail(&["state", &id])
            .contains("container does not exist")
    );
    assert!(!b.cgroup_exists(), "cgroup left behind");
}

#[test]
fn hooks_get_state_on_stdin() {
    let env = Env::new();
    let mut b = env.bundle(&["true"]);
    let out = env.tmp.path().join("hooks");
    std::fs::create_dir_all(&out).unwrap();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())], "timeout": 5});
    b.config["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
        // In the container's mount namespace before pivot_root: host paths still resolve.
        "createContainer": [hook("createContainer")],
        // Inside the container after start: the container's /bin/sh, its /tmp.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer.json"]}]
    });
    b.save();
    let id = unique("hooks");
    env.create(&b, &id);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    for name in ["prestart", "createRuntime", "createContainer"] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(v["id"], json!(id), "{name}");
        if name != "createContainer" {
            // (createContainer runs inside the pid namespace: runc reports 1 there too.)
            assert_eq!(v["pid"].as_i64(), Some(pid), "{name}");
        }
        assert_eq!(v["bundle"], json!(b.dir.to_str().unwrap()));
    }
    // (runc 1.1 already runs poststart during create; the spec says after start.)
    env.ok(&["start", &id]);
    assert!(out.join("poststart.json").exists());
    env.wait_status(&id, "stopped");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.rootfs().join("tmp/startContainer.json")).unwrap())
            .unwrap();
    assert_eq!(v["id"], json!(id));
    env.ok(&["delete", &id]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("poststop.json")).unwrap()).unwrap();
    assert_eq!(v["id"], json!(id));
}

#[test]
fn failing_hook_fails_create_and_cleans_up() {
    let env = Env::new();
    let mut b = env.bundle(&["true"]);
    b.config["hooks"] = json!({"prestart": [{"path": "/bin/false"}]});
    b.save();
    let id = unique("badhook");
    env.track(&id);
    env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(
        env.fail(&["state", &id])
            .contains("container does not exist")
    );
    assert!(!b.cgroup_exists());
    env.assert_no_mounts();
}

#[test]
fn own_session_and_default_umask() {
    let env = Env::new();
    let b = env.sh_bundle("cut -d' ' -f6 /proc/1/stat; umask");
    // The caller's umask (077 here, set in a shell so the test process keeps its own) must
    // not reach the container.
    let id = unique("session");
    env.track(&id);
    let o = std::process::Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(crate::util::bin())
        .args([
            "--root",
            env.root.to_str().unwrap(),
            "run",
            "--bundle",
            b.dir.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (code, out) = (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    );
    assert_eq!(code, 0);
    assert_eq!(
        out, "1\n0022\n",
        "session leader in its pid namespace, umask 0022"
    );
}
