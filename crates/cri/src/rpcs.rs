//! The CRI services as tables: each RPC, its request and answer, and its body run on the CRI
//! core. One macro writes the gRPC trait's methods, so the services are read as a list.

/// `rpcs! { impl Trait, for Service; streams { Assoc = Item; } gate rpc(Req) -> Resp = |core, r| body }`
/// implements `Trait` (whose requests and answers live in `runtime.v1`, as `cri`) for a
/// service holding the CRI core as `inner`: each body runs with `core` (`&Inner`) and the
/// request `r`, and answers `Result<Resp, Status>`. A `ready` RPC first waits for the core's
/// start-up (its records loaded); an `open` one answers at once. `streams` names the stream
/// types of the server-streaming RPCs.
macro_rules! rpcs {
    (
        impl $svc:path, for $ty:ty;
        streams { $($assoc:ident = $item:ty;)* }
        $($gate:ident $rpc:ident($req:ident) -> $resp:ty = |$core:ident, $r:pat_param| $body:block)*
    ) => {
        #[tonic::async_trait]
        impl $svc for $ty {
            $(type $assoc = crate::BoxStream<$item>;)*
            $(
                async fn $rpc(
                    &self,
                    req: tonic::Request<cri::$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    rpcs!(@gate $gate self);
                    let $core: &crate::state::Inner = &self.inner;
                    let $r = req.into_inner();
                    let answer: Result<$resp, tonic::Status> = $body;
                    answer.map(tonic::Response::new)
                }
            )*
        }
    };
    (@gate ready $s:ident) => {
        $s.inner.ready().await?
    };
    (@gate open $s:ident) => {};
}

/// A server-streaming RPC's answer of one message.
pub(crate) fn once<T: Send + 'static>(v: T) -> crate::BoxStream<T> {
    Box::pin(tokio_stream::iter(vec![Ok(v)]))
}
