//! `containerd.services.events.v1.Events` (gRPC) and the ttrpc `Events.Forward` shims call.

use std::sync::Arc;

use berth_api::containerd::services::events::v1::{
    Envelope, ForwardRequest, PublishRequest, SubscribeRequest, events_server,
};
use tonic::{Request, Response, Status};

use super::{namespace, parse_filters};
use crate::events::{Exchange, validate_topic};

#[derive(Debug)]
pub(crate) struct Events {
    exchange: Arc<Exchange>,
}

impl Events {
    pub(crate) fn new(exchange: Arc<Exchange>) -> Self {
        Events { exchange }
    }
}

fn check_envelope(env: &Envelope) -> Result<(), Status> {
    berth_store::validate_identifier(&env.namespace)
        .map_err(|e| Status::invalid_argument(format!("envelope.namespace: {e}")))?;
    validate_topic(&env.topic).map_err(|e| Status::invalid_argument(format!("envelope.{e}")))?;
    if env.event.is_none() {
        return Err(Status::invalid_argument("envelope.event: required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl events_server::Events for Events {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        validate_topic(&req.topic).map_err(Status::invalid_argument)?;
        let event = req
            .event
            .ok_or_else(|| Status::invalid_argument("event: required"))?;
        self.exchange.forward(Envelope {
            timestamp: Some(std::time::SystemTime::now().into()),
            namespace: ns,
            topic: req.topic,
            event: Some(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope: required"))?;
        check_envelope(&env)?;
        self.exchange.forward(env);
        Ok(Response::new(()))
    }

    type SubscribeStream = berth_cri::BoxStream<Envelope>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = parse_filters(&req.into_inner().filters)?;
        Ok(Response::new(Box::pin(self.exchange.subscribe(filter))))
    }
}
