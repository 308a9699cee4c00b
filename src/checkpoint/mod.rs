mod json_keys;
pub mod safetensors;
pub mod shards;
pub mod weights;
