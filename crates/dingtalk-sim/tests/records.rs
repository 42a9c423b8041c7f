//! Records a long run takes from the simulator as they come.

use std::net::TcpListener;
use std::time::Duration;

use dingtalk_sim::{SimConfig, Simulator, api};
use serde_json::json;

#[tokio::test]
async fn taken_replies_and_calls_leave_the_records() {
    let sim = Simulator::start(
        SimConfig::default(),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    )
    .expect("start");
    sim.add_group("cidRecords==", "chatrecords", "records");
    let (url, _) = sim.open_session("cidRecords==", Duration::from_secs(60));
    let client = reqwest::Client::new();
    for text in ["one", "two"] {
        let resp = client
            .post(&url)
            .json(&json!({"msgtype": "text", "text": {"content": text}}))
            .send()
            .await
            .expect("sendBySession");
        assert!(resp.status().is_success());
    }
    assert_eq!(sim.reply_count(), 2);
    let taken = sim.take_replies();
    assert_eq!(
        taken.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(sim.reply_count(), 0);
    assert!(sim.replies().is_empty());
    let calls = sim.take_calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.api == api::SEND_BY_SESSION && c.answer == 0)
    );
    assert!(sim.calls(None).is_empty());

    // New ones are recorded again.
    client
        .post(&url)
        .json(&json!({"msgtype": "text", "text": {"content": "three"}}))
        .send()
        .await
        .expect("sendBySession");
    assert_eq!(sim.reply_count(), 1);
    assert_eq!(sim.calls(Some(api::SEND_BY_SESSION)).len(), 1);
    sim.stop().await;
}
