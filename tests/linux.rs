//! Integration tests: linux (filled in by the work that owns it).
