//! Scenario and end-to-end tests shared by every runtime
