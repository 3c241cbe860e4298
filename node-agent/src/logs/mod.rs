//! Log template mining (placeholder while being written).
