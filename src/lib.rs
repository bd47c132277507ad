//! mawex
