//! Integration tests: executor.
