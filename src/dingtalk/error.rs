//! Upstream outcomes as variants, so that retry policy is a `match`.

/// A failed DingTalk interaction. No variant carries a URL or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A legacy-style answer `{errcode, errmsg}` with a non-zero errcode (or `success: false`).
    #[error("DingTalk errcode {errcode}: {errmsg}")]
    Code { errcode: i64, errmsg: String },
    /// A new-style answer: a non-2xx HTTP status with `{code, message}`.
    #[error("DingTalk HTTP {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// The call did not complete within the configured timeout.
    #[error("DingTalk did not answer in time")]
    Timeout,
    /// No connection could be made.
    #[error("could not connect to DingTalk")]
    Connect,
    /// The connection broke or the HTTP exchange failed.
    #[error("HTTP exchange with DingTalk failed: {0}")]
    Transport(String),
    /// DingTalk refused the app's credentials when asked for a token.
    #[error("DingTalk refused app_key/app_secret ({0})")]
    Credentials(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from DingTalk: {0}")]
    Decode(String),
}

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The access token was refused: drop it, fetch a new one, retry once.
    TokenRejected,
    /// A rate limit answered: back off, then retry.
    RateLimited,
    /// Worth retrying with backoff.
    Transient,
    /// Retrying cannot help.
    Permanent,
}

impl ApiError {
    /// Classifies the failure (see docs/dingtalk.md#error-codes).
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Code { errcode, .. } => match errcode {
                40001 | 40014 | 42001 | 41001 => ErrorClass::TokenRejected,
                90001..=90018 => ErrorClass::RateLimited,
                -1 | 15 | 88 | 400001 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            ApiError::Status { status, code, .. } => {
                if *status == 401 || code == "InvalidAuthentication" {
                    ErrorClass::TokenRejected
                } else if *status == 429 || code.contains("QpsLimit") {
                    ErrorClass::RateLimited
                } else if *status >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            ApiError::Timeout | ApiError::Connect | ApiError::Transport(_) => ErrorClass::Transient,
            ApiError::Decode(_) | ApiError::Credentials(_) => ErrorClass::Permanent,
        }
    }

    /// The numeric errcode, when DingTalk gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::Code { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// A short code for logs and the ledger: the errcode, the new-style code, or a word.
    pub fn short(&self) -> String {
        match self {
            ApiError::Code { errcode, .. } => errcode.to_string(),
            ApiError::Status { status, code, .. } if code.is_empty() => format!("http-{status}"),
            ApiError::Status { code, .. } => code.clone(),
            ApiError::Timeout => "timeout".into(),
            ApiError::Connect => "connect".into(),
            ApiError::Transport(_) => "transport".into(),
            ApiError::Decode(_) => "decode".into(),
            ApiError::Credentials(code) => format!("credentials-{code}"),
        }
    }
}

/// A legacy-style failure with `errcode` and no message, for tests of code that reads it.
#[cfg(test)]
pub(crate) fn code(errcode: i64) -> ApiError {
    ApiError::Code {
        errcode,
        errmsg: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_fall_into_the_right_class() {
        assert_eq!(code(42001).class(), ErrorClass::TokenRejected);
        assert_eq!(code(40014).class(), ErrorClass::TokenRejected);
        assert_eq!(code(90018).class(), ErrorClass::RateLimited);
        assert_eq!(code(400001).class(), ErrorClass::Transient);
        assert_eq!(code(-1).class(), ErrorClass::Transient);
        assert_eq!(code(34001).class(), ErrorClass::Permanent);
        assert_eq!(code(60011).class(), ErrorClass::Permanent);
        assert_eq!(ApiError::Timeout.class(), ErrorClass::Transient);
        let status = |status, code: &str| ApiError::Status {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(status(401, "Unauthorized").class(), ErrorClass::TokenRejected);
        assert_eq!(
            status(400, "InvalidAuthentication").class(),
            ErrorClass::TokenRejected
        );
        assert_eq!(
            status(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi").class(),
            ErrorClass::RateLimited
        );
        assert_eq!(status(502, "").class(), ErrorClass::Transient);
        assert_eq!(status(400, "invalideChatId").class(), ErrorClass::Permanent);
    }
}
