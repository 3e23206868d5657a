//! Seccomp (placeholder until the compiler lands).

/// Seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: {0}")]
    Invalid(String),
}
