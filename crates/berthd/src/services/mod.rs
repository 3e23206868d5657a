//! gRPC services: thin adapters that validate requests, call the core and map errors.

mod containers;
mod content;
mod diff;
mod events;
mod images;
mod introspection;
mod leases;
mod namespaces;
mod snapshots;
pub(crate) mod streaming;
mod tasks;
mod transfer;
mod version;

pub(crate) use crate::pb::{mounts_pb, sys_ts, ts};
pub(crate) use crate::pool::blocking;
pub(crate) use containers::Containers;
pub(crate) use content::Content;
pub(crate) use diff::Diff;
pub(crate) use events::Events;
pub(crate) use images::Images;
pub(crate) use introspection::Introspection;
pub(crate) use leases::Leases;
pub(crate) use namespaces::Namespaces;
pub(crate) use snapshots::Snapshots;
pub(crate) use streaming::{Streaming, Streams};
pub(crate) use tasks::Tasks;
pub(crate) use transfer::Transfer;
pub(crate) use version::{Version, version_string};

use tonic::{Request, Status};

/// gRPC metadata key carrying the namespace of a call.
pub(crate) const NAMESPACE_HEADER: &str = "containerd-namespace";

/// gRPC metadata key attaching a call's new resources to a lease.
pub(crate) const LEASE_HEADER: &str = "containerd-lease";

/// The lease a call runs under, if any.
pub(crate) fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses the `filters` of a List call.
pub(crate) fn parse_filters(filters: &[String]) -> Result<berth_store::filters::Filter, Status> {
    berth_store::filters::parse_all(filters)
        .map_err(|e| Status::invalid_argument(format!("filters: {e}")))
}

/// The records a List call's `filter` selects (by `field`, which reads a record's field at a
/// filter's path), in the API's type.
pub(crate) fn select<T, P>(
    all: Vec<T>,
    filter: &berth_store::filters::Filter,
    field: impl Fn(&T, &[String]) -> Option<String>,
    to_pb: impl FnMut(T) -> P,
) -> Vec<P> {
    let chosen = all
        .into_iter()
        .filter(|r| filter.matches(&|p: &[String]| field(r, p)));
    chosen.map(to_pb).collect()
}

/// Records per message of a streamed List, as containerd sends them.
const LIST_BATCH: usize = 100;

/// A streamed List's messages: the records in batches, each made a message by `message`.
pub(crate) fn batches<T: Clone, M>(
    all: Vec<T>,
    message: impl Fn(Vec<T>) -> M,
) -> Vec<Result<M, Status>> {
    all.chunks(LIST_BATCH)
        .map(|c| Ok(message(c.to_vec())))
        .collect()
}

/// Parses a digest field.
pub(crate) fn digest(field: &str, s: &str) -> Result<berth_store::Digest, Status> {
    berth_store::Digest::parse(s).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A namespaced call's namespace and its request.
pub(crate) fn parts<T>(req: Request<T>) -> Result<(String, T), Status> {
    let ns = namespace(&req)?;
    Ok((ns, req.into_inner()))
}

/// A message field the call cannot go without.
pub(crate) fn required<T>(field: &str, v: Option<T>) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

/// The paths of an update mask (none: the whole record).
pub(crate) fn mask(m: Option<prost_types::FieldMask>) -> Vec<String> {
    m.map(|m| m.paths).unwrap_or_default()
}

/// A change to the store made durable before the call answers: its error mapped, the store
/// flushed.
pub(crate) async fn saved<T>(
    store: &berth_store::Store,
    change: Result<T, berth_store::StoreError>,
) -> Result<T, Status> {
    let done = change.map_err(crate::errors::to_status)?;
    store.flush().await.map_err(crate::errors::to_status)?;
    Ok(done)
}

/// The namespace of a namespaced call, validated as an identifier.
pub(crate) fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ns.is_empty() {
        return Err(Status::failed_precondition("namespace is required"));
    }
    berth_store::validate_identifier(ns)
        .map_err(|e| Status::invalid_argument(format!("namespace: {e}")))?;
    Ok(ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_header_is_required_and_validated() {
        let r = Request::new(());
        assert_eq!(
            namespace(&r).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            namespace(&r).unwrap_err().message(),
            "namespace is required"
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NAMESPACE_HEADER, "k8s.io".parse().unwrap());
        assert_eq!(namespace(&r).unwrap(), "k8s.io");
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NAMESPACE_HEADER, "bad..name".parse().unwrap());
        assert_eq!(
            namespace(&r).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
