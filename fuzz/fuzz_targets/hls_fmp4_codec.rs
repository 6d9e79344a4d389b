#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gstlivestreaming::fuzzing::hls_fmp4_codec(data));
