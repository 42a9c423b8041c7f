//! The group-governance APIs: `im/group/update` stores the switches, `chat/get` reads them.

use std::net::TcpListener;

use dingtalk_sim::{Fault, SimConfig, Simulator, api};
use serde_json::{Value, json};

async fn sim_with_group() -> Simulator {
    let sim = Simulator::start(
        SimConfig::default(),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("start");
    sim.add_group("cidGov==", "chatgov1", "governed");
    sim
}

async fn modern_token(sim: &Simulator) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/v1.0/oauth2/accessToken", sim.url()))
        .json(&json!({"appKey": sim.config().app_key, "appSecret": sim.config().app_secret}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    v["accessToken"].as_str().expect("accessToken").to_owned()
}

async fn legacy_token(sim: &Simulator) -> String {
    let v: Value = reqwest::Client::new()
        .get(format!(
            "{}/gettoken?appkey={}&appsecret={}",
            sim.url(),
            sim.config().app_key,
            sim.config().app_secret
        ))
        .send()
        .await
        .expect("gettoken")
        .json()
        .await
        .expect("json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

async fn update(sim: &Simulator, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1.0/im/group/update", sim.url()))
        .header("x-acs-dingtalk-access-token", token)
        .json(&body)
        .send()
        .await
        .expect("update");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

async fn chat_info(sim: &Simulator, token: &str, chatid: &str) -> Value {
    reqwest::Client::new()
        .get(format!(
            "{}/chat/get?access_token={token}&chatid={chatid}",
            sim.url()
        ))
        .send()
        .await
        .expect("chat/get")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn an_update_is_stored_and_chat_get_reads_it_back() {
    let sim = sim_with_group().await;
    let token = modern_token(&sim).await;
    let (status, v) = update(
        &sim,
        &token,
        json!({"chatid": "chatgov1", "managementOptions": {"chatBannedType": 1}}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"success": true})));
    let group = sim.group("cidGov==").expect("group");
    assert_eq!(group.options["chatBannedType"], 1);
    assert_eq!(
        sim.calls(Some(api::GROUP_UPDATE))[0].access_token.as_deref(),
        Some(token.as_str())
    );

    let legacy = legacy_token(&sim).await;
    let v = chat_info(&sim, &legacy, "chatgov1").await;
    assert_eq!(v["errcode"], 0);
    assert_eq!(v["chat_info"]["chatBannedType"], 1);
    assert_eq!(v["chat_info"]["searchable"], 0);
    assert_eq!(v["chat_info"]["name"], "governed");
    assert_eq!(v["chat_info"]["status"], 1);
    assert!(v["chat_info"]["owner"].is_string());

    assert!(sim.set_option("cidGov==", "searchable", 1));
    let v = chat_info(&sim, &legacy, "chatgov1").await;
    assert_eq!(v["chat_info"]["searchable"], 1);
    sim.stop().await;
}

#[tokio::test]
async fn bad_updates_get_dingtalks_error_shapes() {
    let sim = sim_with_group().await;
    let token = modern_token(&sim).await;
    let body = json!({"chatid": "chatgov1", "managementOptions": {"searchable": 1}});
    let (status, v) = update(&sim, "wrong", body.clone()).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("InvalidAuthentication")));
    let (status, v) = update(
        &sim,
        &token,
        json!({"chatid": "chatnope", "managementOptions": {"searchable": 1}}),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("parameter.invalid")));
    let (status, v) = update(
        &sim,
        &token,
        json!({"chatid": "chatgov1", "managementOptions": {"searchable": 7}}),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("parameter.invalid")));
    sim.inject(
        api::GROUP_UPDATE,
        Fault::Status {
            status: 400,
            code: "permession.checkFailed".into(),
            message: "群主不在应用可见性内".into(),
        },
    );
    let (status, v) = update(&sim, &token, body).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("permession.checkFailed"))
    );
    assert_eq!(sim.group("cidGov==").expect("group").options["searchable"], 0);

    let v = chat_info(&sim, "wrong", "chatgov1").await;
    assert_eq!(v["errcode"], 40014);
    let legacy = legacy_token(&sim).await;
    let v = chat_info(&sim, &legacy, "chatnope").await;
    assert_eq!(v["errcode"], 49000);
    sim.stop().await;
}

#[tokio::test]
async fn a_fault_for_one_chat_hits_only_that_groups_next_call_and_is_recorded_with_its_body() {
    let sim = sim_with_group().await;
    sim.add_group("cidOther==", "chatother1", "other");
    let token = modern_token(&sim).await;
    sim.inject_for_chat(api::GROUP_UPDATE, "chatgov1", Fault::Errcode { errcode: 60011 });
    let other = json!({"chatid": "chatother1", "managementOptions": {"searchable": 1}});
    let mine = json!({"chatid": "chatgov1", "managementOptions": {"searchable": 1}});
    // Another group's call goes through although it comes first.
    assert_eq!(update(&sim, &token, other.clone()).await.0, 200);
    let (status, v) = update(&sim, &token, mine.clone()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("Forbidden.AccessDenied.AccessTokenPermissionDenied"))
    );
    // Consumed: the group's next call goes through.
    assert_eq!(update(&sim, &token, mine.clone()).await.0, 200);
    let calls = sim.calls(Some(api::GROUP_UPDATE));
    let seen: Vec<(Value, i64)> = calls.into_iter().map(|c| (c.body, c.answer)).collect();
    assert_eq!(seen, [(other, 0), (mine.clone(), 60011), (mine, 0)]);

    // The same through the control API, for the private-chat switch.
    let legacy = legacy_token(&sim).await;
    let queued: Value = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.url()))
        .json(&json!({"api": api::FRIEND_SWITCH, "chatid": "chatgov1", "fault": {"kind": "errcode", "errcode": 34001}}))
        .send()
        .await
        .expect("faults")
        .json()
        .await
        .expect("json");
    assert_eq!(queued, json!({"ok": true}));
    let switch = |chatid: &str| {
        reqwest::Client::new()
            .post(format!(
                "{}/topapi/chat/member/friendswitch/update?access_token={legacy}",
                sim.url()
            ))
            .json(&json!({"chatid": chatid, "is_prohibit": true}))
            .send()
    };
    let answer = |r: reqwest::Response| async { r.json::<Value>().await.expect("json")["errcode"].clone() };
    assert_eq!(answer(switch("chatother1").await.expect("switch")).await, 0);
    assert_eq!(answer(switch("chatgov1").await.expect("switch")).await, 34001);
    assert_eq!(answer(switch("chatgov1").await.expect("switch")).await, 0);
    assert!(sim.group("cidGov==").expect("group").dm_prohibited);
    sim.stop().await;
}

#[tokio::test]
async fn a_spent_monthly_quota_answers_90020_on_counted_apis_only_until_the_month_rolls_over() {
    let sim = sim_with_group().await;
    sim.set_quota(2, 0);
    let legacy = legacy_token(&sim).await;
    let modern = modern_token(&sim).await;
    assert_eq!(chat_info(&sim, &legacy, "chatgov1").await["errcode"], 0);
    let body = json!({"chatid": "chatgov1", "managementOptions": {"searchable": 1}});
    assert_eq!(update(&sim, &modern, body.clone()).await.0, 200);
    assert_eq!(sim.quota().used, 2);

    let spent = chat_info(&sim, &legacy, "chatgov1").await;
    assert_eq!(spent["errcode"], 90020, "{spent}");
    let (status, answer) = update(&sim, &modern, body.clone()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("Forbidden.AccessDenied.ApiCountLimitForOrg"))
    );
    // Tokens are exempt; refused calls are not counted.
    assert!(!legacy_token(&sim).await.is_empty());
    assert_eq!(sim.quota().used, 2);
    assert_eq!(
        sim.calls(Some(api::CHAT_GET))
            .iter()
            .map(|c| c.answer)
            .collect::<Vec<_>>(),
        [0, 90020]
    );

    sim.set_quota(2, 0);
    assert_eq!(update(&sim, &modern, body).await.0, 200, "a new month");
    sim.stop().await;
}
