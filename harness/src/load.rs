//! The load runner (goose). Filled in by the load issue.
