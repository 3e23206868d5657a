//! The outcome a remote command reports on its error stream: a JSON `metav1.Status` for
//! protocol v4 and later, the failure's message as plain text (nothing on success) before.

use serde::Serialize;

#[derive(Serialize, Default)]
struct Empty {}

/// `metav1.Status`, the fields this server sets, in Go's order.
#[derive(Serialize, Default)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// `metav1.StatusCause`: its `Type` is spelled `reason` on the wire.
#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

/// How an exec or attach ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// The process exited with a non-zero code; `message` is the runtime-level description.
    ExitCode {
        code: i32,
        message: String,
    },
    /// The runtime failed (`InternalError`, HTTP 500).
    Internal(String),
}

impl Outcome {
    /// The exit of `cmd` with `code`, worded as containerd's CRI words it.
    pub(crate) fn exited(cmd: &[String], code: i32) -> Self {
        if code == 0 {
            return Self::Success;
        }
        Self::ExitCode {
            code,
            message: format!(
                "error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
        }
    }

    fn message(&self) -> Option<String> {
        match self {
            Self::Success => None,
            Self::ExitCode { message, .. } => Some(format!(
                "command terminated with non-zero exit code: {message}"
            )),
            Self::Internal(e) => Some(format!("Internal error occurred: {e}")),
        }
    }

    /// The `metav1.Status` JSON, fields in Go's marshalling order.
    pub(crate) fn status_json(&self) -> Vec<u8> {
        let message = self.message();
        let s = match self {
            Self::Success => Status {
                status: "Success",
                ..Status::default()
            },
            Self::ExitCode { code, .. } => Status {
                status: "Failure",
                message,
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                ..Status::default()
            },
            Self::Internal(e) => Status {
                status: "Failure",
                message,
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: e.clone(),
                    }],
                }),
                code: Some(500),
                ..Status::default()
            },
        };
        serde_json::to_vec(&s).unwrap_or_default()
    }

    /// What the error stream carries for `protocol`.
    pub(crate) fn encode(&self, v4_or_later: bool) -> Vec<u8> {
        if v4_or_later {
            self.status_json()
        } else {
            self.message().unwrap_or_default().into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_client_go_decodes() {
        assert_eq!(
            String::from_utf8(Outcome::Success.status_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let cmd = ["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        assert_eq!(
            String::from_utf8(Outcome::exited(&cmd, 3).status_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(Outcome::exited(&cmd, 0), Outcome::Success);
        let internal = String::from_utf8(Outcome::Internal("boom".into()).status_json()).unwrap();
        assert_eq!(
            internal,
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
        // Before v4: text, and nothing at all on success.
        assert!(Outcome::Success.encode(false).is_empty());
        assert_eq!(
            Outcome::Internal("boom".into()).encode(false),
            b"Internal error occurred: boom"
        );
    }
}
