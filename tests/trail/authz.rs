//! NATS authorization: the api, the workers and read-only tools connect with
//! their own NKeys (`fetchml nats-auth`), and the server refuses a worker or a
//! reader what only the api may do. Against a nats-server of this test's own,
//! started with the generated authorization.

use fetchml_tests::app::{fetchml_binary, spawn_app_with, spawn_worker_with};
use fetchml_tests::{NatsProcess, unique_namespace};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// A client of the test's server as one role (its NKey seed file).
async fn client_as(url: &str, seed: &Path) -> async_nats::jetstream::Context {
    let client = fetchml_eventstore::connect_with(url, "authz-test", Some(seed)).await.unwrap();
    let mut js = async_nats::jetstream::new(client);
    // Refused publishes get no acknowledgement: fail them fast.
    js.set_timeout(Duration::from_secs(2));
    js
}

/// Publishes to `subject` through JetStream and reports whether it was stored.
async fn stored(js: &async_nats::jetstream::Context, subject: String) -> bool {
    match js.publish(subject, "{}".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn workers_and_readers_get_only_what_their_credentials_allow() {
    let creds = tempfile::tempdir().unwrap();
    let ns = unique_namespace().to_string();
    let out = std::process::Command::new(fetchml_binary())
        .args(["nats-auth", "--dir"])
        .arg(creds.path())
        .args(["--namespace", &ns])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conf = creds.path().join("authorization.conf");
    let seed = |role: &str| creds.path().join(format!("{role}.nk"));
    let nats = NatsProcess::start_with_config(Some(conf));
    let url = nats.url();

    // Without credentials: refused at connect.
    assert!(fetchml_eventstore::connect(&url, "anonymous").await.is_err());

    // The api and a worker, each with its own key, run a job end to end.
    let api_seed = seed("api");
    let app = spawn_app_with(|s| {
        s.nats.url = url.clone();
        s.nats.namespace = ns.clone();
        s.nats.nkey_file = Some(api_seed.clone());
    })
    .await;
    let worker_seed = seed("worker");
    let _worker = spawn_worker_with(&app.settings, &[], &[("FETCHML_NATS__NKEY_FILE", worker_seed.to_str().unwrap())]);
    let (s, job) = app.submit(json!({"command": ["echo", "hello from an authorized worker"]})).await;
    assert_eq!(s, 202, "{job}");
    let done = app.until_terminal(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let logs = app.http.get(app.url(&format!("/v1/jobs/{}/logs", job["id"].as_str().unwrap()))).send().await;
    assert!(logs.unwrap().text().await.unwrap().contains("hello from an authorized worker"));

    let subjects = fetchml_events::subject::Subjects::new(app.settings.namespace());
    let events = subjects.events_stream();
    let worker = client_as(&url, &seed("worker")).await;
    let reader = client_as(&url, &seed("reader")).await;
    let head = || async { worker.get_stream(&events).await.unwrap().info().await.unwrap().state.last_sequence };
    let before = head().await;

    // A worker may not append a user or audit event, nor a reader anything.
    assert!(!stored(&worker, subjects.user("alice")).await, "worker appended a user event");
    assert!(!stored(&worker, format!("{ns}.ev.audit.checkpoint")).await, "worker appended an audit event");
    assert!(!stored(&reader, format!("{ns}.ev.job.alice.default.x")).await, "reader appended a job event");
    // Nor change or empty a stream, or delete a message.
    let mut stream = worker.get_stream(&events).await.unwrap();
    assert!(stream.purge().await.is_err(), "worker purged EVENTS");
    assert!(stream.delete_message(1).await.is_err(), "worker deleted an event");
    let mut config = stream.info().await.unwrap().config.clone();
    config.deny_delete = false;
    config.deny_purge = false;
    assert!(worker.update_stream(config.clone()).await.is_err(), "worker loosened EVENTS");
    assert!(reader.update_stream(config).await.is_err(), "reader loosened EVENTS");
    assert!(reader.delete_stream(&events).await.is_err(), "reader deleted EVENTS");
    // Nor write a session (that would be a login).
    let sessions = format!("$KV.{}.forged", subjects.sessions_bucket());
    assert!(!stored(&worker, sessions).await, "worker wrote a session");
    assert_eq!(head().await, before, "nothing was appended");

    // A reader reads: `fetchml verify` with the reader's key checks the log.
    let out = std::process::Command::new(fetchml_binary())
        .arg("verify")
        .env("FETCHML_NATS__URL", &url)
        .env("FETCHML_NATS__NAMESPACE", &ns)
        .env("FETCHML_NATS__NKEY_FILE", seed("reader"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("intact up to sequence"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
