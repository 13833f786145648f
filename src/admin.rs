//! The admin HTTP listener: health and metrics, apart from the data path.
