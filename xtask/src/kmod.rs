//! TODO(harness): see lib.rs.
