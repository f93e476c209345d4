//! The aerender simulator: stands in for After Effects' `aerender` where it is absent (tests,
//! benchmarks, `make run`). Same command line, exit codes and stdout as `docs/aerender.md`
//! describes; reads a JSON project (see `SIMULATOR.md`), applies the injection of `-r`, writes
//! real PNG frames, and reproduces aerender's failures on request.
//!
//! Modules: [`args`] (command line), [`project`] (project format), [`inject`] (applying the
//! injection), [`render`], [`raster`] and [`font`] (pixels), [`sequence`] (frame files),
//! [`timecode`], [`output`] (log lines), [`faults`] and [`knobs`] (what tests ask for), [`hang`],
//! and [`session`], which runs them in aerender's order.

pub mod args;
pub mod faults;
pub mod font;
pub mod hang;
pub mod inject;
pub mod knobs;
pub mod output;
pub mod project;
pub mod raster;
pub mod render;
pub mod sequence;
pub mod session;
pub mod timecode;

pub use session::{main_with_env, run};
