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
