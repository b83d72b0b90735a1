//! Signals: how a feed is watched. `relay` consumes the vendor queue and forwards
//! it; `report` takes observations over HTTP (see `api`); `queues` reads queue
//! attributes and CloudWatch numbers without touching messages.

pub(crate) mod inflow;
pub(crate) mod queue;
pub(crate) mod queues;
pub(crate) mod relay;

pub(crate) use queue::SqsQueues;
pub(crate) use relay::Relay;
