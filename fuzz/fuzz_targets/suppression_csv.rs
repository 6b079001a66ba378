//! Suppression-list CSV import (`store::suppression_csv`): any file is either imported
//! whole or refused with every bad line named by a line number that exists; what was
//! imported survives export and import again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::store::suppression_csv::{export, import};
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    match import(data, now) {
        Ok(entries) => {
            for e in &entries {
                assert!(e.address.contains('@') && e.suppressed);
                assert_eq!(e.address, e.address.to_lowercase());
            }
            let mut out = Vec::new();
            export(&entries, &mut out).expect("export to memory");
            let again = import(out.as_slice(), now).expect("our own export imports");
            assert_eq!(again, entries, "export/import changed the entries");
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            for e in &errors {
                assert!(e.line <= lines, "line {} of a {lines}-line file", e.line);
                let _ = e.to_string();
            }
        }
    }
});
