//! `containerd.services.containers.v1.Containers`: container metadata records, with
//! `/containers/*` events.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::containerd::events::container_create::Runtime as EventRuntime;
use berth_api::containerd::events::{ContainerCreate, ContainerDelete, ContainerUpdate};
use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest,
    GetContainerRequest, GetContainerResponse, ListContainerMessage, ListContainersRequest,
    ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse, containers_server,
};
use berth_store::filters::label_field;
use berth_store::{AnyValue, Store};
use prost_types::Any;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{mask, parse_filters, parts, required, saved, select, ts};
use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;
use crate::runtime::Runtimes;

#[derive(Debug)]
pub(crate) struct Containers {
    store: Store,
    events: Arc<Exchange>,
    gc: Collector,
    /// The tasks: a container whose task is there cannot be deleted (its snapshot is the
    /// task's root file system).
    runtimes: Arc<Runtimes>,
}

impl Containers {
    pub(crate) fn new(
        store: Store,
        events: Arc<Exchange>,
        gc: Collector,
        runtimes: Arc<Runtimes>,
    ) -> Self {
        Containers {
            store,
            events,
            gc,
            runtimes,
        }
    }
}

fn any_to(a: Any) -> AnyValue {
    AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

fn any_pb(a: AnyValue) -> Any {
    Any {
        type_url: a.type_url,
        value: a.value,
    }
}

pub(crate) fn to_pb(c: berth_store::Container) -> Container {
    Container {
        id: c.id,
        labels: c.labels,
        image: c.image,
        runtime: Some(Runtime {
            name: c.runtime_name,
            options: c.runtime_options.map(any_pb),
        }),
        spec: c.spec.map(any_pb),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: ts(c.created_at),
        updated_at: ts(c.updated_at),
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_pb(v)))
            .collect(),
        sandbox: c.sandbox,
    }
}

fn from_pb(c: Container) -> berth_store::Container {
    let (runtime_name, runtime_options) = match c.runtime {
        Some(r) => (r.name, r.options.map(any_to)),
        None => (String::new(), None),
    };
    berth_store::Container {
        id: c.id,
        labels: c.labels,
        image: c.image,
        runtime_name,
        runtime_options,
        spec: c.spec.map(any_to),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_to(v)))
            .collect(),
        sandbox: c.sandbox,
        ..Default::default()
    }
}

fn field(c: &berth_store::Container, p: &[String]) -> Option<String> {
    let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    match p.first().map(String::as_str)? {
        "id" => nonempty(&c.id),
        "image" => nonempty(&c.image),
        "runtime" => match p.get(1).map(String::as_str)? {
            "name" => nonempty(&c.runtime_name),
            _ => None,
        },
        "snapshotter" => nonempty(&c.snapshotter),
        "snapshotkey" | "snapshot_key" => nonempty(&c.snapshot_key),
        "sandbox" => nonempty(&c.sandbox),
        "labels" => label_field(&c.labels, p),
        _ => None,
    }
}

impl Containers {
    fn matching(&self, ns: &str, filters: &[String]) -> Result<Vec<Container>, Status> {
        let filter = parse_filters(filters)?;
        let all = self.store.list_containers(ns).map_err(to_status)?;
        Ok(select(all, &filter, field, to_pb))
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

/// A container id the call names: it must be set.
fn id_of(id: String) -> Result<String, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id: must be set"));
    }
    Ok(id)
}

#[tonic::async_trait]
impl containers_server::Containers for Containers {
    async fn get(
        &self,
        req: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let (ns, r) = parts(req)?;
        let c = self.store.get_container(&ns, &id_of(r.id)?);
        let container = Some(to_pb(c.map_err(to_status)?));
        Ok(Response::new(GetContainerResponse { container }))
    }

    async fn list(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let (ns, r) = parts(req)?;
        let containers = self.matching(&ns, &r.filters)?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let (ns, r) = parts(req)?;
        let containers = self.matching(&ns, &r.filters)?;
        let messages = containers.into_iter().map(|c| {
            let container = Some(c);
            Ok(ListContainerMessage { container })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let (ns, r) = parts(req)?;
        let c = from_pb(required("container", r.container)?);
        let created = saved(&self.store, self.store.create_container(&ns, c)).await?;
        let runtime = Some(EventRuntime {
            name: created.runtime_name.clone(),
            options: created.runtime_options.clone().map(any_pb),
        });
        let (id, image) = (created.id.clone(), created.image.clone());
        let event = ContainerCreate { id, image, runtime };
        self.events.publish(&ns, "/containers/create", &event);
        let container = Some(to_pb(created));
        Ok(Response::new(CreateContainerResponse { container }))
    }

    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let (ns, r) = parts(req)?;
        let (c, paths) = (
            from_pb(required("container", r.container)?),
            mask(r.update_mask),
        );
        let updated = self.store.update_container(&ns, c, &paths);
        let updated = saved(&self.store, updated).await?;
        let event = ContainerUpdate {
            id: updated.id.clone(),
            image: updated.image.clone(),
            labels: updated.labels.clone(),
            snapshot_key: updated.snapshot_key.clone(),
        };
        self.events.publish(&ns, "/containers/update", &event);
        // Labels may have dropped references.
        self.gc.schedule();
        let container = Some(to_pb(updated));
        Ok(Response::new(UpdateContainerResponse { container }))
    }

    async fn delete(&self, req: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        let id = id_of(r.id)?;
        // Deleting the record would let the collector take the snapshot a task runs on (ctr
        // refuses client-side; any client's call is refused here).
        if self.runtimes.has_task(&ns, &id) {
            return Err(Status::failed_precondition(format!(
                "container {id:?}: its task still exists; kill and delete the task first"
            )));
        }
        saved(&self.store, self.store.delete_container(&ns, &id)).await?;
        self.events
            .publish(&ns, "/containers/delete", &ContainerDelete { id });
        self.gc.schedule();
        Ok(Response::new(()))
    }
}
