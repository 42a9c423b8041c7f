//! What an admin should do about a DingTalk failure: the advice every reply, card, CLI
//! check and log line gives, in one place (see docs/dingtalk.md#error-codes). The words are
//! the renderer's; the DingTalk client only classifies the failure.

use crate::dingtalk::{ApiError, ErrorClass};

/// Which calls failed: a missing permission is named after what they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Changing groups (`qyapi_chat_manage`), and every other call: [`advice`].
    ChangeGroups,
    /// Reading a group (`qyapi_chat_read`).
    ReadGroups,
    /// Reading the organisation's departments (`qyapi_get_department_list`).
    Departments,
}

/// [`advice`] for a call that needs `needs`: a missing permission names it.
pub fn advice_for(e: &ApiError, needs: Needs) -> String {
    let permission_code = e.errcode() == Some(60011);
    let denied = matches!(e, ApiError::Status { code, .. } if code.contains("PermissionDenied"));
    match needs {
        Needs::ReadGroups if permission_code || denied => {
            "the app lacks permission qyapi_chat_read; add it in the DingTalk developer console".into()
        }
        Needs::Departments => {
            let forbidden =
                matches!(e, ApiError::Status { status: 403, .. }) && e.class() == ErrorClass::Permanent;
            let permission = matches!(e, ApiError::Code { errcode: 60011, .. }) || forbidden || denied;
            if permission {
                "the app lacks permission qyapi_get_department_list (read the organisation's departments); add it in the DingTalk developer console".into()
            } else if e.errcode() == Some(60003) {
                "DingTalk no longer knows this department (changed during the walk?); run discover again"
                    .into()
            } else {
                advice(e)
            }
        }
        _ => advice(e),
    }
}

/// What an admin should do about a DingTalk failure (see docs/dingtalk.md#error-codes).
pub fn advice(e: &ApiError) -> String {
    match e {
        ApiError::Quota(q) => format!(
            "the organisation's monthly DingTalk API quota is spent; it renews {}",
            q.renews
        ),
        e if e.org_quota_spent() => {
            "the organisation's monthly DingTalk API quota is spent; it renews on the first of next month".into()
        }
        ApiError::Code { errcode: 34001, .. } => {
            "the bound chatid is invalid; rebind this group with /bind <chatid>".into()
        }
        ApiError::Code { errcode: 40036, .. } => {
            "DingTalk says a parameter was empty (40036); rebind this group with /bind <chatid>".into()
        }
        ApiError::Code { errcode: 60011, .. } => {
            "the app lacks permission qyapi_chat_manage; add it in the DingTalk developer console".into()
        }
        ApiError::Code { errcode: 400001, .. } | ApiError::Code { errcode: -1, .. } => {
            "DingTalk had a system error; try again in a minute".into()
        }
        ApiError::Status { code, .. } if code == "invalideChatId" || code == "invalidChatId" => {
            "DingTalk does not know that chatid; check it and try again".into()
        }
        ApiError::Status { message, .. } if message.contains("群主不在应用可见性内") => {
            "the group owner is outside the app's visibility scope (群主不在应用可见性内); add the owner to the app's visible range in the DingTalk developer console".into()
        }
        ApiError::Status { code, .. } if code == "parameter.invalid" || code.starts_with("invalidParameter") => {
            "DingTalk says a parameter is invalid; check that the bound chatid is right (rebind with /bind <chatid>)".into()
        }
        ApiError::Undelivered(_) => {
            "DingTalk did not deliver the card to the group; check that the robot is in the group and that the app's robot may post there".into()
        }
        ApiError::Status { code, .. } if code == "param.templateNotExist" || code == "param.templateUnpublished" => {
            "DingTalk does not know the card template or it is not published: publish it in DingTalk's card builder and check `card_template_id`".into()
        }
        ApiError::Status { status: 403, message, .. } if message.contains(crate::dingtalk::cards::CARD_PERMISSION) => {
            "the app lacks permission Card.Instance.Write (interactive card instances, write); add it in the DingTalk developer console".into()
        }
        ApiError::Status { code, .. } if code == "param.callbackRouteKeyExist" => {
            "that card_callback_route_key is registered to another URL; run `dingops check --register-card-callback <URL> --force` to replace it".into()
        }
        ApiError::Status { code, .. } if code == "param.cardNotExist" => {
            "DingTalk does not know that card (its outTrackId); it was never delivered or belongs to another app".into()
        }
        ApiError::Status { code, .. } if code == "param.openSpaceIdInvalid" => {
            "DingTalk refused the group's openConversationId for a card; check the group's binding and `ops_group`".into()
        }
        ApiError::Status { code, .. } if code.contains("PermissionDenied") || code.starts_with("permession") => {
            "the app lacks permission qyapi_chat_manage (to change groups) or qyapi_chat_read (to read them); add it in the DingTalk developer console".into()
        }
        ApiError::Status { code, .. } if code.starts_with("Forbidden") => {
            "the app lacks permission qyapi_chat_read, or the group owner is outside the app's visibility; check the developer console".into()
        }
        ApiError::Credentials(_) => "DingTalk refused the app's credentials; check app_key and app_secret".into(),
        ApiError::Uncounted => {
            "the ledger could not count it in the monthly API quota; background work waits until the ledger answers".into()
        }
        e => match e.class() {
            ErrorClass::RateLimited => "DingTalk is rate-limiting this app; try again in a minute".into(),
            ErrorClass::Transient => "DingTalk could not be reached; try again in a minute".into(),
            ErrorClass::TokenRejected => {
                "DingTalk refused the app's access token; check app_key and app_secret".into()
            }
            ErrorClass::Permanent => "see the dingops log for details".into(),
            ErrorClass::QuotaSpent => {
                "the organisation's monthly DingTalk API quota is spent; it renews on the first of next month".into()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::code;
    use crate::dingtalk::{QuotaCause, QuotaSpent};

    #[test]
    fn the_organisations_monthly_quota_is_advised_with_its_renewal() {
        let forbidden = ApiError::Status {
            status: 403,
            code: "Forbidden.AccessDenied.ApiCountLimitForOrg".into(),
            message: String::new(),
        };
        assert!(advice(&code(90020)).contains("monthly DingTalk API quota is spent"));
        assert!(advice(&forbidden).contains("monthly DingTalk API quota is spent"));
        let spent = ApiError::Quota(QuotaSpent {
            cause: QuotaCause::DingTalk {
                code: "90020".into(),
                errcode: Some(90020),
            },
            renews: "2027-01-01 00:00 Asia/Shanghai".into(),
        });
        assert!(advice(&spent).ends_with("it renews 2027-01-01 00:00 Asia/Shanghai"));
    }

    #[test]
    fn advice_names_the_fix_for_documented_codes() {
        assert!(advice(&code(60011)).contains("qyapi_chat_manage"));
        assert!(advice(&code(34001)).contains("/bind"));
        assert!(advice(&code(400001)).contains("try again"));
        let status = |code: &str, message: &str| ApiError::Status {
            status: 400,
            code: code.into(),
            message: message.into(),
        };
        assert!(advice(&status("permession.checkFailed", "群主不在应用可见性内")).contains("visibility"));
        assert!(advice(&status("permession.checkFailed", "")).contains("qyapi_chat_manage"));
        assert!(advice(&status("parameter.invalid", "")).contains("/bind"));
    }

    #[test]
    fn a_missing_permission_is_named_after_what_the_call_needs() {
        assert!(advice_for(&code(60011), Needs::ChangeGroups).contains("qyapi_chat_manage"));
        assert!(advice_for(&code(60011), Needs::ReadGroups).contains("qyapi_chat_read;"));
        assert!(advice_for(&code(60011), Needs::Departments).contains("qyapi_get_department_list"));
        assert!(advice_for(&code(60003), Needs::Departments).contains("run discover again"));
        assert!(advice_for(&code(400001), Needs::ReadGroups).contains("try again in a minute"));
    }
}
