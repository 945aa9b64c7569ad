//! The backup object format: a per-backup data key and chunked AEAD.
//!
//! `MAGIC (8) || chunk size (u32 BE) || chunk*`, each chunk ChaCha20-Poly1305 over at most
//! `chunk size` plaintext bytes, with the chunk's index and a last-chunk flag in its nonce
//! (the STREAM construction). So a chunk that was altered, moved, dropped or appended, and
//! an object cut short or extended, fails to open, and it fails as the bytes stream in: a
//! restore learns of the damage before it switches anything. Every full-size chunk but the
//! last is sealed "not last", so the reader holds one chunk back until it knows.

use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

/// First bytes of every backup object (format version 1).
pub const MAGIC: &[u8; 8] = b"TNBKP001";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const HEADER: usize = MAGIC.len() + 4;

/// Why a backup object cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("not a backup object (bad header)")]
    Header,
    #[error("backup object is damaged or was sealed with another key (chunk {0})")]
    Chunk(u64),
    #[error("backup object is truncated (its last chunk is missing)")]
    Truncated,
    #[error("backup object has bytes after its last chunk")]
    Trailing,
    #[error("encryption failed")]
    Seal,
}

/// A fresh random data key.
pub fn new_data_key() -> [u8; 32] {
    ChaCha20Poly1305::generate_key(&mut OsRng).into()
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n.into()
}

/// Seals a plaintext stream chunk by chunk.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    index: u64,
    /// The chunk being filled (sealed once we know whether more follows).
    pending: Vec<u8>,
    header_sent: bool,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(key.into()),
            index: 0,
            pending: Vec::with_capacity(CHUNK),
            header_sent: false,
        }
    }

    /// Takes plaintext; returns the object bytes that are ready.
    pub fn push(&mut self, mut plain: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut out = self.header();
        while !plain.is_empty() {
            if self.pending.len() == CHUNK {
                // More follows, so the full chunk is not the last one.
                out.extend(self.seal(false)?);
            }
            let take = (CHUNK - self.pending.len()).min(plain.len());
            self.pending.extend_from_slice(&plain[..take]);
            plain = &plain[take..];
        }
        Ok(out)
    }

    /// Seals what is left as the last chunk (possibly empty).
    pub fn finish(mut self) -> Result<Vec<u8>, StreamError> {
        let mut out = self.header();
        out.extend(self.seal(true)?);
        Ok(out)
    }

    fn header(&mut self) -> Vec<u8> {
        if std::mem::replace(&mut self.header_sent, true) {
            return Vec::new();
        }
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        h
    }

    fn seal(&mut self, last: bool) -> Result<Vec<u8>, StreamError> {
        let sealed = self
            .cipher
            .encrypt(&nonce(self.index, last), self.pending.as_slice())
            .map_err(|_| StreamError::Seal)?;
        self.index += 1;
        self.pending.clear();
        Ok(sealed)
    }
}

/// Opens an object as its bytes arrive.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    index: u64,
    buf: Vec<u8>,
    chunk: usize,
    header_read: bool,
    done: bool,
}

impl Opener {
    pub fn new(key: &[u8; 32]) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(key.into()),
            index: 0,
            buf: Vec::new(),
            chunk: CHUNK,
            header_read: false,
            done: false,
        }
    }

    /// Takes object bytes; returns the plaintext they complete. A damaged chunk is an
    /// error as soon as it is complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, StreamError> {
        if self.done && !data.is_empty() {
            return Err(StreamError::Trailing);
        }
        self.buf.extend_from_slice(data);
        if !self.header_read {
            if self.buf.len() < HEADER {
                return Ok(Vec::new());
            }
            if &self.buf[..MAGIC.len()] != MAGIC {
                return Err(StreamError::Header);
            }
            let mut size = [0u8; 4];
            size.copy_from_slice(&self.buf[MAGIC.len()..HEADER]);
            self.chunk = u32::from_be_bytes(size) as usize;
            if self.chunk == 0 || self.chunk > 64 << 20 {
                return Err(StreamError::Header);
            }
            self.buf.drain(..HEADER);
            self.header_read = true;
        }
        let sealed = self.chunk + TAG;
        let mut out = Vec::new();
        // Only a chunk with bytes after it is known not to be the last.
        while self.buf.len() > sealed {
            let plain = self
                .cipher
                .decrypt(&nonce(self.index, false), &self.buf[..sealed])
                .map_err(|_| StreamError::Chunk(self.index))?;
            self.buf.drain(..sealed);
            self.index += 1;
            out.extend(plain);
        }
        Ok(out)
    }

    /// The end of the object: what is held must be the last chunk.
    pub fn finish(&mut self) -> Result<Vec<u8>, StreamError> {
        if !self.header_read || self.done {
            return Err(if self.done {
                StreamError::Trailing
            } else {
                StreamError::Truncated
            });
        }
        let plain = self
            .cipher
            .decrypt(&nonce(self.index, true), self.buf.as_slice())
            .map_err(|_| {
                if self.buf.len() == self.chunk + TAG {
                    StreamError::Truncated
                } else {
                    StreamError::Chunk(self.index)
                }
            })?;
        self.buf.clear();
        self.done = true;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &[u8; 32], data: &[u8], piece: usize) -> Vec<u8> {
        let mut s = Sealer::new(key);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(s.push(p).unwrap());
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn open_all(key: &[u8; 32], object: &[u8], piece: usize) -> Result<Vec<u8>, StreamError> {
        let mut o = Opener::new(key);
        let mut out = Vec::new();
        for p in object.chunks(piece.max(1)) {
            out.extend(o.push(p)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let key = new_data_key();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for piece in [1000, 65_536, CHUNK + 3] {
                let object = seal_all(&key, &data, piece);
                assert_eq!(open_all(&key, &object, 7777).unwrap(), data, "len {len}");
            }
        }
    }

    #[test]
    fn damage_is_found() {
        let key = new_data_key();
        let data = vec![7u8; 2 * CHUNK + 100];
        let object = seal_all(&key, &data, 4096);
        // A flipped byte in the middle chunk.
        let mut flipped = object.clone();
        flipped[HEADER + CHUNK + TAG + 10] ^= 1;
        assert_eq!(open_all(&key, &flipped, 4096), Err(StreamError::Chunk(1)));
        // Cut after a full chunk: the held chunk was sealed "not last".
        let cut = &object[..HEADER + 2 * (CHUNK + TAG)];
        assert_eq!(open_all(&key, cut, 4096), Err(StreamError::Truncated));
        // Cut inside a chunk.
        assert!(open_all(&key, &object[..object.len() - 5], 4096).is_err());
        // Another key.
        assert_eq!(
            open_all(&new_data_key(), &object, 4096),
            Err(StreamError::Chunk(0))
        );
        // Bytes appended after the last chunk.
        let mut longer = object.clone();
        longer.extend_from_slice(b"more");
        assert!(open_all(&key, &longer, 4096).is_err());
        // Not a backup at all.
        assert_eq!(
            open_all(&key, b"PGDMP\x01\x0e\x00 a plain pg_dump archive", 4096),
            Err(StreamError::Header)
        );
        assert_eq!(open_all(&key, b"", 4096), Err(StreamError::Truncated));
    }
}
