//! Content digests. Only sha256 is supported, as in containerd's default configuration.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::ContentError;

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A sha256 digest in its canonical form, `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`. Other algorithms, upper-case hex and wrong lengths are
    /// refused with `InvalidArgument`.
    pub fn parse(s: &str) -> Result<Digest, ContentError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(ContentError::InvalidArgument(format!(
                "invalid digest {s:?}: no algorithm"
            )));
        };
        if algorithm != "sha256" {
            if is_algorithm(algorithm) {
                return Err(ContentError::InvalidArgument(format!(
                    "unsupported digest algorithm {algorithm:?} in {s:?}"
                )));
            }
            return Err(ContentError::InvalidArgument(format!(
                "invalid digest {s:?}: bad algorithm"
            )));
        }
        if !is_sha256_hex(hex) {
            return Err(ContentError::InvalidArgument(format!(
                "invalid digest {s:?}: expected {HEX_LEN} lowercase hex digits"
            )));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest whose raw sha256 output is `b`.
    ///
    /// # Panics
    /// If `b` is not 32 bytes long.
    pub fn from_sha256_bytes(b: &[u8]) -> Digest {
        assert_eq!(b.len(), HEX_LEN / 2, "a sha256 output is 32 bytes");
        Digest(format!("{PREFIX}{}", hex::encode(b)))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256_bytes(&Sha256::digest(data))
    }

    /// The hex part, which is also the blob's file name.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The full form, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ContentError;

    fn from_str(s: &str) -> Result<Digest, ContentError> {
        Digest::parse(s)
    }
}

/// Whether `s` is 64 lowercase hex digits (a blob file name).
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The OCI grammar for an algorithm: `[a-z0-9]+([+._-][a-z0-9]+)*`.
fn is_algorithm(s: &str) -> bool {
    let is_component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split(['+', '.', '_', '-']).all(is_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_canonical_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn hashes_buffers() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        assert_eq!(
            Digest::of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let raw = Sha256::digest(b"abc");
        assert_eq!(Digest::from_sha256_bytes(&raw), Digest::of(b"abc"));
    }

    #[test]
    fn refuses_other_algorithms() {
        for s in ["sha512:abcd", "blake3:00", "sha384:x", "sha256+b64u:abc"] {
            let e = Digest::parse(s).unwrap_err();
            assert!(
                matches!(&e, ContentError::InvalidArgument(m) if m.contains("unsupported digest algorithm")),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn refuses_malformed() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let short = &EMPTY[..EMPTY.len() - 1];
        let long = format!("{EMPTY}0");
        let not_hex = EMPTY.replace('e', "g");
        for s in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:00",
            &upper,
            short,
            &long,
            &not_hex,
            " sha256:00",
        ] {
            let e = Digest::parse(s).unwrap_err();
            assert!(matches!(e, ContentError::InvalidArgument(_)), "{s:?}: {e}");
        }
        assert!(
            matches!(Digest::parse("sha256:00"), Err(ContentError::InvalidArgument(m)) if !m.contains("unsupported"))
        );
    }

    #[test]
    #[should_panic(expected = "32 bytes")]
    fn raw_output_must_be_32_bytes() {
        Digest::from_sha256_bytes(&[0; 31]);
    }
}
