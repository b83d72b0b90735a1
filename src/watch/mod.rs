//! Signals: how a feed is watched. `relay` consumes the vendor queue and forwards
//! it; `report` takes observations over HTTP (see `api`); `queues` reads queue
//! attributes and CloudWatch numbers without touching messages.

pub mod inflow;
pub mod queue;
pub mod queues;
pub mod relay;

pub use queue::{Message, RelayQueues, SqsQueues};
pub use relay::Relay;
