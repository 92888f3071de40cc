//! Hosting what users push: blob upload sessions and manifest pushes, to local namespaces and
//! on top of proxied repositories.

pub mod records;
pub mod uploads;
