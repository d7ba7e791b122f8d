//! Herald node library.
