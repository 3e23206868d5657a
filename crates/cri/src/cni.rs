//! Pod networking through CNI plugins (the CNI 1.0 exec protocol, as libcni runs it for
//! containerd): the first network configuration of `[cri.cni] conf_dir` in lexical order
//! (`.conflist`, or a single-plugin `.conf`/`.json`), read again on every use so a change is
//! picked up without a restart; plugins from `bin_dir`; ADD in order with `prevResult`
//! chaining, DEL in reverse; the final result and the configuration used are cached under the
//! state dir, so a DEL after a daemon restart (or a config change) tears down what ADD made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// Where the network configuration and plugins are (berthd's `[cri.cni]` table).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of network configurations; the first in lexical order is used.
    pub conf_dir: PathBuf,
    /// Plugin directories, `:`-separated, searched in order (Debian's
    /// containernetworking-plugins install into /usr/lib/cni).
    pub bin_dir: String,
    /// Longest time one plugin call may take before it is killed.
    pub plugin_timeout_secs: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin:/usr/lib/cni".into(),
            plugin_timeout_secs: 60,
        }
    }
}

/// A network configuration list, every plugin's own keys kept as they are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetConf {
    pub(crate) file: PathBuf,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) plugins: Vec<Map<String, Value>>,
}

/// One pod's attachment: who, where, and the capability arguments (runtimeConfig).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attachment {
    pub(crate) id: String,
    pub(crate) netns: String,
    pub(crate) ifname: String,
    pub(crate) args: Vec<(String, String)>,
    pub(crate) caps: Map<String, Value>,
}

/// The CNI client.
#[derive(Debug, Clone)]
pub(crate) struct Cni {
    cfg: CniConfig,
    cache: PathBuf,
}

/// The IPs a result gives the pod's interface (IPv4 first), without prefix lengths.
pub(crate) fn result_ips(result: &Value, ifname: &str) -> Vec<String> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let on_pod_iface = |ip: &Value| match ip["interface"].as_u64() {
        Some(i) => ifaces
            .get(i as usize)
            .is_none_or(|f| f["name"].as_str() == Some(ifname) || f["sandbox"].is_string()),
        None => true,
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut push = |addr: &str| {
        let ip = addr.split('/').next().unwrap_or_default().to_string();
        if ip.is_empty() {
        } else if ip.contains(':') {
            v6.push(ip);
        } else {
            v4.push(ip);
        }
    };
    for ip in result["ips"].as_array().into_iter().flatten() {
        if on_pod_iface(ip)
            && let Some(a) = ip["address"].as_str()
        {
            push(a);
        }
    }
    // CNI 0.2 results.
    for k in ["ip4", "ip6"] {
        if let Some(a) = result[k]["ip"].as_str() {
            push(a);
        }
    }
    v4.extend(v6);
    v4
}

impl Cni {
    pub(crate) fn new(cfg: CniConfig, cache: PathBuf) -> Cni {
        Cni { cfg, cache }
    }

    /// The network configuration in use, or why there is none.
    pub(crate) fn load(&self) -> Result<NetConf, String> {
        let dir = &self.cfg.conf_dir;
        let rd = std::fs::read_dir(dir)
            .map_err(|e| format!("no network config in {}: {e}", dir.display()))?;
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let mut errors = Vec::new();
        for f in files {
            match parse_conf(&f) {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Err(format!("no network config found in {}", dir.display()))
        } else {
            Err(errors.join("; "))
        }
    }

    fn cache_file(&self, id: &str) -> PathBuf {
        self.cache.join(format!("{id}.json"))
    }

    /// ADD: every plugin in order; on a failure what was added is deleted again.
    pub(crate) async fn setup(&self, a: &Attachment) -> Result<Value, String> {
        let conf = self.load()?;
        let mut prev: Option<Value> = None;
        for (i, p) in conf.plugins.iter().enumerate() {
            match self.call("ADD", &conf, p, a, prev.as_ref()).await {
                Ok(r) => prev = Some(r.unwrap_or_else(|| prev.clone().unwrap_or(json!({})))),
                Err(e) => {
                    for q in conf.plugins[..=i].iter().rev() {
                        let _ = self.call("DEL", &conf, q, a, prev.as_ref()).await;
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(json!({}));
        let cached = json!({
            "kind": "cniCacheV1",
            "containerId": a.id,
            "ifName": a.ifname,
            "netns": a.netns,
            "args": a.args,
            "caps": a.caps,
            "config": conf_json(&conf),
            "result": result,
        });
        write_atomic(&self.cache_file(&a.id), &cached)
            .map_err(|e| format!("caching the CNI result of {}: {e}", a.id))?;
        Ok(result)
    }

    /// DEL: with the cached configuration and result when there are some (after a restart,
    /// or a config change), else the current configuration; plugins in reverse order.
    /// Nothing to delete (no cache, no config) is success.
    pub(crate) async fn teardown(&self, id: &str, netns: &str, ifname: &str) -> Result<(), String> {
        let cached: Option<Value> = std::fs::read(self.cache_file(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (conf, prev, a) = match &cached {
            Some(c) => {
                let conf = conf_from_json(&c["config"], Path::new("cache"))?;
                let args = serde_json::from_value(c["args"].clone()).unwrap_or_default();
                let caps = c["caps"].as_object().cloned().unwrap_or_default();
                let a = Attachment {
                    id: id.to_string(),
                    netns: netns.to_string(),
                    ifname: c["ifName"].as_str().unwrap_or(ifname).to_string(),
                    args,
                    caps,
                };
                (conf, Some(c["result"].clone()), a)
            }
            None => match self.load() {
                Ok(conf) => (
                    conf,
                    None,
                    Attachment {
                        id: id.to_string(),
                        netns: netns.to_string(),
                        ifname: ifname.to_string(),
                        ..Default::default()
                    },
                ),
                Err(_) => return Ok(()),
            },
        };
        for p in conf.plugins.iter().rev() {
            self.call("DEL", &conf, p, &a, prev.as_ref()).await?;
        }
        match std::fs::remove_file(self.cache_file(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("removing the CNI cache of {id}: {e}"))
            }
            _ => Ok(()),
        }
    }

    /// Ids with a cached attachment (pods whose network may still be up).
    pub(crate) fn cached_ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect()
    }

    fn find_plugin(&self, typ: &str) -> Result<PathBuf, String> {
        if typ.is_empty() || typ.contains('/') {
            return Err(format!("plugin type {typ:?} is not a plugin name"));
        }
        std::env::split_paths(&self.cfg.bin_dir)
            .map(|d| d.join(typ))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "failed to find plugin {typ:?} in path [{}]",
                    self.cfg.bin_dir
                )
            })
    }

    /// One plugin call; its result (None for DEL/CHECK).
    async fn call(
        &self,
        cmd: &str,
        conf: &NetConf,
        plugin: &Map<String, Value>,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, String> {
        let typ = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let bin = self.find_plugin(typ)?;
        let stdin = plugin_stdin(conf, plugin, a, prev);
        let args: Vec<String> = a.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &a.id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", &self.cfg.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("running CNI plugin {}: {e}", bin.display()))?;
        if let Some(mut w) = child.stdin.take() {
            let body = serde_json::to_vec(&stdin).expect("JSON");
            let _ = w.write_all(&body).await;
        }
        let timeout = Duration::from_secs(self.cfg.plugin_timeout_secs.max(1));
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| format!("CNI plugin {typ} {cmd} timed out after {timeout:?}"))?
            .map_err(|e| format!("CNI plugin {typ} {cmd}: {e}"))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let msg = match &parsed {
                Some(v) if v.get("msg").is_some() => format!(
                    "{} (code {}){}",
                    v["msg"].as_str().unwrap_or(""),
                    v["code"],
                    v["details"]
                        .as_str()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                _ => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let so = String::from_utf8_lossy(&out.stdout);
                    format!("{} {}", so.trim(), err.trim()).trim().to_string()
                }
            };
            return Err(format!("plugin type={typ:?} failed ({cmd}): {msg}"));
        }
        if cmd != "ADD" {
            return Ok(None);
        }
        match parsed {
            Some(v) if v.is_object() => Ok(Some(v)),
            _ => Err(format!(
                "plugin type={typ:?} (ADD) printed no JSON result: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )),
        }
    }
}

/// What a plugin reads on stdin: its own keys, the list's name and version, the capability
/// arguments it declares, and the previous result.
fn plugin_stdin(
    conf: &NetConf,
    plugin: &Map<String, Value>,
    a: &Attachment,
    prev: Option<&Value>,
) -> Value {
    let mut m = plugin.clone();
    m.insert("name".into(), json!(conf.name));
    m.insert("cniVersion".into(), json!(conf.version));
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (k, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = a.caps.get(k)
            {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    m.remove("runtimeConfig");
    if !rc.is_empty() {
        m.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(p) = prev {
        m.insert("prevResult".into(), p.clone());
    }
    Value::Object(m)
}

fn conf_json(c: &NetConf) -> Value {
    json!({"cniVersion": c.version, "name": c.name, "plugins": c.plugins})
}

fn parse_conf(f: &Path) -> Result<NetConf, String> {
    let b = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
    let v: Value = serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", f.display()))?;
    let is_list = f.extension().and_then(|e| e.to_str()) == Some("conflist");
    if is_list {
        conf_from_json(&v, f)
    } else {
        // A single plugin: wrapped into a list, as libcni does.
        let plugin = v
            .as_object()
            .ok_or_else(|| format!("{}: not a JSON object", f.display()))?;
        let list = json!({
            "cniVersion": plugin.get("cniVersion").cloned().unwrap_or(json!("")),
            "name": plugin.get("name").cloned().unwrap_or(json!("")),
            "plugins": [plugin],
        });
        conf_from_json(&list, f)
    }
}

fn conf_from_json(v: &Value, f: &Path) -> Result<NetConf, String> {
    let field = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{}: {k} is missing or not a string", f.display()))
    };
    let name = field("name")?;
    let version = field("cniVersion")?;
    let plugins = v
        .get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{}: plugins is missing or empty", f.display()))?;
    let mut out = Vec::new();
    for (i, p) in plugins.iter().enumerate() {
        let m = p
            .as_object()
            .ok_or_else(|| format!("{}: plugins[{i}] is not an object", f.display()))?;
        if m.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("{}: plugins[{i}].type is missing", f.display()));
        }
        out.push(m.clone());
    }
    Ok(NetConf {
        file: f.to_path_buf(),
        name,
        version,
        plugins: out,
    })
}

fn write_atomic(path: &Path, v: &Value) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(v).expect("JSON"))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake plugin: records its command, env and stdin, prints `out`, exits `code`.
    fn plugin(dir: &Path, name: &str, out: &str, code: i32) {
        let log = dir.join("calls");
        let script = format!(
            "#!/bin/sh\nin=$(cat)\nprintf '%s %s %s %s %s\\n' {name} \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \"$CNI_IFNAME\" \"$CNI_ARGS\" >> {log}\nprintf '%s\\n' \"$in\" > {dir}/{name}.$CNI_COMMAND.in\nprintf '%s' '{out}'\nexit {code}\n",
            log = log.display(),
            dir = dir.display(),
        );
        let p = dir.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn setup(conflist: &str) -> (tempfile::TempDir, Cni) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("net.d")).unwrap();
        std::fs::create_dir_all(t.path().join("bin")).unwrap();
        std::fs::write(t.path().join("net.d/10-a.conflist"), conflist).unwrap();
        let cni = Cni::new(
            CniConfig {
                conf_dir: t.path().join("net.d"),
                bin_dir: t.path().join("bin").to_string_lossy().into_owned(),
                plugin_timeout_secs: 2,
            },
            t.path().join("cache"),
        );
        (t, cni)
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
        {"type":"first","x":{"keep":1}},
        {"type":"second","capabilities":{"portMappings":true}}]}"#;

    fn attachment() -> Attachment {
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 8080}]));
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        Attachment {
            id: "pod1".into(),
            netns: "/nonexistent".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            caps,
        }
    }

    #[tokio::test]
    async fn add_chains_results_and_del_runs_in_reverse_from_the_cache() {
        let (t, cni) = setup(LIST);
        let bin = t.path().join("bin");
        plugin(
            &bin,
            "first",
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/n"}],"ips":[{"address":"10.1.0.5/24","interface":0},{"address":"fd00::5/64","interface":0}]}"#,
            0,
        );
        plugin(
            &bin,
            "second",
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/n"}],"ips":[{"address":"10.1.0.5/24","interface":0},{"address":"fd00::5/64","interface":0}]}"#,
            0,
        );
        let r = cni.setup(&attachment()).await.unwrap();
        assert_eq!(result_ips(&r, "eth0"), ["10.1.0.5", "fd00::5"]);
        let first_in: Value =
            serde_json::from_slice(&std::fs::read(bin.join("first.ADD.in")).unwrap()).unwrap();
        assert_eq!(first_in["name"], "pods");
        assert_eq!(first_in["x"]["keep"], 1, "a plugin's own keys pass through");
        assert!(
            first_in.get("runtimeConfig").is_none(),
            "no capabilities declared"
        );
        assert!(first_in.get("prevResult").is_none());
        let second_in: Value =
            serde_json::from_slice(&std::fs::read(bin.join("second.ADD.in")).unwrap()).unwrap();
        assert_eq!(
            second_in["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]}),
            "only the declared capability"
        );
        assert_eq!(second_in["prevResult"]["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(cni.cached_ids(), ["pod1"]);

        // The config goes away; DEL still runs from the cache, in reverse order.
        std::fs::remove_file(t.path().join("net.d/10-a.conflist")).unwrap();
        assert!(cni.load().is_err());
        cni.teardown("pod1", "", "eth0").await.unwrap();
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 4, "{calls}");
        assert!(lines[0].starts_with("first ADD pod1 eth0 K8S_POD_NAME=p"));
        assert!(lines[1].starts_with("second ADD"));
        assert!(lines[2].starts_with("second DEL"));
        assert!(lines[3].starts_with("first DEL"));
        let del_in: Value =
            serde_json::from_slice(&std::fs::read(bin.join("second.DEL.in")).unwrap()).unwrap();
        assert_eq!(del_in["prevResult"]["ips"][1]["address"], "fd00::5/64");
        assert!(cni.cached_ids().is_empty());
        // Nothing cached, no config: nothing to do.
        cni.teardown("pod1", "", "eth0").await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_plugin_is_a_clear_error_and_what_was_added_is_deleted() {
        let (t, cni) = setup(LIST);
        let bin = t.path().join("bin");
        plugin(&bin, "first", r#"{"cniVersion":"1.0.0"}"#, 0);
        plugin(
            &bin,
            "second",
            r#"{"cniVersion":"1.0.0","code":7,"msg":"no addresses left"}"#,
            1,
        );
        let e = cni.setup(&attachment()).await.unwrap_err();
        assert!(
            e.contains("second") && e.contains("no addresses left"),
            "{e}"
        );
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        let cmds: Vec<String> = calls
            .lines()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(cmds, ["first ADD", "second ADD", "second DEL", "first DEL"]);
        assert!(cni.cached_ids().is_empty());
        // Missing plugin and non-JSON output.
        std::fs::remove_file(bin.join("second")).unwrap();
        let e = cni.setup(&attachment()).await.unwrap_err();
        assert!(e.contains("failed to find plugin \"second\""), "{e}");
        plugin(&bin, "second", "garbage", 0);
        let e = cni.setup(&attachment()).await.unwrap_err();
        assert!(e.contains("no JSON result"), "{e}");
    }

    #[tokio::test]
    async fn a_hung_plugin_is_killed() {
        let (t, cni) = setup(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"hang"}]}"#);
        let p = t.path().join("bin/hang");
        std::fs::write(&p, "#!/bin/sh\nexec sleep 100\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t0 = std::time::Instant::now();
        let e = cni.setup(&attachment()).await.unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn configs_load_in_lexical_order_and_bad_ones_are_named() {
        let (t, cni) = setup(LIST);
        let d = t.path().join("net.d");
        // An earlier single-plugin .conf wins, wrapped into a list.
        std::fs::write(
            d.join("05-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"x"}"#,
        )
        .unwrap();
        let c = cni.load().unwrap();
        assert_eq!((c.name.as_str(), c.version.as_str()), ("single", "0.4.0"));
        assert_eq!(c.plugins[0]["bridge"], "x");
        // A broken earlier file is skipped for the next good one.
        std::fs::write(d.join("01-bad.conflist"), "{not json").unwrap();
        assert_eq!(cni.load().unwrap().name, "single");
        std::fs::remove_file(d.join("05-b.conf")).unwrap();
        std::fs::remove_file(d.join("10-a.conflist")).unwrap();
        let e = cni.load().unwrap_err();
        assert!(e.contains("01-bad.conflist"), "{e}");
        std::fs::write(
            d.join("01-bad.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"notype":1}]}"#,
        )
        .unwrap();
        let e = cni.load().unwrap_err();
        assert!(e.contains("plugins[0].type"), "{e}");
        std::fs::remove_file(d.join("01-bad.conflist")).unwrap();
        assert!(cni.load().unwrap_err().contains("no network config found"));
        assert!(
            Cni::new(
                CniConfig {
                    conf_dir: t.path().join("missing"),
                    ..Default::default()
                },
                t.path().join("c")
            )
            .load()
            .is_err()
        );
    }

    #[test]
    fn the_deploy_example_loads() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cni/10-berth.conflist");
        let c = parse_conf(&f).unwrap();
        let types: Vec<&str> = c
            .plugins
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(c.plugins[1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn ips_of_old_and_new_results() {
        let r = json!({"ip4": {"ip": "10.0.0.2/16"}});
        assert_eq!(result_ips(&r, "eth0"), ["10.0.0.2"]);
        let r = json!({"interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.9/24", "interface": 1}]});
        assert_eq!(result_ips(&r, "eth0"), ["10.0.0.9"]);
    }
}
