//! The events exchange: services publish, subscribers receive in order. Each subscriber has a
//! bounded buffer; one that falls behind is dropped with an error rather than slowing the daemon.
//!
//! Filters follow containerd: `topic`, `namespace`, and `event.<field>` on the event's own fields,
//! resolved through the compiled proto descriptors so every event type is covered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use berth_api::containerd::services::events::v1::Envelope;
use berth_store::filters::Filter;
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{Any, DescriptorProto, FileDescriptorSet};
use tokio::sync::mpsc;
use tokio_stream::Stream;

/// Events a subscriber may have buffered before it is dropped.
const SUBSCRIBER_BUFFER: usize = 4096;

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Envelope>,
    dropped: Arc<AtomicBool>,
}

/// Fan-out of events to subscribers.
#[derive(Default)]
pub(crate) struct Exchange {
    // std Mutex: publish holds it only to try_send to each subscriber; never across an await.
    // Holding it while sending keeps every subscriber's order identical to publish order.
    subscribers: Mutex<Vec<Subscriber>>,
    /// Task exits already delivered (namespace, container, process id, pid), newest last:
    /// an exit is published once, whether the shim or the daemon's restore reports it first.
    exits: Mutex<std::collections::VecDeque<(String, String, String, u32)>>,
}

/// How many delivered exits are remembered for de-duplication.
const EXITS_REMEMBERED: usize = 8192;

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").finish_non_exhaustive()
    }
}

/// A subscription: the events, then an error if this subscriber was too slow.
pub(crate) struct Subscription {
    rx: mpsc::Receiver<Envelope>,
    dropped: Arc<AtomicBool>,
    done: bool,
}

impl Stream for Subscription {
    type Item = Result<Envelope, tonic::Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => Poll::Ready(Some(Ok(e))),
            Poll::Ready(None) => {
                self.done = true;
                if self.dropped.load(Ordering::Acquire) {
                    Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                        "subscriber fell too far behind; events were dropped",
                    ))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Exchange {
    /// Publishes an event in `namespace` on `topic`.
    pub(crate) fn publish<M: prost::Name>(&self, namespace: &str, topic: &str, event: &M) {
        let any = Any {
            type_url: M::full_name(),
            value: event.encode_to_vec(),
        };
        self.forward(Envelope {
            timestamp: Some(std::time::SystemTime::now().into()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(any),
        });
    }

    /// Whether this envelope is a task exit that was delivered already (recording it if not).
    fn duplicate_exit(&self, env: &Envelope) -> bool {
        if env.topic != "/tasks/exit" {
            return false;
        }
        let Some(exit) = env
            .event
            .as_ref()
            .filter(|a| a.type_url.rsplit('/').next() == Some("containerd.events.TaskExit"))
            .and_then(|a| {
                <berth_api::containerd::events::TaskExit as prost::Message>::decode(
                    a.value.as_slice(),
                )
                .ok()
            })
        else {
            return false;
        };
        let key = (env.namespace.clone(), exit.container_id, exit.id, exit.pid);
        let mut seen = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) {
            return true;
        }
        if seen.len() >= EXITS_REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(key);
        false
    }

    /// Delivers an envelope as it is (Publish and Forward from clients and shims).
    pub(crate) fn forward(&self, env: Envelope) {
        if self.duplicate_exit(&env) {
            tracing::debug!(namespace = %env.namespace, "dropping a task exit delivered already");
            return;
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if !s
                .filter
                .matches(&|path: &[String]| envelope_field(&env, path))
            {
                return true;
            }
            match s.tx.try_send(env.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        "dropping an events subscriber that fell {SUBSCRIBER_BUFFER} events behind"
                    );
                    s.dropped.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Subscribes with a parsed filter.
    pub(crate) fn subscribe(&self, filter: Filter) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let dropped = Arc::new(AtomicBool::new(false));
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber {
                filter,
                tx,
                dropped: dropped.clone(),
            });
        Subscription {
            rx,
            dropped,
            done: false,
        }
    }
}

/// Topic rules, as containerd's `events.Validate`: absolute, no empty components.
pub(crate) fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic: must not be empty".into());
    }
    if !topic.starts_with('/') {
        return Err(format!("topic {topic:?}: must start with '/'"));
    }
    if topic.len() == 1 || topic[1..].split('/').any(str::is_empty) {
        return Err(format!("topic {topic:?}: has an empty component"));
    }
    Ok(())
}

fn envelope_field(env: &Envelope, path: &[String]) -> Option<String> {
    match path.first().map(String::as_str)? {
        "topic" => Some(env.topic.clone()).filter(|s| !s.is_empty()),
        "namespace" => Some(env.namespace.clone()).filter(|s| !s.is_empty()),
        "event" => event_field(env.event.as_ref()?, &path[1..]),
        _ => None,
    }
}

/// Message descriptors by full name, from the compiled protos.
fn messages() -> &'static HashMap<String, DescriptorProto> {
    static MAP: OnceLock<HashMap<String, DescriptorProto>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        let Ok(set) = FileDescriptorSet::decode(berth_api::FILE_DESCRIPTOR_SET) else {
            return map;
        };
        fn walk(
            prefix: &str,
            msgs: &[DescriptorProto],
            map: &mut HashMap<String, DescriptorProto>,
        ) {
            for m in msgs {
                let name = format!("{prefix}.{}", m.name());
                walk(&name, &m.nested_type, map);
                map.insert(name, m.clone());
            }
        }
        for f in set.file {
            walk(f.package(), &f.message_type, &mut map);
        }
        map
    })
}

/// Resolves `path` (field names, and a map key after a map field) inside an encoded event.
fn event_field(any: &Any, path: &[String]) -> Option<String> {
    let name = any.type_url.rsplit('/').next()?;
    let desc = messages().get(name)?;
    let wanted = path.first()?;
    let field = desc.field.iter().find(|f| f.name() == wanted.as_str())?;
    let values = raw_fields(&any.value, field.number())?;
    let is_map = field.r#type() == Type::Message
        && messages()
            .get(field.type_name().trim_start_matches('.'))
            .is_some_and(|m| m.options.as_ref().is_some_and(|o| o.map_entry()));
    if is_map {
        let key = path.get(1..).filter(|k| !k.is_empty())?.join(".");
        for entry in values {
            let RawValue::Bytes(b) = entry else { continue };
            let k = raw_fields(&b, 1)?.into_iter().next_back();
            if matches!(&k, Some(RawValue::Bytes(kb)) if kb == key.as_bytes()) {
                return match raw_fields(&b, 2)?.into_iter().next_back() {
                    Some(RawValue::Bytes(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
                    _ => Some(String::new()),
                };
            }
        }
        return None;
    }
    if path.len() != 1 {
        return None;
    }
    match (field.r#type(), values.into_iter().next_back()?) {
        (Type::String, RawValue::Bytes(b)) => {
            Some(String::from_utf8_lossy(&b).into_owned()).filter(|s| !s.is_empty())
        }
        (Type::Bool, RawValue::Varint(v)) => Some((v != 0).to_string()),
        (Type::Int32 | Type::Int64 | Type::Enum, RawValue::Varint(v)) => {
            Some((v as i64).to_string())
        }
        (Type::Uint32 | Type::Uint64, RawValue::Varint(v)) => Some(v.to_string()),
        _ => None,
    }
}

enum RawValue {
    Varint(u64),
    Bytes(Vec<u8>),
    Other,
}

/// Every occurrence of field `number` in an encoded message (`None` if it is malformed).
fn raw_fields(mut buf: &[u8], number: i32) -> Option<Vec<RawValue>> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf).ok()?;
        let value = match wt {
            WireType::Varint => RawValue::Varint(decode_varint(&mut buf).ok()?),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).ok()? as usize;
                if len > buf.len() {
                    return None;
                }
                let (v, rest) = buf.split_at(len);
                buf = rest;
                RawValue::Bytes(v.to_vec())
            }
            WireType::SixtyFourBit => {
                buf = buf.get(8..)?;
                RawValue::Other
            }
            WireType::ThirtyTwoBit => {
                buf = buf.get(4..)?;
                RawValue::Other
            }
            _ => return None,
        };
        if tag as i32 == number {
            out.push(value);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::containerd::events::NamespaceCreate;
    use berth_store::filters::parse_all;

    fn env() -> Envelope {
        let ev = NamespaceCreate {
            name: "ns1".into(),
            labels: [("team".to_string(), "blue".to_string())].into(),
        };
        Envelope {
            timestamp: None,
            namespace: "default".into(),
            topic: "/namespaces/create".into(),
            event: Some(Any {
                type_url: "containerd.events.NamespaceCreate".into(),
                value: ev.encode_to_vec(),
            }),
        }
    }

    fn matches(f: &str) -> bool {
        let env = env();
        parse_all(&[f])
            .unwrap()
            .matches(&|p: &[String]| envelope_field(&env, p))
    }

    #[test]
    fn filters_reach_into_events() {
        assert!(matches(r#"topic=="/namespaces/create""#));
        assert!(matches(r#"topic~="^/namespaces/""#));
        assert!(matches("namespace==default"));
        assert!(matches("event.name==ns1"));
        assert!(!matches("event.name==ns2"));
        assert!(matches("event.labels.team==blue"));
        assert!(matches("event.labels.team"));
        assert!(!matches("event.labels.other"));
        assert!(!matches("event.nosuchfield"));
    }

    #[tokio::test]
    async fn ordered_delivery_and_slow_subscribers_are_dropped() {
        use tokio_stream::StreamExt;
        let x = Exchange::default();
        let mut fast = x.subscribe(Filter::always());
        let mut slow = x.subscribe(parse_all(&[r#"topic=="/namespaces/create""#]).unwrap());
        for i in 0..SUBSCRIBER_BUFFER + 10 {
            let mut e = env();
            e.namespace = format!("n{i}");
            x.forward(e);
            if i < SUBSCRIBER_BUFFER + 10 {
                let got = fast.next().await.unwrap().unwrap();
                assert_eq!(got.namespace, format!("n{i}"));
            }
        }
        let mut n = 0;
        while let Some(item) = slow.next().await {
            match item {
                Ok(e) => {
                    assert_eq!(e.namespace, format!("n{n}"));
                    n += 1;
                }
                Err(st) => {
                    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
                    break;
                }
            }
        }
        assert_eq!(n, SUBSCRIBER_BUFFER);
        // The fast subscriber is still attached.
        x.forward(env());
        assert!(fast.next().await.unwrap().is_ok());
    }

    #[test]
    fn topics_are_validated() {
        assert!(validate_topic("/tasks/exit").is_ok());
        for bad in ["", "tasks", "/", "/a//b", "/a/"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
