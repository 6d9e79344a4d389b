#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gstlivestreaming::fuzzing::rtsp_server_record(data));
