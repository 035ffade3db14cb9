//! Resubmission (to be filled).
