use std::sync::Arc;

use prost::Message;

use super::*;
use crate::fake::Fake;

fn record(id: &str, kind: &str, config: Vec<u8>, state: &[u8]) -> ctrd::Container {
    ctrd::Container {
        id: id.into(),
        labels: HashMap::from([(LABEL_KIND.to_string(), kind.to_string())]),
        extensions: HashMap::from([
            (
                EXT_CONFIG.to_string(),
                prost_types::Any {
                    type_url: "cri".into(),
                    value: config,
                },
            ),
            (
                EXT_STATE.to_string(),
                prost_types::Any {
                    type_url: "cri".into(),
                    value: state.to_vec(),
                },
            ),
        ]),
        ..Default::default()
    }
}

/// What a restarted daemon's CRI finds: the sandboxes and containers whose records carry
/// their config and state, with the last state saved; records that are not the CRI's, or do
/// not decode, are passed over.
#[tokio::test]
async fn records_load_back_with_the_last_state_saved() {
    let fake = Arc::new(Fake::default());
    let api = Api::new(fake.services());
    let sb_state = serde_json::to_vec(&SandboxState {
        name: "pod_ns_uid_0".into(),
        ..Default::default()
    })
    .unwrap();
    let c_state = serde_json::to_vec(&ContainerState {
        name: "web_pod_ns_uid_0".into(),
        sandbox_id: "sb".into(),
        ..Default::default()
    })
    .unwrap();
    let sb_config = cri::PodSandboxConfig::default().encode_to_vec();
    let c_config = cri::ContainerConfig::default().encode_to_vec();
    {
        let mut all = fake.containers.lock().unwrap();
        for r in [
            record("sb", "sandbox", sb_config, &sb_state),
            record("c", "container", c_config.clone(), &c_state),
            record("broken", "container", c_config, b"not json"),
            ctrd::Container {
                id: "ctr-made".into(),
                ..Default::default()
            },
        ] {
            all.insert(r.id.clone(), r);
        }
    }
    let meta = Meta::default();
    assert_eq!(meta.load(&api).await.unwrap(), (1, 1));
    let mut c = meta.find_container("c").unwrap();
    assert_eq!(c.st.sandbox_id, "sb");
    assert!(meta.find_container("broken").is_err());
    assert_eq!(meta.find_sandbox("sb").unwrap().st.name, "pod_ns_uid_0");
    // A state change goes through to the record; a new index loads it.
    c.st.exit_code = 137;
    c.st.reason = "OOMKilled".into();
    meta.save_container(&api, &c).await.unwrap();
    let again = Meta::default();
    assert_eq!(again.load(&api).await.unwrap(), (1, 1));
    let c = again.find_container("c").unwrap();
    assert_eq!((c.st.exit_code, c.st.reason.as_str()), (137, "OOMKilled"));
    // The names are taken again.
    let e = again
        .reserve("web_pod_ns_uid_0", "other", "container")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
}
