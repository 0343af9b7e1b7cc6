//! The reference page at `/docs`: Redoc's bundle served by the api itself, the
//! page pointing at the api's own description.

use fetchml_tests::app::spawn_app_with;

#[tokio::test]
async fn the_reference_page_and_its_renderer_are_served_by_the_api() {
    let bundle = fetchml_tests::repo_root().join("web/docs/node_modules/redoc/bundles/redoc.standalone.js");
    assert!(bundle.exists(), "{} is missing: ./deploy/test installs it (npm ci --prefix web/docs)", bundle.display());
    let app = spawn_app_with(|s| s.api.docs_bundle = bundle.clone()).await;
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"spec-url="/v1/openapi.json""#) && html.contains(r#"src="/docs/redoc.standalone.js""#));
    let js = anonymous.get(app.url("/docs/redoc.standalone.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(js.bytes().await.unwrap(), std::fs::read(&bundle).unwrap());
    let spec = anonymous.get(app.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(spec.status(), 200);
}

#[tokio::test]
async fn without_its_renderer_the_reference_page_says_so() {
    let app = spawn_app_with(|s| s.api.docs_bundle = "/nonexistent/redoc.standalone.js".into()).await;
    let r = reqwest::Client::new().get(app.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "docs_unavailable");
}
