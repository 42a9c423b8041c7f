//! The department APIs discovery walks: `topapi/v2/department/listsubid` and `…/get`.

use std::net::TcpListener;

use dingtalk_sim::{DepartmentError, Fault, ROOT_DEPT, SimConfig, Simulator, api};
use serde_json::{Value, json};

fn sim() -> Simulator {
    Simulator::start(
        SimConfig::default(),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("start")
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

async fn post(sim: &Simulator, path: &str, token: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}?access_token={token}", sim.url()))
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

const LISTSUBID: &str = "/topapi/v2/department/listsubid";
const GET: &str = "/topapi/v2/department/get";

#[tokio::test]
async fn listsubid_lists_direct_children_in_order_and_get_names_the_group_chatid() {
    let sim = sim();
    sim.add_group("cidEng==", "chateng", "Engineering");
    sim.add_department(ROOT_DEPT, None, "Acme", None).unwrap();
    sim.add_department(7, Some(1), "Sales", None).unwrap();
    sim.add_department(3, Some(1), "Engineering", Some("cidEng=="))
        .unwrap();
    sim.add_department(9, Some(3), "Backend", None).unwrap();
    let token = legacy_token(&sim).await;

    let v = post(&sim, LISTSUBID, &token, json!({"dept_id": 1})).await;
    assert_eq!(v["errcode"], 0);
    assert_eq!(v["result"]["dept_id_list"], json!([7, 3]));
    let v = post(&sim, LISTSUBID, &token, json!({"dept_id": 9})).await;
    assert_eq!(v["result"]["dept_id_list"], json!([]));

    let v = post(&sim, GET, &token, json!({"dept_id": 3})).await;
    assert_eq!(v["errcode"], 0);
    assert_eq!(v["result"]["name"], "Engineering");
    assert_eq!(v["result"]["parent_id"], 1);
    assert_eq!(v["result"]["dept_group_chat_id"], "chateng");
    assert_eq!(v["result"]["create_dept_group"], true);

    let v = post(&sim, GET, &token, json!({"dept_id": 1})).await;
    assert_eq!(v["result"]["name"], "Acme");
    let result = v["result"].as_object().unwrap();
    assert!(!result.contains_key("parent_id"), "{v}");
    assert!(!result.contains_key("dept_group_chat_id"), "{v}");

    let calls = sim.calls(Some(api::DEPARTMENT_GET));
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].access_token.as_deref(), Some(token.as_str()));
    assert_eq!(calls[0].body, json!({"dept_id": 3}));
    assert_eq!(sim.calls(Some(api::DEPARTMENT_LISTSUBID)).len(), 2);
    sim.stop().await;
}

#[tokio::test]
async fn unknown_departments_bad_bodies_and_bad_tokens_get_legacy_errcodes() {
    let sim = sim();
    let token = legacy_token(&sim).await;
    for path in [LISTSUBID, GET] {
        assert_eq!(
            post(&sim, path, &token, json!({"dept_id": 42})).await["errcode"],
            60003
        );
        assert_eq!(post(&sim, path, &token, json!({"id": 1})).await["errcode"], 40035);
        assert_eq!(
            post(&sim, path, "nope", json!({"dept_id": 1})).await["errcode"],
            40014
        );
    }
    let raw = reqwest::Client::new()
        .post(format!("{}{GET}?access_token={token}", sim.url()))
        .body("not json")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(raw["errcode"], 43009);
    sim.stop().await;
}

#[tokio::test]
async fn department_calls_take_faults_and_the_rate_limit_like_the_other_apis() {
    let sim = Simulator::start(
        SimConfig {
            rate_limit_per_sec: 3,
            ..SimConfig::default()
        },
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let token = legacy_token(&sim).await;
    sim.inject(api::DEPARTMENT_GET, Fault::Errcode { errcode: 60011 });
    assert_eq!(
        post(&sim, GET, &token, json!({"dept_id": 1})).await["errcode"],
        60011
    );
    let answers: Vec<i64> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let v = post(&sim, LISTSUBID, &token, json!({"dept_id": 1})).await;
            out.push(v["errcode"].as_i64().unwrap());
        }
        out
    };
    assert_eq!(answers, [0, 0, 0, 90018]);
    sim.stop().await;
}

#[tokio::test]
async fn a_department_needs_a_known_parent_and_group_and_cannot_become_its_own_ancestor() {
    let sim = sim();
    assert_eq!(
        sim.add_department(2, Some(99), "x", None),
        Err(DepartmentError::UnknownParent(99))
    );
    assert_eq!(
        sim.add_department(2, None, "x", None),
        Err(DepartmentError::BadParent)
    );
    assert_eq!(
        sim.add_department(1, Some(1), "x", None),
        Err(DepartmentError::BadParent)
    );
    assert_eq!(
        sim.add_department(0, Some(1), "x", None),
        Err(DepartmentError::BadId(0))
    );
    assert_eq!(
        sim.add_department(2, Some(1), "x", Some("cidNone==")),
        Err(DepartmentError::UnknownGroup("cidNone==".into()))
    );
    sim.add_department(2, Some(1), "a", None).unwrap();
    sim.add_department(3, Some(2), "b", None).unwrap();
    assert_eq!(
        sim.add_department(2, Some(3), "a", None),
        Err(DepartmentError::Cycle(2))
    );
    // Moving a department keeps its place among the siblings.
    sim.add_department(4, Some(1), "c", None).unwrap();
    sim.add_department(2, Some(1), "renamed", None).unwrap();
    let names: Vec<String> = sim.departments().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["Root", "renamed", "b", "c"]);
    sim.stop().await;
}

#[tokio::test]
async fn the_demo_organisation_has_groups_at_several_depths_and_departments_without() {
    let sim = sim();
    sim.seed_demo_departments().unwrap();
    let depts = sim.departments();
    assert_eq!(depts.len(), 6);
    assert_eq!(depts.iter().filter(|d| d.group.is_some()).count(), 4);
    for d in depts.iter().filter_map(|d| d.group.as_ref()) {
        assert!(sim.group(d).is_some(), "{d}");
    }
    sim.stop().await;
}
