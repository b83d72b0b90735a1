//! Freshness detection: when is data expected ([`ActiveWindow`]) and has the
//! feed gone silent ([`Detector`]).
//!
//! Pure core: no I/O, no async, no clock of its own. The shell calls
//! [`Detector::observe`] for every record it sees, [`Detector::tick`] about
//! once a second (and once right after rebuilding from [`DetectorState`] at
//! startup, before the first `observe`), persists [`Detector::state`] after
//! each [`GapEvent`], and acts on the events.

mod machine;
mod window;

pub use machine::{Detector, DetectorState, GapEvent};
pub use window::ActiveWindow;
