//! batchwatch's integration tests, in one binary so the crate links once.
//! Each module tests one part; shared set-up lives in `support`.

mod systemd;
