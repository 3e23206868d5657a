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

use super::{mask, parse_filters, parts, required, saved, select};
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
        let (ns, r) = parts(req)?;
        let image = self.store.get_image(&ns, &r.name).map_err(to_status)?;
        let image = Some(crate::pb::image(image));
        Ok(Response::new(GetImageResponse { image }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let (ns, r) = parts(req)?;
        let filter = parse_filters(&r.filters)?;
        let all = self.store.list_images(&ns).map_err(to_status)?;
        let images = select(all, &filter, field, crate::pb::image);
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let (ns, r) = parts(req)?;
        let image = from_pb(required("image", r.image)?);
        let created = saved(&self.store, self.store.create_image(&ns, image)).await?;
        let (name, labels) = (created.name.clone(), created.labels.clone());
        self.events
            .publish(&ns, "/images/create", &ImageCreate { name, labels });
        let image = Some(crate::pb::image(created));
        Ok(Response::new(CreateImageResponse { image }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let (ns, r) = parts(req)?;
        let (image, paths) = (from_pb(required("image", r.image)?), mask(r.update_mask));
        let updated = saved(&self.store, self.store.update_image(&ns, image, &paths)).await?;
        let (name, labels) = (updated.name.clone(), updated.labels.clone());
        self.events
            .publish(&ns, "/images/update", &ImageUpdate { name, labels });
        self.gc.schedule();
        let image = Some(crate::pb::image(updated));
        Ok(Response::new(UpdateImageResponse { image }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        let target = r.target.map(|t| t.digest);
        let deleted = self.store.delete_image(&ns, &r.name, target.as_deref());
        saved(&self.store, deleted).await?;
        let name = r.name;
        self.events
            .publish(&ns, "/images/delete", &ImageDelete { name });
        self.gc.after_removal(r.sync).await?;
        Ok(Response::new(()))
    }
}
