//! The api checked from outside against its own description: schemathesis
//! (pinned, installed by `./deploy/test` into an ignored virtualenv) reads
//! `GET /v1/openapi.json` of a live api and sends it generated requests,
//! authenticated as each demo role, valid and invalid ones. It fails on any
//! 5xx, any answer whose body violates the documented schema, any status or
//! content type the description does not list for the route.
//!
//! Without `FETCHML_SCHEMATHESIS` (a plain `cargo test`) the test says so and
//! passes; `./deploy/test` always sets it.

use fetchml_tests::app::{key_of, spawn_app_with};

/// Examples per operation and phase: enough to reach every status a route
/// documents, few enough for the suite's time on two cores.
const MAX_EXAMPLES: &str = "5";

#[tokio::test(flavor = "multi_thread")]
async fn the_live_api_answers_as_its_openapi_description_says_for_every_role() {
    let Some(schemathesis) = std::env::var_os("FETCHML_SCHEMATHESIS") else {
        eprintln!("FETCHML_SCHEMATHESIS is not set (./deploy/test sets it): the contract test did not run");
        return;
    };
    // Generated logins with random keys are failed attempts; the throttle
    // would then answer every later request 429 (documented, but it would
    // hide what the routes themselves answer).
    let app = spawn_app_with(|s| s.auth.max_failures_per_minute = 1_000_000).await;
    // schemathesis keeps a cache of what it found in its working directory.
    let workdir = tempfile::tempdir().expect("a temp dir");
    for user in ["root", "alice", "ana"] {
        let out = tokio::process::Command::new(&schemathesis)
            .args(["run", &app.url("/v1/openapi.json"), "--url", &app.url("")])
            .args(["--header", &format!("Authorization: Bearer {}", key_of(user))])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            // One worker: hypothesis parses lambdas' source with `ast` while
            // generating, which is not thread-safe on CPython 3.11.
            .args(["--max-examples", MAX_EXAMPLES, "--workers", "1", "--seed", "1"])
            // No stateful phase: the description has no links, and a chain
            // that submits a job and then follows its logs would wait (as it
            // should) for a job that no worker runs here.
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--request-timeout", "10"])
            .env("NO_COLOR", "1")
            .current_dir(workdir.path())
            .output()
            .await
            .expect("schemathesis runs");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "schemathesis as {user} found problems:\n{report}");
    }
}
