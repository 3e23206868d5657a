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

use super::{parse_filters, parts, saved, select, ts};
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

fn field(l: &berth_store::Lease, p: &[String]) -> Option<String> {
    match p.first().map(String::as_str)? {
        "id" => Some(l.id.clone()),
        "labels" => label_field(&l.labels, p),
        _ => None,
    }
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
        let (ns, r) = parts(req)?;
        let id = Some(r.id).filter(|id| !id.is_empty());
        let id = id.unwrap_or_else(generated_id);
        let lease = saved(&self.store, self.store.create_lease(&ns, &id, r.labels)).await?;
        let lease = Some(to_pb(lease));
        Ok(Response::new(CreateResponse { lease }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        saved(&self.store, self.store.delete_lease(&ns, &r.id)).await?;
        self.gc.after_removal(r.sync).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (ns, r) = parts(req)?;
        let filter = parse_filters(&r.filters)?;
        let all = self.store.list_leases(&ns).map_err(to_status)?;
        let leases = select(all, &filter, field, to_pb);
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        let resource = resource(r.resource)?;
        let added = self.store.add_lease_resource(&ns, &r.id, &resource);
        saved(&self.store, added).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        let resource = resource(r.resource)?;
        let deleted = self.store.delete_lease_resource(&ns, &r.id, &resource);
        saved(&self.store, deleted).await?;
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let (ns, r) = parts(req)?;
        let all = self
            .store
            .list_lease_resources(&ns, &r.id)
            .map_err(to_status)?;
        let resources = all.into_iter().map(|r| Resource {
            id: r.id,
            r#type: r.r#type,
        });
        let resources = resources.collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}
