//! C fixtures (stub).
