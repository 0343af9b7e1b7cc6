//! Hardening tests: what the api accepts at its edge (free text, bodies, ids,
//! idempotency keys, parameters) and how it reads a job's history.

use fetchml_events::job::JobEvent;
use fetchml_events::{Actor, JobId};
use fetchml_eventstore::CommandContext;
use fetchml_tests::app::{TestApp, spawn_app};
use serde_json::{Value, json};

async fn post_json(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn submit_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = app.http.post(app.url(path)).header("idempotency-key", key).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn free_text_with_a_nul_or_other_control_character_is_refused_and_the_read_models_keep_moving() {
    let app = spawn_app().await;
    let cases = [
        (json!({"command": ["true"], "experiment": "a\u{0}b"}), "experiment"),
        (json!({"command": ["true"], "tags": {"k\u{0}": "v"}}), "tags.k\u{fffd}"),
        (json!({"command": ["true"], "tags": {"k": "v\u{0}"}}), "tags.k"),
        (json!({"command": ["true"], "tags": {"k": "\u{1b}[31mred"}}), "tags.k"),
        (json!({"command": ["true"], "experiment": "right\u{202e}tfel"}), "experiment"),
        (json!({"command": ["true"], "working_dir": "a\u{7}b"}), "working_dir"),
    ];
    for (spec, field) in cases {
        let (status, body) = app.submit(spec.clone()).await;
        assert_eq!(status, 422, "{spec}: {body}");
        assert_eq!(body["error"]["code"], "text_invalid_character", "{spec}: {body}");
        assert_eq!(body["error"]["field"], field, "{spec}: {body}");
    }
    // A cancel reason is free text too.
    let (status, queued) = app.submit(json!({"command": ["true"], "executor": "noop", "pool": "nobody"})).await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap();
    let (status, body) = post_json(&app, &format!("/v1/jobs/{id}/cancel"), r#"{"reason": "x\u0000y"}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("text_invalid_character")), "{body}");
    // What was accepted is listed: the projector was never handed a NUL.
    let (status, cancelled) =
        post_json(&app, &format!("/v1/jobs/{id}/cancel"), r#"{"reason": "line 1\nline 2"}"#).await;
    assert_eq!(status, 202, "{cancelled}");
    let seq = cancelled["seq"].as_u64().unwrap();
    let (status, list) = app.get(&format!("/v1/jobs?after_seq={seq}")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["id"], id);
    assert_eq!(list["items"][0]["state"], "cancelled");
}

#[tokio::test]
async fn free_text_is_counted_in_characters_and_stored_in_nfc() {
    let app = spawn_app().await;
    // 128 two-byte characters fit (the old limit counted 256 bytes).
    let (status, body) =
        app.submit(json!({"command": ["true"], "executor": "noop", "experiment": "é".repeat(128)})).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) =
        app.submit(json!({"command": ["true"], "executor": "noop", "experiment": "é".repeat(129)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("text_too_long")), "{body}");
    // "e" + combining acute is stored as the one precomposed letter.
    let (status, body) =
        app.submit(json!({"command": ["true"], "executor": "noop", "experiment": "caf\u{65}\u{301}", "tags": {"n\u{6f}\u{308}": "x"}})).await;
    assert_eq!(status, 202, "{body}");
    let (_, job) = app.get(&format!("/v1/jobs/{}", body["id"].as_str().unwrap())).await;
    assert_eq!(job["spec"]["experiment"], "caf\u{e9}", "{job}");
    assert_eq!(job["spec"]["tags"]["n\u{f6}"], "x", "{job}");
}

#[tokio::test]
async fn bodies_must_be_json_objects_without_unknown_fields() {
    let app = spawn_app().await;
    let (_, queued) = app.submit(json!({"command": ["true"], "executor": "noop", "pool": "nobody"})).await;
    let id = queued["id"].as_str().unwrap();
    for body in ["[]", r#"{"reason":"x","force":true}"#, r#""x""#, "null"] {
        let (status, answer) = post_json(&app, &format!("/v1/jobs/{id}/cancel"), body).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_body")), "{body}: {answer}");
    }
    let (status, answer) = post_json(&app, "/v1/jobs", r#"[["true"]]"#).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_body")), "{answer}");
    let (status, answer) = post_json(&app, "/v1/jobs/batch", r#"{"jobs": [["true"]]}"#).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_body")), "{answer}");
    // A login body that is an array is not taken as a key.
    let r = reqwest::Client::new()
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!("[{:?}]", fetchml_tests::app::key_of("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The job was never cancelled by any of them.
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "queued", "{job}");
}

#[tokio::test]
async fn a_job_id_has_one_spelling() {
    let app = spawn_app().await;
    let (_, queued) = app.submit(json!({"command": ["true"], "executor": "noop", "pool": "nobody"})).await;
    let id = queued["id"].as_str().unwrap().to_owned();
    let (status, _) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    for other in [id.to_uppercase(), format!("%7B{id}%7D"), format!("urn:uuid:{id}"), id.replace('-', "")] {
        let (status, body) = app.get(&format!("/v1/jobs/{other}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_job_id")), "{other}: {body}");
        let (status, _) = app.post(&format!("/v1/jobs/{other}/cancel")).await;
        assert_eq!(status, 400, "{other}");
    }
}

#[tokio::test]
async fn an_idempotency_key_reused_with_a_different_job_is_refused() {
    let app = spawn_app().await;
    let spec = json!({"command": ["true"], "executor": "noop", "pool": "nobody"});
    let (status, first) = submit_keyed(&app, "/v1/jobs", "k-1", &spec).await;
    assert_eq!(status, 202, "{first}");
    // The same request again (defaults spelled out) is the same job.
    let same = json!({"command": ["true"], "executor": "noop", "pool": "nobody", "priority": 5});
    let (status, again) = submit_keyed(&app, "/v1/jobs", "k-1", &same).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        (again["id"].clone(), again["seq"].clone(), again["duplicate"].clone()),
        (first["id"].clone(), first["seq"].clone(), json!(true))
    );
    // Another request under the same key is refused, in the same pool or another.
    for other in [
        json!({"command": ["false"], "executor": "noop", "pool": "nobody"}),
        json!({"command": ["true"], "executor": "noop", "pool": "elsewhere"}),
    ] {
        let (status, body) = submit_keyed(&app, "/v1/jobs", "k-1", &other).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("idempotency_key_reused")), "{other}: {body}");
    }
    let (_, events) = app.get(&format!("/v1/jobs/{}/events", first["id"].as_str().unwrap())).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events["items"][0]["payload"]["spec"]["command"], json!(["true"]), "{events}");
}

#[tokio::test]
async fn a_batch_resent_under_its_key_with_changes_stores_nothing_new() {
    let app = spawn_app().await;
    let job = |argv: &str| json!({"command": [argv], "executor": "noop", "pool": "nobody"});
    let batch = json!({"jobs": [job("a"), job("b")]});
    let (status, first) = submit_keyed(&app, "/v1/jobs/batch", "b-1", &batch).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = submit_keyed(&app, "/v1/jobs/batch", "b-1", &batch).await;
    assert_eq!(status, 202, "{again}");
    assert!(again["jobs"].as_array().unwrap().iter().all(|j| j["duplicate"] == true), "{again}");
    for changed in [json!({"jobs": [job("a"), job("c")]}), json!({"jobs": [job("a"), job("b"), job("c")]})] {
        let (status, body) = submit_keyed(&app, "/v1/jobs/batch", "b-1", &changed).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("idempotency_key_reused")), "{body}");
    }
    // The third job of the longer batch was not stored.
    let (_, head) = app.get("/readyz").await;
    let (status, list) = app.get(&format!("/v1/jobs?after_seq={}", head["last_seq"])).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn a_jobs_history_is_read_from_its_own_subject_only() {
    let app = spawn_app().await;
    let (_, queued) = app.submit(json!({"command": ["true"], "executor": "noop", "pool": "nobody"})).await;
    let id: JobId = queued["id"].as_str().unwrap().parse().unwrap();
    // An event for the same id on another owner's subject: a wildcard read by
    // id (`*.*.<id>`) would fold it into this job's history.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let mallory = fetchml_events::UserName::parse("mallory").unwrap();
    let foreign = store.subjects().job(&mallory, &fetchml_events::ids::PoolName::parse("nobody").unwrap(), id);
    let ctx = CommandContext::new(Actor::System { component: "test".into() });
    store
        .append_event(
            &foreign,
            &id.to_string(),
            0,
            1,
            fetchml_events::hash::GENESIS,
            JobEvent::JobCancelled { reason: "planted".into() },
            &ctx,
        )
        .await
        .unwrap();
    let (status, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, 200, "{events}");
    let types: Vec<_> = events["items"].as_array().unwrap().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, [json!("job_queued")], "{events}");
}

#[tokio::test]
async fn unknown_or_malformed_parameters_are_refused_on_every_list() {
    let app = spawn_app().await;
    for path in
        ["/v1/experiments?colour=red", "/v1/experiments/x?limt=5", "/v1/workers?histroy=true", "/v1/jobs?sate=queued"]
    {
        let (status, body) = app.get(path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unknown_parameter")), "{path}: {body}");
    }
    let (status, body) = app.get("/v1/workers?history=maybe").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{body}");
}

#[tokio::test]
async fn verify_reads_the_log_and_changes_nothing_on_the_server() {
    let app = spawn_app().await;
    let (status, queued) = app.submit(json!({"command": ["true"], "executor": "noop", "pool": "nobody"})).await;
    assert_eq!(status, 202, "{queued}");
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let progress = store.subjects().progress_stream();
    let mut stream = store.jetstream().get_stream(&progress).await.unwrap();
    let before = stream.info().await.unwrap().config.clone();
    // The verifier runs with other stream limits than the api's: a reader
    // must not apply them.
    let out = tokio::task::spawn_blocking({
        let (url, ns) = (app.settings.nats.url.clone(), app.settings.nats.namespace.clone());
        move || {
            std::process::Command::new(fetchml_tests::app::fetchml_binary())
                .arg("verify")
                .env("FETCHML_NATS__URL", url)
                .env("FETCHML_NATS__NAMESPACE", ns)
                .env("FETCHML_NATS__PROGRESS_MAX_BYTES", (fetchml_tests::TEST_PROGRESS_BYTES + 1).to_string())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("intact up to sequence "), "{stdout}");
    let after = stream.info().await.unwrap().config.clone();
    assert_eq!(after.max_bytes, before.max_bytes);
    assert_eq!(after, before);
}
