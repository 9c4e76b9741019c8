//! Helpers for the whole-process tests live in `tests/tests/`.
