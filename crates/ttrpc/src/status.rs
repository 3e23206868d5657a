//! Call outcomes, with gRPC's code numbering (ttrpc reuses it on the wire).

use std::fmt;

use crate::proto::RpcStatus;

/// gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Maps a wire number to a code; unknown numbers become `Unknown`.
    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// The error of a ttrpc call: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `InvalidArgument`.
    pub fn invalid_argument(m: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, m)
    }
    /// `NotFound`.
    pub fn not_found(m: impl Into<String>) -> Status {
        Status::new(Code::NotFound, m)
    }
    /// `Unimplemented`.
    pub fn unimplemented(m: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, m)
    }
    /// `Internal`.
    pub fn internal(m: impl Into<String>) -> Status {
        Status::new(Code::Internal, m)
    }
    /// `Unavailable`.
    pub fn unavailable(m: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, m)
    }
    /// `FailedPrecondition`.
    pub fn failed_precondition(m: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, m)
    }
    /// `AlreadyExists`.
    pub fn already_exists(m: impl Into<String>) -> Status {
        Status::new(Code::AlreadyExists, m)
    }
    /// `DeadlineExceeded`.
    pub fn deadline_exceeded(m: impl Into<String>) -> Status {
        Status::new(Code::DeadlineExceeded, m)
    }

    pub(crate) fn from_proto(p: RpcStatus) -> Status {
        Status::new(Code::from_i32(p.code), p.message)
    }

    pub(crate) fn to_proto(&self) -> RpcStatus {
        RpcStatus {
            code: self.code as i32,
            message: self.message.clone(),
            details: Vec::new(),
        }
    }

    pub(crate) fn decode_error(what: &str, e: prost::DecodeError) -> Status {
        Status::new(
            Code::Internal,
            format!("ttrpc: error unmarshalling {what}: {e}"),
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}
