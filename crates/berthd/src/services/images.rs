//! `containerd.services.images.v1.Images`.

use std::sync::Arc;

use berth_api::containerd::services::images::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image, ImageCreate, ImageDelete, ImageUpdate, ListImagesRequest, ListImagesResponse,
    UpdateImageRequest, UpdateImageResponse, images_server,
};
use berth_store::Store;
use berth_store::filters::label_field;
use tonic::{Request, Response, Status};

use super::{namespace, parse_filters};
use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;
use crate::pb::descriptor_from_pb;

#[derive(Debug)]
pub(crate) struct Images {
    store: Store,
    events: Arc<Exchange>,
    gc: Collector,
}

impl Images {
    pub(crate) fn new(store: Store, events: Arc<Exchange>, gc: Collector) -> Self {
        Images { store, events, gc }
    }
}

fn from_pb(i: Image) -> berth_store::Image {
    berth_store::Image {
        name: i.name,
        labels: i.labels,
        target: i.target.map(descriptor_from_pb).unwrap_or_default(),
        ..Default::default()
    }
}

fn field(i: &berth_store::Image, p: &[String]) -> Option<String> {
    let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    match p.first().map(String::as_str)? {
        "name" => nonempty(&i.name),
        "labels" => label_field(&i.labels, p),
        "target" => match p.get(1).map(String::as_str)? {
            "digest" => nonempty(&i.target.digest),
            "mediatype" | "media_type" => nonempty(&i.target.media_type),
            _ => None,
        },
        _ => None,
    }
}

#[tonic::async_trait]
impl images_server::Images for Images {
    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let img = self
            .store
            .get_image(&ns, &req.into_inner().name)
            .map_err(to_status)?;
        Ok(Response::new(GetImageResponse {
            image: Some(crate::pb::image(img)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let images = self
            .store
            .list_images(&ns)
            .map_err(to_status)?
            .into_iter()
            .filter(|i| filter.matches(&|p: &[String]| field(i, p)))
            .map(crate::pb::image)
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let img = req
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image: required"))?;
        let created = self
            .store
            .create_image(&ns, from_pb(img))
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.events.publish(
            &ns,
            "/images/create",
            &ImageCreate {
                name: created.name.clone(),
                labels: created.labels.clone(),
            },
        );
        Ok(Response::new(CreateImageResponse {
            image: Some(crate::pb::image(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let img = req
            .image
            .ok_or_else(|| Status::invalid_argument("image: required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .store
            .update_image(&ns, from_pb(img), &paths)
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.events.publish(
            &ns,
            "/images/update",
            &ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
            },
        );
        self.gc.schedule();
        Ok(Response::new(UpdateImageResponse {
            image: Some(crate::pb::image(updated)),
        }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let target = req.target.map(|t| t.digest);
        self.store
            .delete_image(&ns, &req.name, target.as_deref())
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.events
            .publish(&ns, "/images/delete", &ImageDelete { name: req.name });
        if req.sync {
            self.gc.run_now().await?;
        } else {
            self.gc.schedule();
        }
        Ok(Response::new(()))
    }
}
