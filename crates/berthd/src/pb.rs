//! Core values as the API's messages and back: timestamps, mounts, descriptors, images. Shared by
//! the services and the core (the task manager, the pull engine, the CRI host) so that neither
//! reaches into the other for them.

use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::types::{Descriptor, Mount};

/// A store timestamp as a protobuf one.
pub(crate) fn ts(t: berth_store::Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos as i32,
    })
}

/// A system time as a protobuf timestamp.
pub(crate) fn sys_ts(t: std::time::SystemTime) -> Option<prost_types::Timestamp> {
    ts(berth_store::Timestamp::from(t))
}

/// A snapshotter's mounts as the API's.
pub(crate) fn mounts_pb(m: Vec<berth_store::Mount>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// The API's mounts as the store's (what a proxy snapshotter answers).
pub(crate) fn mounts_from_pb(m: Vec<Mount>) -> Vec<berth_store::Mount> {
    m.into_iter()
        .map(|m| berth_store::Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// A store descriptor as the API's.
pub(crate) fn descriptor_to_pb(d: berth_store::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations,
    }
}

/// An API descriptor as the store's.
pub(crate) fn descriptor_from_pb(d: Descriptor) -> berth_store::Descriptor {
    berth_store::Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations,
    }
}

/// An image record as the API's.
pub(crate) fn image(i: berth_store::Image) -> Image {
    Image {
        name: i.name,
        labels: i.labels,
        target: Some(descriptor_to_pb(i.target)),
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
    }
}
