//! The arithmetic a forward pass spends its time in, apart from the model's own concepts: weight
//! matrices kept in their stored type and their products `x · Wᵀ` ([`matrix`]), the same for
//! weights quantized in blocks ([`quant`]), and the few vector loops underneath ([`simd`]). Each
//! fast kernel has a plain `*_reference` beside it and a test that compares the two. Nothing here
//! knows the model.

pub mod matrix;
pub mod quant;
pub mod simd;
