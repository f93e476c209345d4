//! The render jobs of `RenderService`: submit, get, list, watch, cancel.

mod cancel;
mod get;
mod list;
mod submit;
mod watch;
