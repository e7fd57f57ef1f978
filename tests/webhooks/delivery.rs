//! Retries, recovery, dead-lettering, replay, rotation and 410, through the whole pipeline.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Harness, Receiver, Setup, ADMIN};

fn attempts(log: &Value) -> Vec<Value> {
    log["events"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_receiver_down_for_three_attempts_gets_the_event_with_the_same_id_once_it_recovers() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![503, 500, 502], 204).await;
    let tenant = service.tenant().await;
    let secret = service.hook_secret(&tenant.key, &receiver.url).await;

    let job = service.finished_job(&tenant.key).await;
    let hooks = receiver.wait_for(4).await;
    let log = service.wait_for_state(&tenant.key, &job, "delivered").await;

    let first = &hooks[0];
    for (n, hook) in hooks.iter().enumerate() {
        assert_eq!(hook.header("webhook-id"), first.header("webhook-id"));
        assert_eq!(hook.body, first.body, "every attempt sends the same bytes");
        assert_eq!(hook.header("webhook-attempt"), (n + 1).to_string());
        assert!(hook.verifies_with(&secret), "attempt {} verifies", n + 1);
    }
    let event = first.json();
    assert_eq!(event["jobId"], job.as_str());
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["eventId"], first.header("webhook-id").as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hooks().len(), 4, "nothing is sent after success");

    let tried = attempts(&log);
    let codes: Vec<&Value> = tried.iter().map(|a| &a["statusCode"]).collect();
    assert_eq!(codes, [&json!(503), &json!(500), &json!(502), &json!(204)]);
    let outcomes: Vec<&str> = tried.iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["retrying", "retrying", "retrying", "delivered"]);
    for attempt in &tried {
        assert!(attempt["at"].is_string() && attempt["latencyMs"].is_u64());
    }
    assert_eq!(tried[0]["error"], "receiver answered 503");
    assert!(tried[0]["nextAttemptAt"].is_string());
    assert!(!log.to_string().contains("receiver-private-detail"));
}

#[tokio::test]
async fn a_receiver_that_never_recovers_ends_in_the_dead_letter_queue_and_can_be_replayed() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![], 500).await;
    let tenant = service.tenant().await;
    let secret = service.hook_secret(&tenant.key, &receiver.url).await;

    let job = service.finished_job(&tenant.key).await;
    let log = service.wait_for_state(&tenant.key, &job, "failed").await;

    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 8, "eight attempts, then no more");
    assert_eq!(attempts(&log).len(), 8);
    let dead = service.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["eventId"], hooks[0].header("webhook-id").as_str());
    assert_eq!(dead[0]["attempt"], 8);

    receiver.answer_from_now_on(204);
    let (status, replay) = service
        .post(&tenant.key, &format!("/v1/webhooks/replay?job_id={job}"))
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["round"], 1);
    let hooks = receiver.wait_for(9).await;
    let replayed = &hooks[8];
    assert_eq!(replayed.header("webhook-id"), hooks[0].header("webhook-id"));
    assert_eq!(replayed.body, hooks[0].body);
    assert_eq!(replayed.header("webhook-attempt"), "1");
    assert!(replayed.verifies_with(&secret));
    let log = service.wait_for_state(&tenant.key, &job, "delivered").await;
    let last = attempts(&log).last().cloned().unwrap_or_default();
    assert_eq!(
        (last["round"].clone(), last["attempt"].clone()),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn during_a_rotation_each_delivery_verifies_with_both_secrets_and_after_it_only_the_new() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![], 204).await;
    let tenant = service.tenant().await;
    let old = service.hook_secret(&tenant.key, &receiver.url).await;
    let rotate = |overlap: u64| {
        service
            .http
            .post(service.url("/v1/webhook/secret:rotate"))
            .bearer_auth(&tenant.key)
            .json(&json!({ "overlapSeconds": overlap }))
            .send()
    };

    let rotated: Value = rotate(3600)
        .await
        .expect("rotate")
        .json()
        .await
        .expect("json");
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    let job = service.finished_job(&tenant.key).await;
    let during = receiver.wait_for(1).await.remove(0);

    assert_ne!(old, new);
    assert!(rotated["previousSecretExpiresAt"].is_string());
    assert!(
        during.verifies_with(&old),
        "a receiver still on the old secret accepts it"
    );
    assert!(
        during.verifies_with(&new),
        "a receiver already on the new secret accepts it"
    );
    let stranger = imagegen::webhook::generate_secret();
    assert!(!during.verifies_with(secrecy::ExposeSecret::expose_secret(&stranger)));
    let (_, view) = service.get(&tenant.key, "/v1/webhook").await;
    assert!(view["previousSecretExpiresAt"].is_string());

    let rotated: Value = rotate(0).await.expect("rotate").json().await.expect("json");
    let newest = rotated["secret"]
        .as_str()
        .expect("newest secret")
        .to_owned();
    let (status, _) = service
        .post(&tenant.key, &format!("/v1/webhooks/replay?job_id={job}"))
        .await;
    let after = receiver.wait_for(2).await.remove(1);

    assert_eq!(status, 202);
    assert!(after.verifies_with(&newest));
    assert!(!after.verifies_with(&new), "the overlap is over");
    assert!(!after.verifies_with(&old));
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
}

#[tokio::test]
async fn a_410_answer_disables_the_endpoint_and_the_api_says_so() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![410], 204).await;
    let tenant = service.tenant().await;
    service.hook_secret(&tenant.key, &receiver.url).await;

    let job = service.finished_job(&tenant.key).await;
    let log = service
        .wait_for_state(&tenant.key, &job, "endpoint_disabled")
        .await;
    service.finished_job(&tenant.key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, view) = service.get(&tenant.key, "/v1/webhook").await;
    let (replay_status, replay) = service
        .post(&tenant.key, &format!("/v1/webhooks/replay?job_id={job}"))
        .await;

    assert_eq!(attempts(&log).len(), 1, "a 410 is not retried");
    assert_eq!(
        receiver.hooks().len(),
        1,
        "a disabled endpoint gets nothing more"
    );
    assert_eq!(view["enabled"], false);
    assert!(view["disabledReason"]
        .as_str()
        .is_some_and(|r| r.contains("410")));
    assert!(view["disabledAt"].is_string());
    assert_eq!(replay_status, 409);
    assert_eq!(replay["error"]["code"], "WEBHOOK_DISABLED");

    let (status, view) = service
        .put_webhook(&tenant.key, json!({ "url": receiver.url }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["enabled"], true);
    assert!(view["disabledReason"].is_null());
    assert!(view.get("secret").is_none(), "re-enabling keeps the secret");
}

#[tokio::test]
async fn only_the_events_a_tenant_chose_are_sent() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![], 204).await;
    let tenant = service.tenant().await;
    let (status, _) = service
        .put_webhook(
            &tenant.key,
            json!({ "url": receiver.url, "events": ["job.failed", "job.canceled"] }),
        )
        .await;

    service.finished_job(&tenant.key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(status, 200);
    assert!(receiver.hooks().is_empty());
}

#[tokio::test]
async fn an_operator_can_replay_any_job_and_a_tenant_only_its_own() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![], 204).await;
    let owner = service.tenant().await;
    let other = service.tenant().await;
    service.hook_secret(&owner.key, &receiver.url).await;
    let job = service.finished_job(&owner.key).await;
    receiver.wait_for(1).await;
    let path = format!("/v1/webhooks/replay?job_id={job}");

    let (by_other, _) = service.post(&other.key, &path).await;
    let (by_operator, _) = service.post(ADMIN, &path).await;
    let (nobody, _) = service.post("wrong-key", &path).await;
    let (no_id, missing) = service.post(&owner.key, "/v1/webhooks/replay").await;
    let (bad_id, _) = service
        .post(&owner.key, "/v1/webhooks/replay?job_id=job_nope")
        .await;
    let (other_log, _) = service
        .get(&other.key, &format!("/v1/jobs/{job}/deliveries"))
        .await;
    let (operator_log, _) = service
        .get(ADMIN, &format!("/v1/jobs/{job}/deliveries"))
        .await;

    assert_eq!(by_other, 404);
    assert_eq!(by_operator, 202);
    assert_eq!(nobody, 401);
    assert_eq!(no_id, 400);
    assert_eq!(missing["error"]["code"], "INVALID_REQUEST");
    assert_eq!(bad_id, 404);
    assert_eq!(other_log, 404);
    assert_eq!(operator_log, 200);
    assert_eq!(receiver.wait_for(2).await.len(), 2);
}

#[tokio::test]
async fn replaying_a_job_that_has_not_ended_is_a_conflict() {
    let service = Harness::start(Setup {
        workers: false,
        ..Setup::default()
    })
    .await;
    let tenant = service.tenant().await;
    let job = service.submit(&tenant.key).await;
    let path = format!("/v1/webhooks/replay?job_id={job}");

    let (status, body) = service.post(&tenant.key, &path).await;

    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "JOB_NOT_FINISHED");
}

#[tokio::test]
async fn a_job_that_ended_before_any_webhook_existed_can_have_its_event_replayed() {
    let service = Harness::start(Setup::default()).await;
    let receiver = Receiver::start(vec![], 204).await;
    let tenant = service.tenant().await;
    let job = service.finished_job(&tenant.key).await;
    let path = format!("/v1/webhooks/replay?job_id={job}");

    let (before, body) = service.post(&tenant.key, &path).await;
    let secret = service.hook_secret(&tenant.key, &receiver.url).await;
    let (after, _) = service.post(&tenant.key, &path).await;
    let hook = receiver.wait_for(1).await.remove(0);

    assert_eq!(before, 409);
    assert_eq!(body["error"]["code"], "WEBHOOK_NOT_CONFIGURED");
    assert_eq!(after, 202);
    assert!(hook.verifies_with(&secret));
    assert_eq!(hook.json()["jobId"], job.as_str());
}
