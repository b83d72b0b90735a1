//! Signals: how a feed is watched. `relay` consumes the vendor queue and forwards
//! it, through the queue seam of `relay_queues` (the `RelayQueues` trait, SQS
//! behind it); `report` takes observations over HTTP (see `api`);
//! `queue_watcher` reads queue attributes and CloudWatch numbers without
//! touching messages (`inflow` turns passive feeds' per-minute inflow into
//! observations).

pub(crate) mod inflow;
pub(crate) mod queue_watcher;
pub(crate) mod relay;
pub(crate) mod relay_queues;

pub(crate) use relay::Relay;
pub(crate) use relay_queues::SqsQueues;
