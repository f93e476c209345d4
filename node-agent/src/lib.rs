//! The FlatRender node agent: the daemon on every render machine that drives `aerender` and
//! ffmpeg for the orchestrator, and the aerender simulator that stands in for After Effects
//! where it is absent (tests, benchmarks, `make run` on Linux).

pub mod aerender;
pub mod assembly;
pub mod cache;
pub mod config;
pub mod crash_watch;
pub mod daemon;
pub mod injection;
pub mod machine;
pub mod process;
pub mod scene;
pub mod service;
pub mod session;
pub mod simulator;
pub mod strays;
pub mod transfer;
pub mod work;
