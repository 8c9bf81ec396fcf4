//! Test support: packet builders, environment guards.
