//! Logging: to stderr, filtered by `RUST_LOG` (default `info`), JSON when
//! `FETCHML_LOG_FORMAT=json`. Data goes to stdout; diagnostics never do.
//!
//! Spans carry what ties lines together: the api's `request` span
//! (`request_id`, `correlation`, `route`), the dispatcher's `dispatch` and the
//! worker's `handle` spans (`job`, `correlation`). Text lines show them as a
//! prefix, JSON lines under `span` and `spans`.
//!
//! With `telemetry.otlp_endpoint` set (and the `otlp` cargo feature built in),
//! the same spans are also exported to an OpenTelemetry collector over
//! OTLP/HTTP, in batches from a background thread; the `RUST_LOG` filter
//! decides which spans exist at all. Unset, no exporter is built and the
//! layer is absent.

use crate::settings::TelemetrySettings;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Logging only (commands that run before or without settings).
pub fn init() {
    // Without an endpoint there is nothing that can fail.
    let _ = init_with(&TelemetrySettings::default(), "fetchml");
}

/// Logging, and the OTLP export if `settings` ask for it; `service` names
/// this process in the collector (`fetchml-api`, `fetchml-worker`). Keep the
/// guard until the process ends: dropping it sends the last spans.
pub fn init_with(settings: &TelemetrySettings, service: &'static str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FETCHML_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::stderr().is_terminal();
    let text_layer = (!json).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    let json_layer = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    let (otlp_layer, telemetry) = otlp::layer(settings, service)?;
    // A second init (tests) is harmless; ignore the error.
    let _ = tracing_subscriber::registry().with(filter).with(otlp_layer).with(text_layer).with(json_layer).try_init();
    Ok(telemetry)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint is set, but this fetchml was built without OTLP export (cargo feature `otlp`)")]
    NotBuiltIn,
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

pub use otlp::Telemetry;

#[cfg(not(feature = "otlp"))]
mod otlp {
    use super::{TelemetryError, TelemetrySettings};

    /// Nothing to flush in a build without OTLP export.
    pub struct Telemetry;

    impl Telemetry {
        /// Sends the spans not exported yet (none here).
        pub fn shutdown(self) {}
    }

    pub fn layer(
        settings: &TelemetrySettings,
        _service: &'static str,
    ) -> Result<(Option<tracing_subscriber::layer::Identity>, Telemetry), TelemetryError> {
        if !settings.otlp_endpoint.is_empty() {
            return Err(TelemetryError::NotBuiltIn);
        }
        Ok((None, Telemetry))
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::{TelemetryError, TelemetrySettings};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Holds the exporter; dropping it flushes the spans not sent yet.
    pub struct Telemetry(Option<SdkTracerProvider>);

    impl Telemetry {
        /// Sends the spans not exported yet; call outside the async runtime.
        pub fn shutdown(self) {}
    }

    impl Drop for Telemetry {
        fn drop(&mut self) {
            if let Some(provider) = self.0.take()
                && let Err(e) = provider.shutdown()
            {
                eprintln!("fetchml: flushing the OTLP export: {e}");
            }
        }
    }

    pub fn layer<S>(
        settings: &TelemetrySettings,
        service: &'static str,
    ) -> Result<
        (Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>>, Telemetry),
        TelemetryError,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if settings.otlp_endpoint.is_empty() {
            return Ok((None, Telemetry(None)));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&settings.otlp_endpoint)
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer(service);
        Ok((Some(tracing_opentelemetry::layer().with_tracer(tracer)), Telemetry(Some(provider))))
    }
}

/// Runs with `cargo test -p fetchml-runtime --features otlp` (the suite
/// builds without the feature).
#[cfg(all(test, feature = "otlp"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A one-request OTLP/HTTP collector: the request's head and body.
    fn collector(listener: std::net::TcpListener) -> std::thread::JoinHandle<(String, Vec<u8>)> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
            (head, body)
        })
    }

    #[test]
    fn spans_reach_an_otlp_http_collector_with_the_service_name() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let server = collector(listener);
        let settings = TelemetrySettings { otlp_endpoint: endpoint };
        let (layer, telemetry) = otlp::layer::<tracing_subscriber::Registry>(&settings, "fetchml-test").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("request", route = "/v1/jobs/{id}").in_scope(|| tracing::info!("answered"));
        });
        telemetry.shutdown(); // flushes the batch
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /v1/traces "), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"fetchml-test") && has(b"request") && has(b"/v1/jobs/{id}"), "{body:?}");
    }
}
