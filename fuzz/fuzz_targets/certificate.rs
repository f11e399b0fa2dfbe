//! Reading certificates: PEM chains and DER, as found in installed files
//! and monitored endpoints. Never a panic on any bytes.
#![no_main]

use keywarden::acme::certinfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certinfo::parse(data);
    let _ = certinfo::parse_pem_leaf(data);
    if let Ok(chain) = certinfo::pem_chain(data) {
        for der in chain {
            let _ = certinfo::parse(&der);
        }
    }
});
