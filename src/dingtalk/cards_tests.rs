//! The card requests as DingTalk documents them, and the reading of its answers; the
//! client against a scripted loopback server for the request path (method, token header,
//! retries).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::advice::advice;
use crate::dingtalk::ErrorClass;
use crate::telemetry::Metrics;

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn card(callback: CardCallback) -> CardSend {
    CardSend {
        template_id: "tpl-1.schema".into(),
        out_track_id: "dingops-42".into(),
        conversation_id: "cidGroupAaaaaaaaaaa==".into(),
        callback,
        params: params(&[
            ("title", "Mute all"),
            ("status", "done"),
            ("buttons", "[\"undo\"]"),
        ]),
        private: BTreeMap::new(),
    }
}

#[test]
fn a_stream_card_is_created_in_the_group_as_the_robot() {
    assert_eq!(
        create_body(&card(CardCallback::Stream), "dingrobot"),
        json!({
            "cardTemplateId": "tpl-1.schema",
            "outTrackId": "dingops-42",
            "callbackType": "STREAM",
            "cardData": {"cardParamMap": {"buttons": "[\"undo\"]", "status": "done", "title": "Mute all"}},
            "openSpaceId": "dtv1.card//IM_GROUP.cidGroupAaaaaaaaaaa==",
            "imGroupOpenSpaceModel": {"supportForward": false},
            "imGroupOpenDeliverModel": {"robotCode": "dingrobot"},
            "userIdType": 1,
        })
    );
}

#[test]
fn an_http_card_names_its_route_key_and_carries_private_data() {
    let mut c = card(CardCallback::Http {
        route_key: "dingops".into(),
    });
    c.private
        .insert("admin01".into(), params(&[("notice", "only you see this")]));
    let body = create_body(&c, "dingrobot");
    assert_eq!(body["callbackType"], json!("HTTP"));
    assert_eq!(body["callbackRouteKey"], json!("dingops"));
    assert_eq!(
        body["privateData"],
        json!({"admin01": {"cardParamMap": {"notice": "only you see this"}}})
    );
}

#[test]
fn an_update_merges_by_key_and_leaves_out_what_it_does_not_change() {
    let private = BTreeMap::from([("u1".to_owned(), params(&[("notice", "admins only")]))]);
    assert_eq!(
        update_body("dingops-42", &params(&[("status", "undone")]), &private),
        json!({
            "outTrackId": "dingops-42",
            "cardData": {"cardParamMap": {"status": "undone"}},
            "privateData": {"u1": {"cardParamMap": {"notice": "admins only"}}},
            "cardUpdateOptions": {"updateCardDataByKey": true, "updatePrivateDataByKey": true},
            "userIdType": 1,
        })
    );
    let only_private = update_body("dingops-42", &BTreeMap::new(), &private);
    assert!(only_private.get("cardData").is_none(), "{only_private}");
    let only_public = update_body("dingops-42", &params(&[("status", "done")]), &BTreeMap::new());
    assert!(only_public.get("privateData").is_none(), "{only_public}");
}

#[test]
fn a_card_delivered_to_every_space_is_created() {
    let answer = json!({"success": true, "result": {"outTrackId": "dingops-42", "deliverResults": [
        {"spaceType": "IM_GROUP", "spaceId": "cidGroupAaaaaaaaaaa==", "success": true, "carrierId": "c1", "errorMsg": ""}
    ]}});
    assert_eq!(read_created(&answer), Ok(()));
    // Without the list, the HTTP status is all there is to go by.
    assert_eq!(read_created(&json!({"success": true, "result": {}})), Ok(()));
}

#[test]
fn a_card_not_delivered_is_an_error_that_names_it() {
    let answer = json!({"success": true, "result": {"outTrackId": "dingops-42", "deliverResults": [
        {"spaceType": "IM_GROUP", "spaceId": "cidA", "success": true, "errorMsg": ""},
        {"spaceType": "IM_GROUP", "spaceId": "cidB", "success": false, "errorMsg": "robot not in group"}
    ]}});
    let err = read_created(&answer).unwrap_err();
    assert_eq!(err, ApiError::Undelivered("robot not in group".into()));
    assert_eq!(err.to_string(), "card not delivered: robot not in group");
    assert_eq!(err.short(), "card-not-delivered");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(advice(&err).contains("robot is in the group"), "{}", advice(&err));
    for results in [
        json!([]),
        json!([{"spaceId": "cidA"}]),
        json!([{"success": false}]),
    ] {
        let answer = json!({"success": true, "result": {"deliverResults": results}});
        assert!(
            matches!(read_created(&answer), Err(ApiError::Undelivered(_))),
            "{answer}"
        );
    }
    assert_eq!(
        read_created(&json!({"result": {"deliverResults": [{"success": false}]}})),
        Err(ApiError::Undelivered("DingTalk gave no reason".into()))
    );
    assert!(matches!(
        read_created(&json!({"result": {"deliverResults": "yes"}})),
        Err(ApiError::Decode(_))
    ));
}

#[test]
fn a_2xx_answer_with_success_false_is_an_error_with_its_code() {
    let err = read_created(&json!({"success": false, "code": "param.templateNotExist", "message": "no"}))
        .unwrap_err();
    assert_eq!(err.short(), "param.templateNotExist");
    assert!(matches!(
        read_updated(&json!({"success": false})),
        Err(ApiError::Decode(_))
    ));
    assert!(matches!(
        read_updated(&json!({"success": true, "result": false})),
        Err(ApiError::Decode(_))
    ));
    assert_eq!(read_updated(&json!({"success": true, "result": true})), Ok(()));
}

#[test]
fn a_registration_that_kept_another_url_is_an_error_that_never_shows_the_secret() {
    let url = "https://ops.example.com/card-callback";
    let ok = json!({"success": true, "result": {"callbackUrl": url, "apiSecret": "s3cret-echo"}});
    assert_eq!(read_registered(&ok, url), Ok(()));
    let kept = json!({"success": true, "result": {"callbackUrl": "https://old.example.com/cb", "apiSecret": "s3cret-echo"}});
    let err = read_registered(&kept, url).unwrap_err();
    assert!(err.to_string().contains("https://old.example.com/cb"), "{err}");
    assert!(!format!("{err} {err:?}").contains("s3cret-echo"));
}

#[test]
fn a_refused_permission_names_the_scope_the_card_apis_need() {
    let real = json!({
        "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "requestid": "r1",
        "message": "没有调用该接口的权限",
        "accessdenieddetail": {"requiredScopes": ["Card.Instance.Write"]}
    });
    let without_detail =
        json!({"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied", "message": "denied"});
    for answer in [real, without_detail] {
        let err = card_error(403, &answer);
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(err.to_string().contains("Card.Instance.Write"), "{err}");
        assert!(
            advice(&err).starts_with("the app lacks permission Card.Instance.Write"),
            "{}",
            advice(&err)
        );
    }
    // A rate limit or the monthly quota is not a permission.
    let limited = card_error(
        403,
        &json!({"code": "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}),
    );
    assert_eq!(limited.class(), ErrorClass::RateLimited);
    assert!(!limited.to_string().contains("Card.Instance.Write"));
    let spent = card_error(
        403,
        &json!({"code": "Forbidden.AccessDenied.ApiCountLimitForOrg"}),
    );
    assert_eq!(spent.class(), ErrorClass::QuotaSpent);
}

#[test]
fn template_and_route_key_errors_name_their_fix() {
    for code in ["param.templateNotExist", "param.templateUnpublished"] {
        let err = card_error(400, &json!({"code": code, "message": "m"}));
        assert_eq!(err.class(), ErrorClass::Permanent);
        let fix = advice(&err);
        assert!(
            fix.contains("publish") && fix.contains("`card_template_id`"),
            "{fix}"
        );
    }
    let taken = card_error(
        400,
        &json!({"code": "param.callbackRouteKeyExist", "message": "m"}),
    );
    assert!(advice(&taken).contains("--force"), "{}", advice(&taken));
    let busy = card_error(500, &json!({"code": "system.busy", "message": "m"}));
    assert_eq!(busy.class(), ErrorClass::Transient);
}

/// One request the scripted server read.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    token: Option<String>,
    body: Value,
}

/// What the scripted server answers: status, body, and how long it waits first.
type Script = Box<dyn Fn(&Seen, usize) -> (u16, Value, Duration) + Send + Sync>;

/// A loopback HTTP/1.1 server that hands out a token at `/v1.0/oauth2/accessToken` and
/// answers every other request as `script` says (given the request and how many came
/// before it); its base URL and what it read.
fn scripted(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (script, log) = (Arc::new(script), seen.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (script, log) = (script.clone(), log.clone());
            std::thread::spawn(move || serve(conn, &script, &log));
        }
    });
    (base, seen)
}

fn serve(conn: std::net::TcpStream, script: &Script, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut length, mut token) = (0, None);
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if lower.starts_with("x-acs-dingtalk-access-token:") {
                token = line.split_once(':').map(|(_, v)| v.trim().to_owned());
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let seen = Seen {
            method,
            path,
            token,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let (status, answer, wait) = if seen.path == "/v1.0/oauth2/accessToken" {
            (
                200,
                json!({"accessToken": "tok-1", "expireIn": 7200}),
                Duration::ZERO,
            )
        } else {
            let mut log = log.lock().unwrap();
            log.push(seen.clone());
            script(&seen, log.len() - 1)
        };
        std::thread::sleep(wait);
        let answer = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if conn.write_all(format!("{head}{answer}").as_bytes()).is_err() {
            return;
        }
    }
}

fn client(base: &str) -> DingTalk {
    DingTalk::new(
        &settings(base),
        Arc::new(Metrics::new()),
        crate::clock::wall_clock(),
    )
    .unwrap()
}

fn settings(base: &str) -> crate::config::DingTalkSettings {
    let env = [
        ("DINGOPS_APP_KEY", "dingrobot"),
        ("DINGOPS_APP_SECRET", "app-secret"),
        ("DINGOPS_API_BASE", base),
        ("DINGOPS_OAPI_BASE", base),
        ("DINGOPS_UPSTREAM_TIMEOUT_MS", "300"),
        ("DINGOPS_RETRY_BASE_MS", "1"),
        ("DINGOPS_API_CALLS_PER_SEC", "0"),
        ("DINGOPS_MONTHLY_CALL_BUDGET", "5000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    crate::config::Settings::from_sources(None, &env)
        .unwrap()
        .dingtalk
}

fn delivered() -> Value {
    json!({"success": true, "result": {"outTrackId": "dingops-42", "deliverResults": [{"spaceType": "IM_GROUP", "spaceId": "cidGroupAaaaaaaaaaa==", "success": true, "carrierId": "c", "errorMsg": ""}]}})
}

#[tokio::test]
async fn a_card_is_posted_with_the_new_style_token_and_counted_as_a_card_call() {
    let (base, seen) = scripted(Box::new(|_, _| (200, delivered(), Duration::ZERO)));
    let ledger = crate::ledger::LedgerHandle::new(crate::ledger::MemoryLedger::new());
    let dingtalk = DingTalk::with_budget(
        &settings(&base),
        Arc::new(Metrics::new()),
        ledger,
        crate::clock::wall_clock(),
    )
    .unwrap();
    dingtalk.create_card(&card(CardCallback::Stream)).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1.0/card/instances/createAndDeliver")
    );
    assert_eq!(seen[0].token.as_deref(), Some("tok-1"));
    assert_eq!(
        seen[0].body["imGroupOpenDeliverModel"]["robotCode"],
        json!("dingrobot")
    );
    let usage = dingtalk.quota_usage().await.unwrap();
    let counted: Vec<(&str, &str, u64)> = usage
        .counts
        .iter()
        .map(|c| (c.api.as_str(), c.class.as_str(), c.calls))
        .collect();
    assert_eq!(counted, [("card.createAndDeliver", "interactive", 1)]);
}

#[tokio::test]
async fn a_create_that_timed_out_and_then_already_exists_was_created() {
    // The first attempt outlives the client's timeout (DingTalk may have created the card);
    // the retry with the same outTrackId finds it.
    let (base, seen) = scripted(Box::new(|_, n| match n {
        0 => (200, delivered(), Duration::from_millis(600)),
        _ => (
            400,
            json!({"code": "param.cardAlreadyExist", "message": "exists"}),
            Duration::ZERO,
        ),
    }));
    let dingtalk = client(&base);
    assert_eq!(dingtalk.create_card(&card(CardCallback::Stream)).await, Ok(()));
    assert_eq!(seen.lock().unwrap().len(), 2);
    // Without an unclear attempt before it, the same answer is an error.
    let (base, _) = scripted(Box::new(|_, _| {
        (
            400,
            json!({"code": "param.cardAlreadyExist", "message": "exists"}),
            Duration::ZERO,
        )
    }));
    let err = client(&base)
        .create_card(&card(CardCallback::Stream))
        .await
        .unwrap_err();
    assert_eq!(err.short(), "param.cardAlreadyExist");
}

#[tokio::test]
async fn a_busy_create_is_retried_and_an_undelivered_one_is_not() {
    let (base, seen) = scripted(Box::new(|_, n| match n {
        0 => (
            500,
            json!({"code": "system.busy", "message": "busy"}),
            Duration::ZERO,
        ),
        _ => (200, delivered(), Duration::ZERO),
    }));
    assert_eq!(
        client(&base).create_card(&card(CardCallback::Stream)).await,
        Ok(())
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    let (base, seen) = scripted(Box::new(|_, _| {
        (
            200,
            json!({"success": true, "result": {"deliverResults": [{"success": false, "errorMsg": "no robot"}]}}),
            Duration::ZERO,
        )
    }));
    let err = client(&base)
        .create_card(&card(CardCallback::Stream))
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::Undelivered("no robot".into()));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_update_is_a_put_and_an_empty_one_calls_nothing() {
    let (base, seen) = scripted(Box::new(|_, _| {
        (200, json!({"success": true, "result": true}), Duration::ZERO)
    }));
    let dingtalk = client(&base);
    dingtalk
        .update_card("dingops-42", &BTreeMap::new(), &BTreeMap::new())
        .await
        .unwrap();
    assert!(seen.lock().unwrap().is_empty());
    dingtalk
        .update_card("dingops-42", &params(&[("status", "undone")]), &BTreeMap::new())
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PUT", "/v1.0/card/instances")
    );
    assert_eq!(seen[0].body["outTrackId"], json!("dingops-42"));
    assert_eq!(seen[0].token.as_deref(), Some("tok-1"));
}

#[tokio::test]
async fn a_registration_sends_the_secret_and_force_and_its_errors_never_carry_it() {
    let (base, seen) = scripted(Box::new(|req, _| {
        if req.body["forceUpdate"] == json!(true) {
            (
                200,
                json!({"success": true, "result": {"callbackUrl": req.body["callbackUrl"], "apiSecret": req.body["apiSecret"]}}),
                Duration::ZERO,
            )
        } else {
            (
                400,
                json!({"code": "param.callbackRouteKeyExist", "message": "route key exists"}),
                Duration::ZERO,
            )
        }
    }));
    let dingtalk = client(&base);
    let secret = SecretString::from("card-s3cret".to_owned());
    let url = "https://ops.example.com/card-callback";
    let err = dingtalk
        .register_card_callback(url, "dingops", &secret, false)
        .await
        .unwrap_err();
    assert_eq!(err.short(), "param.callbackRouteKeyExist");
    assert!(!format!("{err} {err:?} {}", advice(&err)).contains("card-s3cret"));
    dingtalk
        .register_card_callback(url, "dingops", &secret, true)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1].path, "/v1.0/card/callbacks/register");
    assert_eq!(
        seen[1].body,
        json!({"callbackRouteKey": "dingops", "callbackUrl": url, "apiSecret": "card-s3cret", "forceUpdate": true})
    );
}
