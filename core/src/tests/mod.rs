//! Scenario tests with a simulated clock, and property tests over random input sequences

mod properties;
mod scenarios;
