//! Bad and hostile input: clear errors, nothing left behind.

use serde_json::json;

use crate::util::{Bundle, Env, unique};

fn assert_rejected(env: &Env, b: &Bundle, id: &str) -> String {
    env.track(id);
    let err = env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
    assert!(!err.trim().is_empty(), "no error message");
    assert!(!err.contains("panicked"), "{err}");
    if crate::util::validate_like_runc(id) {
        assert!(
            env.fail(&["state", id])
                .contains("container does not exist")
        );
        assert!(!env.root.join(id).exists(), "state dir left for {id}");
    }
    assert!(!b.cgroup_exists(), "cgroup left behind");
    env.assert_no_mounts();
    err
}

#[test]
fn bad_configs() {
    let env = Env::new();
    let b = env.bundle(&["true"]);
    std::fs::write(b.dir.join("config.json"), "{not json").unwrap();
    assert_rejected(&env, &b, &unique("bad"));

    let mut b = env.bundle(&["true"]);
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "bogus"}]);
    b.save();
    assert_rejected(&env, &b, &unique("bad"));

    let mut b = env.bundle(&["true"]);
    b.config.as_object_mut().unwrap().remove("process");
    b.save();
    assert_rejected(&env, &b, &unique("bad"));

    let mut b = env.bundle(&["true"]);
    b.config["root"]["path"] = json!("no-such-rootfs");
    b.save();
    assert_rejected(&env, &b, &unique("bad"));

    // A rootfs path escaping the bundle up to the host's /.
    let mut b = env.bundle(&["true"]);
    b.config["root"]["path"] = json!("../../../../../../../../../../..");
    b.save();
    assert_rejected(&env, &b, &unique("bad"));

    let mut b = env.bundle(&["true"]);
    b.config["linux"]["resources"]["memory"] = json!({"limit": -5});
    b.save();
    assert_rejected(&env, &b, &unique("bad"));

    // runc's words, which shims and CRI clients match on.
    let b = env.bundle(&["/no/such/binary"]);
    let err = assert_rejected(&env, &b, &unique("bad"));
    assert!(
        err.contains("stat /no/such/binary: no such file or directory"),
        "{err}"
    );
    let b = env.bundle(&["/bin"]);
    let err = assert_rejected(&env, &b, &unique("bad"));
    assert!(
        err.contains("/bin") && err.contains("permission denied"),
        "{err}"
    );
    let b = env.bundle(&["no-such-command"]);
    let err = assert_rejected(&env, &b, &unique("bad"));
    assert!(
        err.contains("no-such-command") && err.contains("executable file not found in $PATH"),
        "{err}"
    );

    let mut b = env.bundle(&["true"]);
    b.config["mounts"].as_array_mut().unwrap().push(json!({"destination": "/x", "type": "bind", "source": "/no/such/source", "options": ["bind"]}));
    b.save();
    assert_rejected(&env, &b, &unique("bad"));
}

#[test]
fn bad_ids() {
    let env = Env::new();
    let b = env.bundle(&["true"]);
    for id in ["a/b", "..", "../escape", "x/../../y"] {
        env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
        assert!(!env.tmp.path().join("escape").exists());
        assert!(!env.tmp.path().join("y").exists());
    }
    let left: Vec<_> = std::fs::read_dir(&env.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with('.')),
        "{left:?}"
    );
    assert!(!b.cgroup_exists());
    env.assert_no_mounts();
}

#[test]
fn checkpoint_is_refused_with_the_reason() {
    if crate::util::testing_other_runtime() {
        return;
    }
    let env = Env::new();
    for verb in ["checkpoint", "restore"] {
        let err = env.fail(&[verb, "--image-path", "/tmp/x", "some-id"]);
        assert!(err.contains("not supported by berth-runc"), "{err}");
    }
}
