//! Native stack capture (stub; see ARCHITECTURE.md).
