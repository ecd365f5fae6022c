pub mod frames;
pub mod runtime;
