//! The APIs dingops calls, one method each: the request and how to read the answer. Every
//! one goes through [`DingTalk::call`] (or its guarded twin), which owns tokens, pacing, the
//! quota, retries and deadlines (see `mod.rs`).

use std::collections::BTreeMap;

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use url::Url;

use super::wire::{join, legacy_outcome, read_body, transport, truncate};
use super::{Api, ApiError, AttemptGuard, DepartmentInfo, DingTalk, GroupInfo, SWITCH_FIELDS, TokenKind};
use crate::domain::ChatId;

impl DingTalk {
    /// `friendswitch/update`: forbids (`prohibit = true`) or allows private chat between the
    /// members of the group `chatid`.
    #[tracing::instrument(skip(self), fields(chatid = %chatid))]
    pub async fn set_friend_switch(&self, chatid: &ChatId, prohibit: bool) -> Result<(), ApiError> {
        self.set_friend_switch_guarded(chatid, prohibit, None).await
    }

    /// [`DingTalk::set_friend_switch`] with `guard` asked before each attempt.
    pub async fn set_friend_switch_guarded(
        &self,
        chatid: &ChatId,
        prohibit: bool,
        guard: Option<&AttemptGuard>,
    ) -> Result<(), ApiError> {
        self.call_guarded(
            Api::FriendSwitch,
            Some(TokenKind::Legacy),
            guard,
            |tok| async move {
                let mut url = join(&self.shared.oapi_base, "/topapi/chat/member/friendswitch/update")?;
                if let Some(t) = &tok {
                    url.query_pairs_mut()
                        .append_pair("access_token", t.expose_secret());
                }
                let body = json!({"chatid": chatid.as_str(), "is_prohibit": prohibit});
                let resp = self
                    .shared
                    .http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(transport)?;
                let (status, v) = read_body(resp).await?;
                legacy_outcome(status, &v)
            },
        )
        .await
    }

    /// `im/group/update`: sets one `managementOptions` switch (`field` = 0 or 1) of the
    /// group `chatid`. Success is HTTP 2xx with `"success": true`.
    #[tracing::instrument(skip(self), fields(chatid = %chatid))]
    pub async fn update_group(&self, chatid: &ChatId, field: &str, value: u8) -> Result<(), ApiError> {
        self.update_group_fields(chatid, &BTreeMap::from([(field, value)]))
            .await
    }

    /// `im/group/update` with several `managementOptions` switches (field → 0 or 1) in one
    /// call, as a policy changes a group. An empty map calls nothing.
    #[tracing::instrument(skip(self, fields), fields(chatid = %chatid, fields = fields.len()))]
    pub async fn update_group_fields(
        &self,
        chatid: &ChatId,
        fields: &BTreeMap<&str, u8>,
    ) -> Result<(), ApiError> {
        self.update_group_fields_guarded(chatid, fields, None).await
    }

    /// [`DingTalk::update_group_fields`] with `guard` asked before each attempt.
    pub async fn update_group_fields_guarded(
        &self,
        chatid: &ChatId,
        fields: &BTreeMap<&str, u8>,
        guard: Option<&AttemptGuard>,
    ) -> Result<(), ApiError> {
        if fields.is_empty() {
            return Ok(());
        }
        let body = &json!({"chatid": chatid.as_str(), "managementOptions": fields});
        self.call_guarded(
            Api::GroupUpdate,
            Some(TokenKind::Modern),
            guard,
            |tok| async move {
                let v = self
                    .modern_post("/v1.0/im/group/update", &tok, Some(body))
                    .await?;
                if v.get("success").and_then(Value::as_bool) == Some(true) {
                    Ok(())
                } else {
                    Err(ApiError::Decode(
                        "group/update answered without success: true".into(),
                    ))
                }
            },
        )
        .await
    }

    /// `chat/get`: the group `chatid` as DingTalk has it now.
    #[tracing::instrument(skip(self), fields(chatid = %chatid))]
    pub async fn chat_get(&self, chatid: &ChatId) -> Result<GroupInfo, ApiError> {
        self.call(Api::ChatGet, Some(TokenKind::Legacy), |tok| async move {
            let mut url = join(&self.shared.oapi_base, "/chat/get")?;
            if let Some(t) = &tok {
                url.query_pairs_mut()
                    .append_pair("access_token", t.expose_secret());
            }
            url.query_pairs_mut().append_pair("chatid", chatid.as_str());
            let resp = self.shared.http.get(url).send().await.map_err(transport)?;
            let (status, v) = read_body(resp).await?;
            legacy_outcome(status, &v)?;
            let info = v
                .get("chat_info")
                .filter(|i| i.is_object())
                .ok_or_else(|| ApiError::Decode("chat/get answered without chat_info".into()))?;
            let text = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            Ok(GroupInfo {
                name: text("name"),
                owner: text("owner"),
                status: info.get("status").and_then(Value::as_i64).unwrap_or(0),
                options: SWITCH_FIELDS
                    .iter()
                    .filter_map(|f| info.get(*f).and_then(Value::as_i64).map(|v| ((*f).to_owned(), v)))
                    .collect(),
            })
        })
        .await
    }

    /// One legacy POST with `{"dept_id": N}` to a department API; the checked answer.
    async fn department_post(&self, api: Api, path: &str, dept_id: i64) -> Result<Value, ApiError> {
        let body = &json!({ "dept_id": dept_id });
        self.call(api, Some(TokenKind::Legacy), |tok| async move {
            let mut url = join(&self.shared.oapi_base, path)?;
            if let Some(t) = &tok {
                url.query_pairs_mut()
                    .append_pair("access_token", t.expose_secret());
            }
            let resp = self
                .shared
                .http
                .post(url)
                .json(body)
                .send()
                .await
                .map_err(transport)?;
            let (status, v) = read_body(resp).await?;
            legacy_outcome(status, &v)?;
            Ok(v)
        })
        .await
    }

    /// `topapi/v2/department/listsubid`: the ids of the direct sub-departments of `dept_id`.
    #[tracing::instrument(skip(self))]
    pub async fn sub_departments(&self, dept_id: i64) -> Result<Vec<i64>, ApiError> {
        let v = self
            .department_post(
                Api::DepartmentListSubId,
                "/topapi/v2/department/listsubid",
                dept_id,
            )
            .await?;
        let list = v
            .pointer("/result/dept_id_list")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::Decode("listsubid answered without result.dept_id_list".into()))?;
        list.iter()
            .map(|id| {
                id.as_i64().ok_or_else(|| {
                    ApiError::Decode(format!(
                        "listsubid answered a dept_id that is not an integer: {id}"
                    ))
                })
            })
            .collect()
    }

    /// `topapi/v2/department/get`: the name of `dept_id` and the chatid of its department
    /// group. A `dept_group_chat_id` that is not a chatid is an error, not a group.
    #[tracing::instrument(skip(self))]
    pub async fn department(&self, dept_id: i64) -> Result<DepartmentInfo, ApiError> {
        let v = self
            .department_post(Api::DepartmentGet, "/topapi/v2/department/get", dept_id)
            .await?;
        let result = v
            .get("result")
            .filter(|r| r.is_object())
            .ok_or_else(|| ApiError::Decode("department/get answered without result".into()))?;
        let name = result
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Decode("department/get answered without a name".into()))?
            .to_owned();
        let group = match result.get("dept_group_chat_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(ChatId::parse(s).map_err(|e| {
                // Quoted with escapes: DingTalk's text is not ours to print raw.
                ApiError::Decode(format!("dept_group_chat_id {:?} is {e}", truncate(s, 140)))
            })?),
            Some(other) => {
                return Err(ApiError::Decode(format!(
                    "dept_group_chat_id is not a string: {}",
                    truncate(&other.to_string(), 140)
                )));
            }
        };
        Ok(DepartmentInfo { name, group })
    }

    /// `convertToOpenConversationId`: the openConversationId of the group `chatid`.
    #[tracing::instrument(skip(self), fields(chatid = %chatid))]
    pub async fn open_conversation_id(&self, chatid: &ChatId) -> Result<String, ApiError> {
        // A ChatId holds only URL-safe characters, so it can stand in the path as it is.
        let path = &format!("/v1.0/im/chat/{chatid}/convertToOpenConversationId");
        self.call(Api::ConvertChatId, Some(TokenKind::Modern), |tok| async move {
            let v = self.modern_post(path, &tok, None).await?;
            v.get("openConversationId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| ApiError::Decode("answer without openConversationId".into()))
        })
        .await
    }

    /// The robot group-message API (`sampleText`): the fallback when a reply session has
    /// expired. It cannot @-mention.
    pub async fn send_group_message(&self, open_conversation_id: &str, text: &str) -> Result<(), ApiError> {
        let body = &json!({
            "msgParam": json!({"content": text}).to_string(),
            "msgKey": "sampleText",
            "openConversationId": open_conversation_id,
            "robotCode": self.shared.robot_code,
        });
        self.call(Api::GroupMessage, Some(TokenKind::Modern), |tok| async move {
            self.modern_post("/v1.0/robot/groupMessages/send", &tok, Some(body))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Posts `message` to a sessionWebhook (already checked against `reply_hosts`).
    pub async fn send_by_session(&self, webhook: &Url, message: &Value) -> Result<(), ApiError> {
        self.call(Api::SendBySession, None, |_| async {
            let resp = self
                .shared
                .http
                .post(webhook.clone())
                .json(message)
                .send()
                .await
                .map_err(transport)?;
            let (status, v) = read_body(resp).await?;
            legacy_outcome(status, &v)
        })
        .await
    }
}
