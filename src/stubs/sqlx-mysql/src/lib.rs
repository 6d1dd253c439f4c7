//! Empty: Airlock does not use sqlx's MySQL driver (see this crate's Cargo.toml).
