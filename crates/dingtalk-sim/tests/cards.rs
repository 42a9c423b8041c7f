//! Interactive cards: `createAndDeliver`, `PUT card/instances`, `callbacks/register`, the
//! `/_sim/cards*` control routes, and button presses over Stream and signed HTTP.

use std::net::TcpListener;

use dingtalk_sim::{CardFailMode, SimConfig, Simulator, api};
use serde_json::{Value, json};

const CID: &str = "cidCards==";

fn sim() -> Simulator {
    let sim = Simulator::start(
        SimConfig {
            stream_repush_after_ms: 300,
            ..SimConfig::default()
        },
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("start");
    sim.add_group(CID, "chatcards", "cards");
    sim
}

async fn token(sim: &Simulator) -> String {
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

/// A valid `createAndDeliver` body for the card `id`.
fn card_body(sim: &Simulator, id: &str) -> Value {
    json!({
        "cardTemplateId": "tpl-dingops.schema",
        "outTrackId": id,
        "callbackType": "STREAM",
        "cardData": {"cardParamMap": {
            "title": "DMs off",
            "status": "done",
            "body": "Private chat **prohibited** by Admin",
            "buttons": "[\"undo\",\"extend\",\"revert_now\"]",
        }},
        "privateData": {"staff-b": {"cardParamMap": {"notice": "admins only"}}},
        "openSpaceId": format!("dtv1.card//IM_GROUP.{CID}"),
        "imGroupOpenSpaceModel": {"supportForward": false},
        "imGroupOpenDeliverModel": {"robotCode": sim.config().app_key},
        "userIdType": 1,
    })
}

/// A call with the token in `x-acs-dingtalk-access-token`: status and JSON body.
async fn call(sim: &Simulator, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", sim.url());
    let mut req = match method {
        "PUT" => client.put(url),
        _ => client.post(url),
    };
    if let Some(t) = token {
        req = req.header("x-acs-dingtalk-access-token", t);
    }
    let resp = req.json(body).send().await.expect("call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create(sim: &Simulator, token: &str, body: &Value) -> (u16, Value) {
    call(
        sim,
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        Some(token),
        body,
    )
    .await
}

async fn put(sim: &Simulator, token: &str, body: &Value) -> (u16, Value) {
    call(sim, "PUT", "/v1.0/card/instances", Some(token), body).await
}

async fn register(sim: &Simulator, token: &str, body: &Value) -> (u16, Value) {
    call(sim, "POST", "/v1.0/card/callbacks/register", Some(token), body).await
}

async fn get(sim: &Simulator, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{}{path}", sim.url())).await.expect("get");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(sim: &Simulator, path: &str, body: &Value) -> (u16, Value) {
    call(sim, "POST", path, None, body).await
}

/// The text of the transcript entries (cards and updates) of the group.
fn transcript(sim: &Simulator) -> Vec<(String, String)> {
    sim.replies()
        .into_iter()
        .filter(|r| r.open_conversation_id == CID)
        .map(|r| (r.via, r.content))
        .collect()
}

#[tokio::test]
async fn a_created_card_is_answered_as_delivered_kept_and_shown_in_the_group_transcript() {
    let sim = sim();
    let token = token(&sim).await;
    let (status, v) = create(&sim, &token, &card_body(&sim, "card-1")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["result"]["outTrackId"], "card-1");
    let results = v["result"]["deliverResults"].as_array().expect("deliverResults");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["spaceType"], "IM_GROUP");
    assert_eq!(results[0]["spaceId"], CID);
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[0]["errorMsg"], "");
    assert!(!results[0]["carrierId"].as_str().expect("carrierId").is_empty());

    let card = sim.card("card-1").expect("kept");
    assert_eq!(card.conversation_id, CID);
    assert_eq!(card.template_id, "tpl-dingops.schema");
    assert_eq!(card.callback_type, "STREAM");
    assert_eq!(card.callback_route_key, None);
    assert_eq!(card.robot_code, sim.config().app_key);
    assert_eq!(card.params["status"], "done");
    assert_eq!(card.params.len(), 4);
    assert_eq!(card.private["staff-b"]["notice"], "admins only");
    assert_eq!(card.updates, 0);
    assert_eq!(sim.cards(), vec![card.clone()]);

    let (status, listed) = get(&sim, "/_sim/cards").await;
    assert_eq!(status, 200);
    let listed = listed.as_array().expect("a list").clone();
    assert_eq!(listed.len(), 1);
    let one = &listed[0];
    assert_eq!(one["outTrackId"], "card-1");
    assert_eq!(one["conversationId"], CID);
    assert_eq!(one["templateId"], "tpl-dingops.schema");
    assert_eq!(one["callbackType"], "STREAM");
    assert_eq!(one["callbackRouteKey"], Value::Null);
    assert_eq!(one["robotCode"], sim.config().app_key.as_str());
    assert_eq!(one["params"]["title"], "DMs off");
    assert_eq!(one["private"], json!({"staff-b": {"notice": "admins only"}}));
    assert_eq!(one["updates"], 0);
    assert_eq!(one["createdMs"], card.created_ms);
    assert_eq!(get(&sim, "/_sim/cards/card-1").await, (200, one.clone()));
    assert_eq!(get(&sim, "/_sim/cards/card-2").await.0, 404);

    assert_eq!(
        transcript(&sim),
        vec![(
            "card".to_owned(),
            "[card] DMs off — done\nPrivate chat **prohibited** by Admin\n[Undo] [Extend] [Revert now]\n\
             (to staff-b only) admins only"
                .to_owned()
        )]
    );
    let calls = sim.calls(Some(api::CARD_CREATE));
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].answer, calls[0].access_token.as_deref()),
        (0, Some(token.as_str()))
    );
    sim.stop().await;
}

/// Creates `body` and checks it is refused with `status` and `code`, keeping nothing.
async fn assert_refused(sim: &Simulator, token: Option<&str>, body: &Value, status: u16, code: &str) {
    let before = sim.cards();
    let (got, v) = call(sim, "POST", "/v1.0/card/instances/createAndDeliver", token, body).await;
    assert_eq!((got, v["code"].as_str()), (status, Some(code)), "{v}");
    assert!(!v["message"].as_str().expect("a message").is_empty());
    assert_eq!(sim.cards(), before);
    assert_eq!(transcript(sim).len(), before.len());
    let last = sim.calls(Some(api::CARD_CREATE)).pop().expect("recorded");
    assert_eq!(last.answer, i64::from(status));
}

#[tokio::test]
async fn a_create_without_a_valid_token_is_answered_401() {
    let sim = sim();
    let body = card_body(&sim, "card-1");
    assert_refused(&sim, None, &body, 401, "InvalidAuthentication").await;
    assert_refused(&sim, Some("not-a-token"), &body, 401, "InvalidAuthentication").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_create_without_a_template_id_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body["cardTemplateId"] = json!("");
    assert_refused(&sim, Some(&token), &body, 400, "MissingcardTemplateId").await;
    body.as_object_mut().expect("object").remove("cardTemplateId");
    assert_refused(&sim, Some(&token), &body, 400, "MissingcardTemplateId").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_create_without_an_out_track_id_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body.as_object_mut().expect("object").remove("outTrackId");
    assert_refused(&sim, Some(&token), &body, 400, "MissingoutTrackId").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_reused_out_track_id_is_refused_and_the_first_card_stays_as_it_was() {
    let sim = sim();
    let token = token(&sim).await;
    assert_eq!(create(&sim, &token, &card_body(&sim, "card-1")).await.0, 200);
    let first = sim.card("card-1").expect("kept");
    let mut again = card_body(&sim, "card-1");
    again["cardData"]["cardParamMap"]["status"] = json!("failed");
    assert_refused(&sim, Some(&token), &again, 400, "param.cardAlreadyExist").await;
    assert_eq!(sim.card("card-1"), Some(first));
    sim.stop().await;
}

#[tokio::test]
async fn an_open_space_id_that_is_not_a_known_group_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    for space in [
        json!("dtv1.card//IM_GROUP.cidUnknown=="),
        json!(format!("dtv1.card//IM_ROBOT.{CID}")),
        json!(CID),
        json!(null),
    ] {
        let mut body = card_body(&sim, "card-1");
        body["openSpaceId"] = space;
        assert_refused(&sim, Some(&token), &body, 400, "param.openSpaceIdInvalid").await;
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_robot_code_other_than_the_app_key_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body["imGroupOpenDeliverModel"]["robotCode"] = json!("someone-else");
    assert_refused(&sim, Some(&token), &body, 400, "param.robotCodeInvalid").await;
    body.as_object_mut()
        .expect("object")
        .remove("imGroupOpenDeliverModel");
    assert_refused(&sim, Some(&token), &body, 400, "param.robotCodeInvalid").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_callback_type_other_than_stream_or_http_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    for kind in [json!("stream"), json!("WEBHOOK"), json!(null)] {
        let mut body = card_body(&sim, "card-1");
        body["callbackType"] = kind;
        assert_refused(&sim, Some(&token), &body, 400, "param.callbackTypeInvalid").await;
    }
    sim.stop().await;
}

#[tokio::test]
async fn an_http_callback_without_a_route_key_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body["callbackType"] = json!("HTTP");
    assert_refused(&sim, Some(&token), &body, 400, "param.callbackRouteKeyEmpty").await;
    body["callbackRouteKey"] = json!("dingops");
    assert_eq!(create(&sim, &token, &body).await.0, 200);
    let card = sim.card("card-1").expect("kept");
    assert_eq!(
        (card.callback_type.as_str(), card.callback_route_key.as_deref()),
        ("HTTP", Some("dingops"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_create_without_card_data_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body.as_object_mut().expect("object").remove("cardData");
    assert_refused(&sim, Some(&token), &body, 400, "MissingcardData").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_card_param_that_is_not_a_string_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    for (key, value) in [
        ("buttons", json!(["undo"])),
        ("updates", json!(3)),
        ("done", json!(true)),
    ] {
        let mut body = card_body(&sim, "card-1");
        body["cardData"]["cardParamMap"][key] = value;
        assert_refused(&sim, Some(&token), &body, 400, "param.cardParamMapInvalid").await;
    }
    let mut body = card_body(&sim, "card-1");
    body["cardData"] = json!({"params": {}});
    assert_refused(&sim, Some(&token), &body, 400, "param.cardParamMapInvalid").await;
    sim.stop().await;
}

#[tokio::test]
async fn a_private_param_that_is_not_a_string_is_refused() {
    let sim = sim();
    let token = token(&sim).await;
    let mut body = card_body(&sim, "card-1");
    body["privateData"]["staff-b"]["cardParamMap"]["notice"] = json!(1);
    assert_refused(&sim, Some(&token), &body, 400, "param.privateDataInvalid").await;
    body["privateData"] = json!({"staff-b": {"notice": "no cardParamMap"}});
    assert_refused(&sim, Some(&token), &body, 400, "param.privateDataInvalid").await;
    sim.stop().await;
}

#[tokio::test]
async fn injected_busy_answers_come_first_then_creates_succeed() {
    let sim = sim();
    let token = token(&sim).await;
    let (status, v) = post(&sim, "/_sim/cards/fail", &json!({"mode": "status", "times": 2})).await;
    assert_eq!((status, v), (200, json!({"ok": true})));
    for _ in 0..2 {
        assert_refused(&sim, Some(&token), &card_body(&sim, "card-1"), 500, "system.busy").await;
    }
    assert_eq!(create(&sim, &token, &card_body(&sim, "card-1")).await.0, 200);
    assert_eq!(sim.cards().len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn an_injected_delivery_failure_answers_200_with_an_unsuccessful_result_and_keeps_no_card() {
    let sim = sim();
    let token = token(&sim).await;
    sim.fail_cards(CardFailMode::Deliver, 1);
    let (status, v) = create(&sim, &token, &card_body(&sim, "card-1")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    let result = &v["result"]["deliverResults"][0];
    assert_eq!(result["success"], false);
    assert_eq!(result["spaceId"], CID);
    assert!(!result["errorMsg"].as_str().expect("errorMsg").is_empty());
    assert!(sim.cards().is_empty());
    assert!(transcript(&sim).is_empty());
    assert_eq!(sim.calls(Some(api::CARD_CREATE))[0].answer, 200);

    // The same outTrackId goes through once the failure is spent.
    let (status, v) = create(&sim, &token, &card_body(&sim, "card-1")).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["deliverResults"][0]["success"], true);
    assert_eq!(sim.cards().len(), 1);
    sim.stop().await;
}

/// Creates `card-1` (STREAM) and returns the token.
async fn with_card(sim: &Simulator) -> String {
    let token = token(sim).await;
    let (status, v) = create(sim, &token, &card_body(sim, "card-1")).await;
    assert_eq!(status, 200, "{v}");
    token
}

#[tokio::test]
async fn an_update_by_key_merges_into_the_card_and_is_shown_as_a_card_update() {
    let sim = sim();
    let token = with_card(&sim).await;
    let (status, v) = put(
        &sim,
        &token,
        &json!({
            "outTrackId": "card-1",
            "cardData": {"cardParamMap": {"status": "reverted", "buttons": "[]"}},
            "privateData": {"staff-c": {"cardParamMap": {"notice": "done by you"}}},
            "cardUpdateOptions": {"updateCardDataByKey": true, "updatePrivateDataByKey": true},
            "userIdType": 1,
        }),
    )
    .await;
    assert_eq!((status, v), (200, json!({"success": true, "result": true})));
    let card = sim.card("card-1").expect("kept");
    assert_eq!(card.params["title"], "DMs off", "kept by the merge");
    assert_eq!(card.params["status"], "reverted");
    assert_eq!(card.params["buttons"], "[]");
    assert_eq!(card.params.len(), 4);
    assert_eq!(card.private["staff-b"]["notice"], "admins only");
    assert_eq!(card.private["staff-c"]["notice"], "done by you");
    assert_eq!(card.updates, 1);
    assert_eq!(
        transcript(&sim)[1],
        (
            "card-update".to_owned(),
            "[card update] DMs off — reverted\nPrivate chat **prohibited** by Admin\n\
             (to staff-c only) done by you"
                .to_owned()
        )
    );
    assert_eq!(sim.calls(Some(api::CARD_UPDATE))[0].answer, 0);
    sim.stop().await;
}

#[tokio::test]
async fn an_update_without_by_key_options_replaces_the_card_data() {
    let sim = sim();
    let token = with_card(&sim).await;
    let (status, _) = put(
        &sim,
        &token,
        &json!({
            "outTrackId": "card-1",
            "cardData": {"cardParamMap": {"title": "Replaced", "status": "superseded"}},
            "privateData": {"staff-b": {"cardParamMap": {"other": "x"}}},
            "userIdType": 1,
        }),
    )
    .await;
    assert_eq!(status, 200);
    let card = sim.card("card-1").expect("kept");
    assert_eq!(
        card.params,
        [("status", "superseded"), ("title", "Replaced")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );
    assert_eq!(card.private["staff-b"].len(), 1);
    assert_eq!(card.private["staff-b"]["other"], "x");
    assert_eq!(transcript(&sim)[1].1, "[card update] Replaced — superseded");

    // Without cardData the public data stays; by key, only the named private key changes.
    let (status, _) = put(
        &sim,
        &token,
        &json!({
            "outTrackId": "card-1",
            "privateData": {"staff-b": {"cardParamMap": {"notice": "n"}}},
            "cardUpdateOptions": {"updateCardDataByKey": false, "updatePrivateDataByKey": true},
        }),
    )
    .await;
    assert_eq!(status, 200);
    let card = sim.card("card-1").expect("kept");
    assert_eq!(card.params["title"], "Replaced");
    assert_eq!(card.private["staff-b"].len(), 2);
    assert_eq!(card.updates, 2);
    sim.stop().await;
}

#[tokio::test]
async fn an_update_of_an_unknown_card_or_with_a_non_string_param_is_refused() {
    let sim = sim();
    let token = with_card(&sim).await;
    let (status, v) = put(
        &sim,
        &token,
        &json!({"outTrackId": "card-9", "cardData": {"cardParamMap": {"status": "done"}}}),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("param.cardNotExist")));
    let (status, v) = put(
        &sim,
        &token,
        &json!({"outTrackId": "card-1", "cardData": {"cardParamMap": {"status": 1}}}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("param.cardParamMapInvalid"))
    );
    let (status, v) = put(&sim, "bad-token", &json!({"outTrackId": "card-1"})).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("InvalidAuthentication")));
    assert_eq!(sim.card("card-1").expect("kept").updates, 0);
    let answers: Vec<i64> = sim
        .calls(Some(api::CARD_UPDATE))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![400, 400, 401]);
    sim.stop().await;
}

#[tokio::test]
async fn an_injected_update_failure_answers_500_and_leaves_the_card_alone() {
    let sim = sim();
    let token = with_card(&sim).await;
    sim.fail_cards(CardFailMode::Update, 1);
    let body = json!({
        "outTrackId": "card-1",
        "cardData": {"cardParamMap": {"status": "undone"}},
        "cardUpdateOptions": {"updateCardDataByKey": true},
    });
    let (status, v) = put(&sim, &token, &body).await;
    assert_eq!((status, v["code"].as_str()), (500, Some("system.busy")));
    assert_eq!(sim.card("card-1").expect("kept").params["status"], "done");
    assert_eq!(put(&sim, &token, &body).await.0, 200);
    assert_eq!(sim.card("card-1").expect("kept").params["status"], "undone");
    sim.stop().await;
}

#[tokio::test]
async fn a_route_key_keeps_its_url_unless_the_registration_forces_an_update() {
    let sim = sim();
    let token = token(&sim).await;
    let first = json!({
        "callbackRouteKey": "dingops",
        "callbackUrl": "http://127.0.0.1:1/card-callback",
        "apiSecret": "first-secret",
        "forceUpdate": false,
    });
    let (status, v) = register(&sim, &token, &first).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"success": true, "result": {
            "callbackUrl": "http://127.0.0.1:1/card-callback", "apiSecret": "first-secret"}})
    );
    // The same URL again is fine; another one without forceUpdate is refused.
    assert_eq!(register(&sim, &token, &first).await.0, 200);
    let mut other = first.clone();
    other["callbackUrl"] = json!("http://127.0.0.1:2/card-callback");
    let (status, v) = register(&sim, &token, &other).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("param.callbackRouteKeyExist"))
    );
    let (status, routes) = get(&sim, "/_sim/cards/callbacks").await;
    assert_eq!(status, 200);
    assert_eq!(
        routes,
        json!([{"callbackRouteKey": "dingops", "callbackUrl": "http://127.0.0.1:1/card-callback"}])
    );

    other["forceUpdate"] = json!(true);
    assert_eq!(register(&sim, &token, &other).await.0, 200);
    let routes = sim.card_callbacks();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].callback_route_key, "dingops");
    assert_eq!(routes[0].callback_url, "http://127.0.0.1:2/card-callback");

    // The secret is never recorded nor listed.
    let calls = sim.calls(Some(api::CARD_REGISTER));
    let answers: Vec<i64> = calls.iter().map(|c| c.answer).collect();
    assert_eq!(answers, vec![0, 0, 400, 0]);
    for c in &calls {
        assert_eq!(c.body["apiSecret"], "<redacted>");
    }
    let (_, listed) = get(&sim, "/_sim/cards/callbacks").await;
    assert!(!listed.to_string().contains("secret"), "{listed}");
    sim.stop().await;
}

#[tokio::test]
async fn a_registration_needs_a_route_key_and_an_http_url_and_a_token() {
    let sim = sim();
    let token = token(&sim).await;
    for (body, code) in [
        (
            json!({"callbackUrl": "http://h/x", "apiSecret": "s"}),
            "MissingcallbackRouteKey",
        ),
        (
            json!({"callbackRouteKey": "k", "apiSecret": "s"}),
            "MissingcallbackUrl",
        ),
        (
            json!({"callbackRouteKey": "k", "callbackUrl": "ftp://h/x", "apiSecret": "s"}),
            "param.callbackUrlInvalid",
        ),
    ] {
        let (status, v) = register(&sim, &token, &body).await;
        assert_eq!((status, v["code"].as_str()), (400, Some(code)), "{body}");
    }
    let body = json!({"callbackRouteKey": "k", "callbackUrl": "http://h/x"});
    let (status, v) = call(&sim, "POST", "/v1.0/card/callbacks/register", None, &body).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("InvalidAuthentication")));
    assert!(sim.card_callbacks().is_empty());
    // Without an apiSecret the simulator makes one up and answers it.
    let (status, v) = register(&sim, &token, &body).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["apiSecret"].as_str().map(str::len), Some(32));
    sim.stop().await;
}

#[tokio::test]
async fn the_card_calls_count_against_the_monthly_quota() {
    let sim = sim();
    let token = token(&sim).await;
    sim.set_quota(3, 0);
    assert_eq!(create(&sim, &token, &card_body(&sim, "card-1")).await.0, 200);
    let update = json!({"outTrackId": "card-1", "cardData": {"cardParamMap": {"status": "undone"}},
        "cardUpdateOptions": {"updateCardDataByKey": true}});
    assert_eq!(put(&sim, &token, &update).await.0, 200);
    let route = json!({"callbackRouteKey": "k", "callbackUrl": "http://h/x", "apiSecret": "s"});
    assert_eq!(register(&sim, &token, &route).await.0, 200);
    assert_eq!(sim.quota().used, 3);
    for (status, v) in [
        create(&sim, &token, &card_body(&sim, "card-2")).await,
        put(&sim, &token, &update).await,
        register(&sim, &token, &route).await,
    ] {
        assert_eq!(
            (status, v["code"].as_str()),
            (403, Some("Forbidden.AccessDenied.ApiCountLimitForOrg"))
        );
    }
    assert_eq!(sim.quota().used, 3);
    assert_eq!(sim.cards().len(), 1);
    assert_eq!(sim.card("card-1").expect("kept").updates, 1);
    for api in [api::CARD_CREATE, api::CARD_UPDATE, api::CARD_REGISTER] {
        assert!(dingtalk_sim::quota::counted(api), "{api}");
        assert_eq!(sim.calls(Some(api)).pop().expect("recorded").answer, 90020);
    }
    sim.stop().await;
}
