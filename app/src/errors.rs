//! The one error type of the web app and its API: an HTTP status, a message for people, and
//! the offending field or file when there is one. Server functions answer it as JSON with that
//! status (never a 500 for a user's mistake); pages show `message`.

use leptos::server_fn::{
    codec::JsonEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

/// An error as the API answers it: `{"status":422,"message":"...","field":"k"}`.
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// The parameter or file at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// One error per file when a whole upload was refused, in the order the files were sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ApiError>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with `status`; inside a server function it also becomes the response status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        let e = Self {
            status,
            message: message.into(),
            field: None,
            details: Vec::new(),
        };
        #[cfg(feature = "ssr")]
        e.set_response_status();
        e
    }

    /// Makes `status` the status of the server function's response, where there is one in
    /// context (not on blocking threads: errors from there pass through here again).
    #[cfg(feature = "ssr")]
    pub fn set_response_status(&self) {
        if let Some(res) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
            if let Ok(code) = http::StatusCode::from_u16(self.status) {
                res.set_status(code);
            }
            if self.status == 503 {
                res.insert_header(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("2"),
                );
            }
        }
    }

    /// 422: a parameter is out of range or malformed.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(422, message)
        }
    }

    /// A refused file: `status` with the file's name as the field.
    pub fn file(status: u16, name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(name.into()),
            ..Self::new(status, message)
        }
    }

    /// 503: the server is busy; the caller should retry later.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }

    /// 400: the request itself cannot be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: nothing under that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 500: the server failed; the message is still meant for people.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

impl From<crate::types::FieldError> for ApiError {
    fn from(e: crate::types::FieldError) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl FromServerFnError for ApiError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // Arguments that do not parse are the caller's mistake.
            ServerFnErrorErr::Args(m) => Self::new(422, format!("bad arguments: {m}")),
            ServerFnErrorErr::MissingArg(m) => Self::new(422, format!("missing argument {m}")),
            ServerFnErrorErr::Request(m) => Self::new(503, format!("cannot reach the server: {m}")),
            // On the server this is a request body that does not decode (JSON of the wrong
            // shape); in the browser, a response that does not.
            #[cfg(feature = "ssr")]
            ServerFnErrorErr::Deserialization(m) => Self::new(422, format!("bad arguments: {m}")),
            other => Self::new(500, other.to_string()),
        }
    }
}
