//! The cache key: one hash over everything that shapes the image, so an
//! unchanged recipe with unchanged inputs is not rebuilt.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::digest::hex;
use super::manifest::{Manifest, FILE_NAME};

/// Bump when the build pipeline changes what it makes from the same inputs.
pub const PIPELINE_VERSION: u32 = 1;

/// Accumulates the key's inputs, each labelled so that moving a value from
/// one input to the next changes the key.
pub struct Key(Sha256);

impl Key {
    pub fn new() -> Self {
        let mut h = Sha256::new();
        h.update(format!("kiln-image pipeline {PIPELINE_VERSION}\0"));
        Key(h)
    }

    pub fn add(&mut self, label: &str, value: impl AsRef<[u8]>) {
        self.0.update(label.as_bytes());
        self.0.update(b"=");
        self.0.update((value.as_ref().len() as u64).to_le_bytes());
        self.0.update(value.as_ref());
    }

    pub fn hasher(&mut self) -> &mut Sha256 {
        &mut self.0
    }

    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

impl Default for Key {
    fn default() -> Self {
        Self::new()
    }
}

/// The manifest of `out` if it was built from `key` and every artifact it
/// lists is still there with its recorded size.
pub fn up_to_date(out: &Path, key: &str) -> Option<Manifest> {
    let m = Manifest::read(&out.join(FILE_NAME)).ok()?;
    if m.recipe_hash != key {
        return None;
    }
    let intact = m.artifacts.iter().all(|(name, a)| {
        std::fs::metadata(out.join(name)).is_ok_and(|meta| meta.is_file() && meta.len() == a.size)
    });
    intact.then_some(m)
}

/// A UUID (as mkfs.ext4 takes it) derived from the key, so the same inputs
/// give the same filesystem UUID.
pub fn uuid_from(key: &str) -> String {
    let h = key.as_bytes();
    let hexs: String = h.iter().take(32).map(|b| *b as char).collect();
    let hexs = format!("{hexs:0<32}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hexs[0..8],
        &hexs[8..12],
        &hexs[13..16],
        &hexs[17..20],
        &hexs[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_matter() {
        let key = |a: &str, b: &str| {
            let mut k = Key::new();
            k.add("a", a);
            k.add("b", b);
            k.finish()
        };
        assert_eq!(key("x", "y"), key("x", "y"));
        assert_ne!(key("xy", ""), key("x", "y"));
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_from(&"0123456789abcdef".repeat(4));
        assert_eq!(u, "01234567-89ab-4def-8123-456789abcdef");
    }
}
