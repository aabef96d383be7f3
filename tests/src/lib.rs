//! Integration-test harness (stub).
