//! Image names: Docker's normalisation (`busybox` → `docker.io/library/busybox:latest`) and the
//! small string rules containerd's archive code applies to names and OCI reference names.

use berth_content::Digest;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Normalises a `docker save` tag the way Docker's reference library does: Docker Hub names get
/// `docker.io/` (and `library/` for one-component names), a name without tag or digest gets
/// `:latest`, and a name with both keeps only the digest. Returns why the name is invalid.
pub(crate) fn normalize(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("a 64-character hexadecimal string is an image id, not a name".into());
    }
    let (domain, remainder) = split_domain(s);
    let remote = remainder.split(':').next().unwrap_or_default();
    if remote.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name {remote:?} must be lowercase"));
    }
    let full = format!("{domain}/{remainder}");
    let parsed = parse(&full)?;
    Ok(match (parsed.tag, parsed.digest) {
        (_, Some(digest)) => format!("{}@{digest}", parsed.name),
        (Some(tag), None) => format!("{}:{tag}", parsed.name),
        (None, None) => format!("{}:{DEFAULT_TAG}", parsed.name),
    })
}

/// Splits off the registry host, defaulting to Docker Hub: the first component is a host only
/// if it is `localhost`, contains `.` or `:`, or has an upper-case letter.
fn split_domain(s: &str) -> (&str, String) {
    let (domain, remote) = match s.split_once('/') {
        None => return (DEFAULT_DOMAIN, format!("{OFFICIAL_PREFIX}{s}")),
        Some(("localhost", rest)) => ("localhost", rest),
        Some((LEGACY_DOMAIN, rest)) => (DEFAULT_DOMAIN, rest),
        Some((first, rest))
            if first.contains(['.', ':']) || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        Some(_) => (DEFAULT_DOMAIN, s),
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_PREFIX}{remote}"));
    }
    (domain, remote.to_string())
}

struct Parsed<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Checks `domain/path[:tag][@digest]` against Docker's reference grammar.
fn parse(s: &str) -> Result<Parsed<'_>, String> {
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            Digest::parse(digest).map_err(|_| format!("invalid digest {digest:?}"))?;
            (rest, Some(digest))
        }
        None => (s, None),
    };
    let last_slash = rest.rfind('/').unwrap_or(0);
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if colon > last_slash => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(format!("invalid tag {tag:?}"));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "repository name must not be more than {NAME_MAX} characters"
        ));
    }
    let Some((domain, path)) = name.split_once('/') else {
        return Err(format!("invalid repository name {name:?}"));
    };
    if !valid_domain(domain) || !path.split('/').all(valid_path_component) {
        return Err(format!("invalid reference format {s:?}"));
    }
    Ok(Parsed { name, tag, digest })
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// A host name, IPv4 address or bracketed IPv6 address, then an optional `:port`.
fn valid_domain(domain: &str) -> bool {
    let (host_ok, port) = if let Some(v6) = domain.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return false,
        };
        let addr_ok = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (addr_ok, port)
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        (host.split('.').all(valid_domain_component), port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One or more lower-case alphanumerics...
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // ...then one separator: `.`, `_`, `__` or a run of `-`.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += if bytes.get(i + 1) == Some(&b'_') {
                    2
                } else {
                    1
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// The OCI reference name containerd derives from a full image name: everything after the
/// repository, i.e. `tag`, `tag@digest` or `@digest`; `None` when the name has neither.
/// A parsed image reference: `domain/path[:tag][@digest]`, normalised the way Docker does it
/// (`busybox` → `docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host, with its port if any (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// The repository path inside the registry (`library/busybox`).
    pub path: String,
    /// The tag, if the reference has one and no digest.
    pub tag: Option<String>,
    /// The digest, if the reference pins one.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises `s`; the error says why the reference is invalid.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let full = normalize(s)?;
        let (rest, digest) = match full.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|_| format!("invalid digest {d:?}"))?),
            ),
            None => (full.as_str(), None),
        };
        let last_slash = rest.rfind('/').unwrap_or(0);
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if colon > last_slash => {
                (&rest[..colon], Some(rest[colon + 1..].to_string()))
            }
            _ => (rest, None),
        };
        let Some((domain, path)) = name.split_once('/') else {
            return Err(format!("invalid repository name {name:?}"));
        };
        Ok(ImageRef {
            domain: domain.to_string(),
            path: path.to_string(),
            tag: if digest.is_some() { None } else { tag },
            digest,
        })
    }

    /// The repository name without tag or digest (`docker.io/library/busybox`).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry's manifest endpoint for: the digest, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        match (&self.digest, &self.tag) {
            (Some(d), _) => write!(f, "@{d}"),
            (None, Some(t)) => write!(f, ":{t}"),
            (None, None) => Ok(()),
        }
    }
}

pub(crate) fn oci_ref_name(name: &str) -> Option<String> {
    let Some((_host, path)) = name.split_once('/') else {
        // containerd cannot parse a name without a host, and then uses the name itself.
        return (!name.is_empty()).then(|| name.to_string());
    };
    let at = path.find([':', '@'])?;
    let object = &path[at..];
    let object = object.strip_prefix(':').unwrap_or(object);
    (!object.is_empty()).then(|| object.to_string())
}

/// The repository part of a name: without its `:tag` and `@digest`.
pub(crate) fn repository(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or_default();
    let last_slash = name.rfind('/').unwrap_or(0);
    match name.rfind(':') {
        Some(colon) if colon > last_slash => &name[..colon],
        _ => name,
    }
}

/// Whether `s` is `prefix` itself or `prefix` followed by `/`, `:` or `@` (so that `foo` is not
/// a prefix of `foobar`).
pub(crate) fn has_image_prefix(s: &str, prefix: &str) -> bool {
    match s.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    #[test]
    fn image_refs_split_into_parts() {
        let r = ImageRef::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), "v1");
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:v1");
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse(&format!("localhost/x:t@{DIGEST}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), DIGEST);
        assert!(ImageRef::parse("x/UPPER").is_err());
        assert!(ImageRef::parse("x@sha256:zz").is_err());
    }

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:latest", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("foo/bar:v1", "docker.io/foo/bar:v1"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/foo/bar", "docker.io/foo/bar:latest"),
            ("registry:5000/x:tag", "registry:5000/x:tag"),
            ("localhost/x", "localhost/x:latest"),
            ("ghcr.io/a/b/c:1.0-rc.1", "ghcr.io/a/b/c:1.0-rc.1"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            ("a__b/c-d--e.f_g", "docker.io/a__b/c-d--e.f_g:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let tagged_and_digested = format!("busybox:latest@{DIGEST}");
        assert_eq!(
            normalize(&tagged_and_digested).unwrap(),
            format!("docker.io/library/busybox@{DIGEST}")
        );
    }

    #[test]
    fn rejects_invalid_names() {
        let long_tag = format!("x:{}", "t".repeat(129));
        let long_name = format!("x/{}", "n".repeat(260));
        let bad = [
            "",
            "Busybox",
            "foo/Bar",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "x:",
            "x:.tag",
            "x@sha256:abc",
            "host:port/x",
            "a//b",
            "bad host/x",
            &long_tag,
            &long_name,
            "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        ];
        for input in bad {
            assert!(normalize(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn oci_ref_names() {
        assert_eq!(
            oci_ref_name("docker.io/library/busybox:latest").as_deref(),
            Some("latest")
        );
        assert_eq!(oci_ref_name("registry:5000/x:tag").as_deref(), Some("tag"));
        let digested = format!("docker.io/library/busybox@{DIGEST}");
        assert_eq!(oci_ref_name(&digested), Some(format!("@{DIGEST}")));
        let both = format!("example.com/x:1@{DIGEST}");
        assert_eq!(oci_ref_name(&both), Some(format!("1@{DIGEST}")));
        assert_eq!(oci_ref_name("docker.io/library/busybox"), None);
        assert_eq!(oci_ref_name("plain"), Some("plain".to_string()));
    }

    #[test]
    fn repositories_and_prefixes() {
        assert_eq!(
            repository("docker.io/library/busybox:latest"),
            "docker.io/library/busybox"
        );
        assert_eq!(repository("registry:5000/x"), "registry:5000/x");
        assert_eq!(repository(&format!("r:5000/x:1@{DIGEST}")), "r:5000/x");
        assert!(has_image_prefix("foo:latest", "foo"));
        assert!(has_image_prefix("foo/bar", "foo"));
        assert!(has_image_prefix("foo", "foo"));
        assert!(!has_image_prefix("foobar:latest", "foo"));
        assert!(!has_image_prefix("bar", "foo"));
    }
}
