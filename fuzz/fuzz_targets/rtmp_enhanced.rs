#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gstlivestreaming::fuzzing::rtmp_enhanced(data));
