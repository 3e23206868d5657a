//! Fuzzes archive import (OCI layout / docker save, gzip or not) against an in-memory sink.
#![no_main]

use std::collections::HashMap;
use std::io::Read;

use berth_image::{BlobSink, ImageError, ImportOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Mem(HashMap<String, Vec<u8>>);

impl BlobSink for Mem {
    fn has(&mut self, d: &berth_content::Digest) -> bool {
        self.0.contains_key(d.as_str())
    }
    fn put(&mut self, expected: Option<&berth_content::Digest>, r: &mut dyn Read) -> Result<(berth_content::Digest, u64), ImageError> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        let d = berth_content::Digest::of(&v);
        if let Some(e) = expected {
            if *e != d {
                return Err(ImageError::DigestMismatch { expected: e.clone(), actual: d });
            }
        }
        let n = v.len() as u64;
        self.0.insert(d.to_string(), v);
        Ok((d, n))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut sink = Mem::default();
    let _ = berth_image::import(data, &mut sink, &ImportOptions::default());
});
