//! `containerd.services.namespaces.v1.Namespaces`.

use berth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace,
    UpdateNamespaceRequest, UpdateNamespaceResponse, namespaces_server,
};
use berth_store::filters::{self, label_field};
use berth_store::{Store, validate_identifier};
use tonic::{Request, Response, Status};

use super::{mask, required, saved, select};
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

fn field(n: &berth_store::Namespace, p: &[String]) -> Option<String> {
    match p.first().map(String::as_str)? {
        "name" => Some(n.name.clone()),
        "labels" => label_field(&n.labels, p),
        _ => None,
    }
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
        let found = self.store.get_namespace(&name).map_err(to_status)?;
        let labels = Default::default();
        let ns = found.unwrap_or(berth_store::Namespace { name, labels });
        let namespace = Some(to_pb(ns));
        Ok(Response::new(GetNamespaceResponse { namespace }))
    }

    async fn list(
        &self,
        req: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let filter = filters::parse(&req.into_inner().filter)
            .map_err(|e| Status::invalid_argument(format!("filter: {e}")))?;
        let all = self.store.list_namespaces().map_err(to_status)?;
        let namespaces = select(all, &filter, field, to_pb);
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let ns = required("namespace", req.into_inner().namespace)?;
        checked_name(&ns.name)?;
        saved(
            &self.store,
            self.store.create_namespace(&from_pb(ns.clone())),
        )
        .await?;
        tracing::info!(namespace = %ns.name, "namespace created");
        let (name, labels) = (ns.name.clone(), ns.labels.clone());
        self.events.publish(
            &ns.name,
            "/namespaces/create",
            &NamespaceCreate { name, labels },
        );
        let namespace = Some(ns);
        Ok(Response::new(CreateNamespaceResponse { namespace }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let r = req.into_inner();
        let (ns, paths) = (required("namespace", r.namespace)?, mask(r.update_mask));
        checked_name(&ns.name)?;
        let updated = self.store.update_namespace(&from_pb(ns), &paths);
        let updated = saved(&self.store, updated).await?;
        let (name, labels) = (updated.name.clone(), updated.labels.clone());
        self.events.publish(
            &name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: name.clone(),
                labels,
            },
        );
        let namespace = Some(to_pb(updated));
        Ok(Response::new(UpdateNamespaceResponse { namespace }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        checked_name(&name)?;
        saved(&self.store, self.store.delete_namespace(&name)).await?;
        tracing::info!(namespace = %name, "namespace deleted");
        let event = NamespaceDelete { name: name.clone() };
        self.events.publish(&name, "/namespaces/delete", &event);
        Ok(Response::new(()))
    }
}
