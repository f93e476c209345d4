//! Driving aerender: its command line, its output, and the process tree it starts.

pub mod argv;
pub mod driver;
pub mod outcome;
pub mod script_patch;
pub mod sequence;
pub mod transcript;
