//! Arbitrary process results into the Azure CLI and Azure Developer CLI output parsers.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redis_entraid_core::identity::cli::{AzureCli, AzureDeveloperCli, CommandOutput};

#[derive(Arbitrary, Debug)]
struct Input {
    status: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    offset_seconds: i32,
}

fuzz_target!(|input: Input| {
    let output = CommandOutput::new(input.status, input.stdout, input.stderr);
    let offset = time::UtcOffset::from_whole_seconds(input.offset_seconds % 86_400)
        .unwrap_or(time::UtcOffset::UTC);
    if let Err(error) = AzureCli::new().parse_output(&output, offset) {
        let _ = error.to_string();
    }
    if let Err(error) = AzureDeveloperCli::new().parse_output(&output) {
        let _ = error.to_string();
    }
});
