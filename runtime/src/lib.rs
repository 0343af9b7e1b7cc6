//! Wiring that every fetchml service needs, kept here so services stay thin:
//! typed settings loaded from YAML and overlaid by the environment, logging,
//! and the shutdown signal.

pub mod metrics;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::{Settings, SettingsError};
pub use shutdown::shutdown_signal;
