//! Local retention (to be filled).
