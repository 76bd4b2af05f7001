//! Integration tests against real Postgres and a real Tansu broker.

mod batching;
mod faults;
mod helpers;
mod idle;
mod leadership;
mod limited_broker;
mod publishing;
mod replay_audit;
mod restore;
