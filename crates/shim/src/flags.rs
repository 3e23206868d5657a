//! The shim's command line, parsed the way Go's `flag` package does it: single- or double-dash
//! flags, `-name value` or `-name=value`, and parsing stops at the first non-flag argument, which
//! is the action (`start`, `delete`; none means "serve", the re-executed long-lived shim).

use std::path::PathBuf;

/// What containerd (or berthd) passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Flags {
    pub(crate) namespace: String,
    /// The daemon's gRPC socket.
    pub(crate) address: String,
    pub(crate) publish_binary: String,
    pub(crate) id: String,
    pub(crate) bundle: Option<PathBuf>,
    /// The socket to serve on (set by `start` when it re-executes the shim).
    pub(crate) socket: Option<PathBuf>,
    pub(crate) debug: bool,
    /// Berth's warm shim: started ahead of need by berthd, with a placeholder id and namespace;
    /// its first Create gives it a task's (see `serve.rs`).
    pub(crate) warm: bool,
    pub(crate) version: bool,
    pub(crate) info: bool,
    /// `start`, `delete`, or `None`.
    pub(crate) action: Option<String>,
}

/// A bad command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    BadBool { flag: String, value: String },
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, FlagError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(FlagError::BadBool {
            flag: flag.to_string(),
            value: v.to_string(),
        }),
    }
}

impl Flags {
    /// Parses `args` (without the program name).
    pub(crate) fn parse<I, S>(args: I) -> Result<Flags, FlagError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut f = Flags::default();
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            if arg == "--" {
                f.action = it.next();
                break;
            }
            let Some(stripped) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
                f.action = Some(arg);
                break;
            };
            let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (stripped.to_string(), None),
            };
            match name.as_str() {
                "debug" | "v" | "info" | "warm" => {
                    let on = match &inline {
                        Some(v) => parse_bool(&name, v)?,
                        None => true,
                    };
                    match name.as_str() {
                        "debug" => f.debug = on,
                        "warm" => f.warm = on,
                        "v" => f.version = on,
                        _ => f.info = on,
                    }
                }
                "namespace" | "address" | "publish-binary" | "id" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| FlagError::MissingValue(name.clone()))?,
                    };
                    match name.as_str() {
                        "namespace" => f.namespace = value,
                        "address" => f.address = value,
                        "publish-binary" => f.publish_binary = value,
                        "id" => f.id = value,
                        "bundle" => f.bundle = Some(PathBuf::from(value)),
                        _ => f.socket = Some(PathBuf::from(value)),
                    }
                }
                _ => return Err(FlagError::Unknown(name)),
            }
        }
        Ok(f)
    }

    /// The flags to pass on when re-executing as the long-lived shim.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut out = vec![
            "-namespace".to_string(),
            self.namespace.clone(),
            "-address".to_string(),
            self.address.clone(),
            "-publish-binary".to_string(),
            self.publish_binary.clone(),
            "-id".to_string(),
            self.id.clone(),
        ];
        if let Some(b) = &self.bundle {
            out.push("-bundle".into());
            out.push(b.display().to_string());
        }
        if let Some(s) = &self.socket {
            out.push("-socket".into());
            out.push(s.display().to_string());
        }
        if self.debug {
            out.push("-debug".into());
        }
        if self.warm {
            out.push("-warm".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_start_line() {
        let f = Flags::parse([
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
            "ignored",
        ])
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action.as_deref(), Some("start"));
    }

    #[test]
    fn inline_values_double_dash_and_no_action() {
        let f = Flags::parse(["--id=x", "-bundle=/b", "-debug=false"]).unwrap();
        assert_eq!(f.id, "x");
        assert_eq!(f.bundle, Some(PathBuf::from("/b")));
        assert!(!f.debug);
        assert_eq!(f.action, None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            Flags::parse(["-nope"]),
            Err(FlagError::Unknown("nope".into()))
        );
        assert_eq!(
            Flags::parse(["-id"]),
            Err(FlagError::MissingValue("id".into()))
        );
        assert!(matches!(
            Flags::parse(["-debug=maybe"]),
            Err(FlagError::BadBool { .. })
        ));
    }

    #[test]
    fn round_trip() {
        let f = Flags::parse([
            "-namespace",
            "n",
            "-address",
            "/a",
            "-publish-binary",
            "/p",
            "-id",
            "i",
            "-socket",
            "/s",
        ])
        .unwrap();
        assert_eq!(Flags::parse(f.to_args()).unwrap(), f);
    }
}
