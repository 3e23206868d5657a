//! Berth's metadata store: one sled database holding namespaces (and, as the daemon grows,
//! images, containers, leases and content/snapshot records), plus the validation rules and the
//! filter language every service shares.
//!
//! In the layers of `DESIGN.md` this is core: it knows nothing of gRPC. Every multi-key change is
//! one sled transaction, and [`Store::flush`] is awaited before a mutating RPC answers.

mod error;
pub mod filters;
mod identifiers;
mod labels;
mod namespaces;
mod store;

pub use error::StoreError;
pub use identifiers::validate as validate_identifier;
pub use labels::{MAX_LABEL_SIZE, validate as validate_labels};
pub use namespaces::Namespace;
pub use store::{SCHEMA_VERSION, Store};
