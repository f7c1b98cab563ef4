//! Integration tests: boot (filled in by the work that owns it).
