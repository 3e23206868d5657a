//! gRPC services: thin adapters that validate requests, call the core and map errors.

mod introspection;
mod namespaces;
mod version;

pub(crate) use introspection::Introspection;
pub(crate) use namespaces::Namespaces;
pub(crate) use version::{Version, version_string};

use tonic::{Request, Status};

/// gRPC metadata key carrying the namespace of a call.
pub(crate) const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The namespace of a namespaced call, validated as an identifier.
#[allow(dead_code)] // used by the namespaced services (images, content, containers, ...)
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
