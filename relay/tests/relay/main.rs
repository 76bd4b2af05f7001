//! Integration tests against real Postgres and a real Tansu broker.
// A test that unwraps fails there, with the error: what `unwrap_used` guards against in
// the services does not apply here.
#![allow(clippy::unwrap_used)]

mod batching;
mod faults;
mod helpers;
mod idle;
mod leadership;
mod limited_broker;
mod publishing;
mod replay_audit;
mod restore;
