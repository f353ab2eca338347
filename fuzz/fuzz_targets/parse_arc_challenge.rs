//! Arbitrary responses into Azure Arc's challenge parser (Linux and Windows path rules), and
//! arbitrary key-file bytes into the authorized-request builder: none may panic, and a path it
//! accepts must be a `.key` file directly inside the token directory.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redis_entraid_core::identity::arc::{ArcPlatform, AzureArc, DEFAULT_ENDPOINT, LINUX_TOKEN_DIR};
use redis_entraid_core::identity::managed::ManagedIdentityId;
use redis_entraid_core::secret::SecretBytes;

#[derive(Arbitrary, Debug)]
struct Input {
    response: common::RawResponse,
    key: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let response = input.response.to_http();
    let platforms = [
        ArcPlatform::Linux,
        ArcPlatform::Windows {
            program_data: r"C:\ProgramData".into(),
        },
    ];
    for platform in platforms {
        let linux = platform == ArcPlatform::Linux;
        let Ok(arc) = AzureArc::new(
            DEFAULT_ENDPOINT,
            ManagedIdentityId::SystemAssigned,
            platform,
        ) else {
            continue;
        };
        if let Ok(file) = arc.parse_challenge(&response) {
            let path = file.path.to_string_lossy().into_owned();
            assert!(path.ends_with(".key"), "{path}");
            if linux {
                let name = path
                    .strip_prefix(LINUX_TOKEN_DIR)
                    .and_then(|p| p.strip_prefix('/'));
                assert!(name.is_some_and(|n| !n.contains('/')), "{path}");
            }
        }
        let _ = arc.build_authorized_request(&SecretBytes::new(input.key.clone()));
    }
});
