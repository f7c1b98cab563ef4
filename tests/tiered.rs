//! Integration tests: tiered (filled in by the work that owns it).
