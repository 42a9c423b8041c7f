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
    /// The month's quota is spent: DingTalk's (90020) or this class's share of
    /// `monthly_call_budget` (then nothing was sent).
    #[error("{0}")]
    Quota(QuotaSpent),
    /// A background call the monthly quota could not count (the ledger did not answer before
    /// the call's deadline): it was not sent. Interactive calls go instead, counted later.
    #[error(
        "the ledger could not count the call in the monthly API quota; background calls are not made uncounted"
    )]
    Uncounted,
    /// DingTalk took a card but did not deliver it to the group: a `deliverResults` entry
    /// with `success: false`, and its `errorMsg` (docs/dingtalk.md, "Interactive cards").
    #[error("card not delivered: {0}")]
    Undelivered(String),
    /// Not sent: the check before the attempt ([`super::AttemptGuard`]) said the caller may
    /// no longer write (its lease was taken, its policy is no longer in force).
    #[error("abandoned, not sent: {0}")]
    Abandoned(String),
}

/// Why a call met the monthly quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaCause {
    /// DingTalk answered that the organisation's monthly quota is spent: errcode 90020 or
    /// `Forbidden.AccessDenied.ApiCountLimitForOrg` (`code` is what it said).
    DingTalk { code: String, errcode: Option<i64> },
    /// dingops' own `monthly_call_budget`: the calls of every class this month reached
    /// what `class` may bring the month to.
    Budget {
        class: &'static str,
        used: u64,
        ceiling: u64,
        monthly: u64,
        reserve: u64,
    },
}

/// A call the monthly quota stopped, and when the quota renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpent {
    pub cause: QuotaCause,
    /// The first moment of DingTalk's next month (China time), shown in `timezone`
    /// ("2027-01-01 00:00 Asia/Shanghai").
    pub renews: String,
}

impl std::fmt::Display for QuotaSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            QuotaCause::DingTalk { code, .. } => write!(
                f,
                "DingTalk answered {code}: the organisation's monthly API quota is spent (it renews {})",
                self.renews
            ),
            QuotaCause::Budget {
                class,
                used,
                ceiling,
                monthly,
                reserve,
            } => write!(
                f,
                "the month's {class} budget is spent: {used} calls used of the {ceiling} {class} calls may bring it to \
                 (monthly_call_budget {monthly}, interactive reserve {reserve}; it renews {})",
                self.renews
            ),
        }
    }
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
    /// The organisation's monthly API quota is spent (90020): never retried; background
    /// work pauses until the month rolls over.
    QuotaSpent,
}

impl ApiError {
    /// Classifies the failure (see docs/dingtalk.md#error-codes).
    pub fn class(&self) -> ErrorClass {
        if self.org_quota_spent() {
            return ErrorClass::QuotaSpent;
        }
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
            ApiError::Timeout | ApiError::Connect | ApiError::Transport(_) | ApiError::Uncounted => {
                ErrorClass::Transient
            }
            ApiError::Decode(_)
            | ApiError::Credentials(_)
            | ApiError::Undelivered(_)
            | ApiError::Abandoned(_) => ErrorClass::Permanent,
            ApiError::Quota(_) => ErrorClass::QuotaSpent,
        }
    }

    /// Whether DingTalk answered that the organisation's monthly API quota is spent.
    pub(crate) fn org_quota_spent(&self) -> bool {
        match self {
            ApiError::Code { errcode, .. } => *errcode == 90020,
            ApiError::Status { code, .. } => code.contains("ApiCountLimitForOrg"),
            _ => false,
        }
    }

    /// The numeric errcode, when DingTalk gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::Code { errcode, .. } => Some(*errcode),
            ApiError::Quota(QuotaSpent {
                cause: QuotaCause::DingTalk { errcode, .. },
                ..
            }) => *errcode,
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
            ApiError::Uncounted => "quota-uncounted".into(),
            ApiError::Connect => "connect".into(),
            ApiError::Transport(_) => "transport".into(),
            ApiError::Decode(_) => "decode".into(),
            ApiError::Credentials(code) => format!("credentials-{code}"),
            ApiError::Quota(QuotaSpent {
                cause: QuotaCause::DingTalk { code, .. },
                ..
            }) => code.clone(),
            ApiError::Quota(_) => "budget".into(),
            // A fixed word: the errorMsg is DingTalk's text, too varied for a metric label.
            ApiError::Undelivered(_) => "card-not-delivered".into(),
            ApiError::Abandoned(_) => "abandoned".into(),
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

    #[test]
    fn the_organisations_monthly_quota_is_a_class_of_its_own() {
        assert_eq!(code(90020).class(), ErrorClass::QuotaSpent);
        let forbidden = ApiError::Status {
            status: 403,
            code: "Forbidden.AccessDenied.ApiCountLimitForOrg".into(),
            message: String::new(),
        };
        assert_eq!(forbidden.class(), ErrorClass::QuotaSpent);
        let spent = ApiError::Quota(QuotaSpent {
            cause: QuotaCause::DingTalk {
                code: "90020".into(),
                errcode: Some(90020),
            },
            renews: "2027-01-01 00:00 Asia/Shanghai".into(),
        });
        assert_eq!(spent.class(), ErrorClass::QuotaSpent);
        assert_eq!(spent.errcode(), Some(90020));
    }
}
