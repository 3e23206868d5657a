//! `containerd.services.namespaces.v1.Namespaces`.

use berth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace,
    UpdateNamespaceRequest, UpdateNamespaceResponse, namespaces_server,
};
use berth_store::filters::{self, label_field};
use berth_store::{Store, validate_identifier};
use tonic::{Request, Response, Status};

use crate::errors::to_status;
use crate::events::Exchange;
use berth_api::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Namespaces {
    store: Store,
    events: Arc<Exchange>,
}

impl Namespaces {
    pub(crate) fn new(store: Store, events: Arc<Exchange>) -> Self {
        Namespaces { store, events }
    }

    async fn flush(&self) -> Result<(), Status> {
        self.store.flush().await.map_err(to_status)
    }
}

fn to_pb(n: berth_store::Namespace) -> Namespace {
    Namespace {
        name: n.name,
        labels: n.labels,
    }
}

fn from_pb(n: Namespace) -> berth_store::Namespace {
    berth_store::Namespace {
        name: n.name,
        labels: n.labels,
    }
}

fn checked_name(name: &str) -> Result<(), Status> {
    validate_identifier(name).map_err(|e| Status::invalid_argument(format!("namespace.name: {e}")))
}

#[tonic::async_trait]
impl namespaces_server::Namespaces for Namespaces {
    async fn get(
        &self,
        req: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let name = req.into_inner().name;
        checked_name(&name)?;
        // containerd answers OK with empty labels for a namespace that does not exist: clients
        // call Get on start-up to read default labels.
        let ns = self
            .store
            .get_namespace(&name)
            .map_err(to_status)?
            .unwrap_or(berth_store::Namespace {
                name,
                labels: Default::default(),
            });
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(to_pb(ns)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let filter = filters::parse(&req.into_inner().filter)
            .map_err(|e| Status::invalid_argument(format!("filter: {e}")))?;
        let namespaces = self
            .store
            .list_namespaces()
            .map_err(to_status)?
            .into_iter()
            .filter(|n| {
                filter.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("name") => Some(n.name.clone()),
                    Some("labels") => label_field(&n.labels, path),
                    _ => None,
                })
            })
            .map(to_pb)
            .collect();
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let ns = req
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace: required"))?;
        checked_name(&ns.name)?;
        self.store
            .create_namespace(&from_pb(ns.clone()))
            .map_err(to_status)?;
        self.flush().await?;
        tracing::info!(namespace = %ns.name, "namespace created");
        self.events.publish(
            &ns.name,
            "/namespaces/create",
            &NamespaceCreate {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            },
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(ns),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let req = req.into_inner();
        let ns = req
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace: required"))?;
        checked_name(&ns.name)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .store
            .update_namespace(&from_pb(ns), &paths)
            .map_err(to_status)?;
        self.flush().await?;
        self.events.publish(
            &updated.name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
            },
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(to_pb(updated)),
        }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        checked_name(&name)?;
        self.store.delete_namespace(&name).map_err(to_status)?;
        self.flush().await?;
        tracing::info!(namespace = %name, "namespace deleted");
        self.events.publish(
            &name,
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        Ok(Response::new(()))
    }
}
