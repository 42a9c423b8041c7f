//! The command parser on arbitrary text.
#![no_main]

use dingops::command::{Command, ParseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Command::parse(text) {
            Ok(cmd) => {
                let _ = cmd.spec();
            }
            Err(ParseError::Unknown(name)) | Err(ParseError::InvalidChatId(name)) => {
                assert!(name.len() <= 64);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
