//! TLS to Postgres, against a throwaway cluster of the test's own that
//! accepts TCP connections only over TLS: `sslmode=verify-full` with the
//! right CA connects (and the api's read models work through it), a wrong CA
//! is refused, a plain connection is rejected by the server, and
//! `sslmode=require` against a server without TLS (another throwaway) fails
//! with a clear error.

use crate::pki::Pki;
use fetchml_tests::app::spawn_app_with;
use fetchml_tests::pg::PgProcess;
use serde_json::json;
use sqlx::Connection;

async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::PgConnection::connect(url).await
}

#[tokio::test]
async fn postgres_over_tls_is_verified_and_plain_or_misverified_connections_are_refused() {
    let pki = Pki::new();
    let Some(pg) = PgProcess::start_with_tls(&pki.server_cert, &pki.server_key) else { return };
    let base = pg.url();
    let ca = pki.ca.display().to_string();

    // The right CA, the host checked against the certificate: TLS in use.
    let good = format!("{base}/postgres?sslmode=verify-full&sslrootcert={ca}");
    let mut c = connect(&good).await.unwrap();
    let ssl: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&mut c).await.unwrap();
    assert!(ssl, "verify-full connected without TLS");
    sqlx::query("CREATE DATABASE fetchml").execute(&mut c).await.unwrap();
    c.close().await.unwrap();

    // A CA that did not sign the server's certificate.
    let other = pki.other_ca().display().to_string();
    let e = connect(&format!("{base}/postgres?sslmode=verify-full&sslrootcert={other}")).await.unwrap_err();
    // rustls's verdict, as sqlx passes it on: the issuer is not trusted.
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // Without TLS: the server's pg_hba rejects it.
    let e = connect(&format!("{base}/postgres?sslmode=disable")).await.unwrap_err();
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");

    // sslmode=require against a server without TLS (a throwaway one: the
    // suite's server may have TLS on, as Debian's default cluster does).
    let plain = PgProcess::start().unwrap();
    let e = connect(&format!("{}/postgres?sslmode=require", plain.url())).await.unwrap_err();
    assert!(matches!(e, sqlx::Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("not support TLS"), "{e}");
    drop(plain);

    // The api's read models (projector and queries) over verify-full.
    let url = format!("{base}/fetchml?sslmode=verify-full&sslrootcert={ca}");
    let app = spawn_app_with(|s| s.postgres.url = url.clone()).await;
    let (s, job) = app.submit(json!({"executor": "noop", "command": []})).await;
    assert_eq!(s, 202, "{job}");
    let seq = job["seq"].as_u64().unwrap();
    let (s, list) = app.get(&format!("/v1/jobs?after_seq={seq}")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"][0]["id"], job["id"], "{list}");
    let (_, ready) = app.get("/readyz").await;
    assert_eq!(ready["read_models"], "up", "{ready}");
}
