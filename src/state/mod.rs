//! What a sequence carries from one step to the next: the hybrid cache (K/V rows with their
//! positions, conv and SSM states; [`cache`]) and its size predicted from the config alone
//! ([`cache_plan`]).

pub mod cache;
pub mod cache_plan;
