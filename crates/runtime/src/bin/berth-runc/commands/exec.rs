//! `exec`.

use anyhow::{Context, Result, bail};
use berth_runtime::{ExecOptions, Runtime};
use oci_spec::runtime::Process;

use crate::cli::ExecArgs;

fn process(rt: &Runtime, a: &ExecArgs) -> Result<Process> {
    if let Some(p) = &a.process {
        let bytes = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
        return serde_json::from_slice(&bytes).with_context(|| format!("parse {}", p.display()));
    }
    if a.args.is_empty() {
        bail!("exec needs a command (or --process)");
    }
    let st = rt.container(&a.id)?;
    let mut p = st.config.process().clone().unwrap_or_default();
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let mut user = p.user().clone();
        let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
        user.set_uid(
            uid.parse()
                .with_context(|| format!("invalid --user {u:?}"))?,
        );
        if !gid.is_empty() {
            user.set_gid(
                gid.parse()
                    .with_context(|| format!("invalid --user {u:?}"))?,
            );
        }
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let add = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<_> {
            let mut set = set.clone().unwrap_or_default();
            for c in &a.cap {
                let cap = serde_json::from_value(serde_json::Value::from(c.as_str()))
                    .map_err(|_| anyhow::anyhow!("unknown capability {c:?}"))?;
                set.insert(cap);
            }
            Ok(Some(set))
        };
        caps.set_bounding(add(caps.bounding())?);
        caps.set_effective(add(caps.effective())?);
        caps.set_permitted(add(caps.permitted())?);
        caps.set_ambient(add(caps.ambient())?);
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

pub(crate) fn exec(rt: &Runtime, a: &ExecArgs) -> Result<u8> {
    let p = process(rt, a)?;
    let pid = rt.exec(
        &a.id,
        &ExecOptions {
            process: p,
            console_socket: a.console_socket.clone(),
            pid_file: a.pid_file.clone(),
            preserve_fds: a.preserve_fds,
            stdio: None,
            ignore_paused: a.ignore_paused,
            cgroup: a.cgroup.clone(),
        },
    )?;
    if a.detach {
        return Ok(0);
    }
    Ok(crate::wait::wait_forwarding(pid))
}
