//! `containerd.services.leases.v1.Leases`.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::containerd::services::leases::v1::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease,
    ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse, Resource,
    leases_server,
};
use berth_store::Store;
use berth_store::filters::label_field;
use tonic::{Request, Response, Status};

use super::{namespace, parse_filters, ts};
use crate::errors::to_status;
use crate::gc::Collector;

#[derive(Debug)]
pub(crate) struct Leases {
    store: Store,
    gc: Collector,
}

impl Leases {
    pub(crate) fn new(store: Store, gc: Collector) -> Self {
        Leases { store, gc }
    }
}

fn to_pb(l: berth_store::Lease) -> Lease {
    Lease {
        id: l.id,
        created_at: ts(l.created_at),
        labels: l.labels,
    }
}

fn resource(r: Option<Resource>) -> Result<berth_store::Resource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource: required"))?;
    Ok(berth_store::Resource {
        id: r.id,
        r#type: r.r#type,
    })
}

/// A generated lease id, unique enough: nanoseconds and randomness, as containerd's clients do.
fn generated_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{nanos}-{}", &rand[..8])
}

#[tonic::async_trait]
impl leases_server::Leases for Leases {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let id = if req.id.is_empty() {
            generated_id()
        } else {
            req.id
        };
        let lease = self
            .store
            .create_lease(&ns, &id, req.labels)
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        Ok(Response::new(CreateResponse {
            lease: Some(to_pb(lease)),
        }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        self.store.delete_lease(&ns, &req.id).map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        if req.sync {
            self.gc.run_now().await?;
        } else {
            self.gc.schedule();
        }
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let leases = self
            .store
            .list_leases(&ns)
            .map_err(to_status)?
            .into_iter()
            .filter(|l| {
                filter.matches(&|p: &[String]| match p.first().map(String::as_str) {
                    Some("id") => Some(l.id.clone()),
                    Some("labels") => label_field(&l.labels, p),
                    _ => None,
                })
            })
            .map(to_pb)
            .collect();
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        self.store
            .add_lease_resource(&ns, &req.id, &r)
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        self.store
            .delete_lease_resource(&ns, &req.id, &r)
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let resources = self
            .store
            .list_lease_resources(&ns, &id)
            .map_err(to_status)?
            .into_iter()
            .map(|r| Resource {
                id: r.id,
                r#type: r.r#type,
            })
            .collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}
