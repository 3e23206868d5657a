//! The ttrpc envelope messages (proto package `ttrpc`) and `google.rpc.Status`, by hand with prost.

/// `ttrpc.Request`: opens a call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Full service name, e.g. `containerd.task.v2.Task`.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Method name, e.g. `Create`.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The marshalled request message.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// Relative deadline in nanoseconds; 0 means none.
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    /// Call metadata.
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// `ttrpc.Response`: ends a call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// Outcome; absent means OK.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// The marshalled response message.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `ttrpc.KeyValue`: one metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Key (lower case by convention).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.rpc.Status` as carried in a ttrpc `Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// gRPC code number.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Human-readable message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details, passed through untouched.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}
