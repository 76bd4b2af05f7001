//! Integration tests against real Postgres and a real Tansu broker.

mod faults;
mod helpers;
mod leadership;
mod publishing;
mod replay_audit;
mod restore;
