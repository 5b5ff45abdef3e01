//! Scheduler core (being written).
