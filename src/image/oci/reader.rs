//! An opened image and its layers, read with every digest verified.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

/// One layer of an opened image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar stream (`rootfs.diff_ids[i]`).
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub compression: Compression,
    pub(super) path: PathBuf,
}

/// An opened image. Manifest and config are verified; layers are verified
/// while read through [`Image::open_layer`]. For tar sources the image
/// holds the extracted files in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Image {
    /// The name the image was found under (index annotation or docker
    /// RepoTag), else the name asked for.
    pub reference: Option<String>,
    /// Digest of the manifest blob. For legacy `docker save` archives,
    /// which have no manifest blob, the digest of an equivalent OCI
    /// manifest synthesized from the archive.
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    pub(super) _tmp: Option<TempDirGuard>,
}

impl Image {
    /// The image config, parsed.
    pub fn config_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.config_bytes)
            .map_err(|e| Error::Invalid(format!("image config {}: {e}", self.config_digest)))
    }

    /// The DiffIDs of the layers, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The ChainIDs of the layers, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }

    /// Read layer `i` (0-based) as an uncompressed tar stream. Call
    /// [`LayerReader::finish`] at the end: only it verifies the digests.
    pub fn open_layer(&self, i: usize) -> Result<LayerReader> {
        let layer = self.layers.get(i).ok_or_else(|| {
            Error::NotFound(format!(
                "layer index {i} out of range: the image has {} layers",
                self.layers.len()
            ))
        })?;
        let file = File::open(&layer.path).at(&layer.path)?;
        let raw = HashRead::new(file);
        let decode = match layer.compression {
            Compression::None => Decode::Plain(raw),
            Compression::Gzip => Decode::Gzip(Box::new(flate2::read::MultiGzDecoder::new(raw))),
            Compression::Zstd => Decode::Zstd(Box::new(
                zstd::stream::read::Decoder::new(raw).at(&layer.path)?,
            )),
        };
        Ok(LayerReader {
            number: i + 1,
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            size: layer.size,
            path: layer.path.clone(),
            decode,
            hasher: Sha256::new(),
            count: 0,
        })
    }

    /// Stream every layer through [`LayerReader::finish`], verifying all
    /// digests.
    pub fn verify_all(&self) -> Result<()> {
        for i in 0..self.layers.len() {
            self.open_layer(i)?.finish()?;
        }
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it.
pub(super) struct HashRead<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
    pub(super) count: u64,
}

impl<R> HashRead<R> {
    pub(super) fn new(inner: R) -> Self {
        HashRead {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub(super) type ZstdDecoder = zstd::stream::read::Decoder<'static, BufReader<HashRead<File>>>;

pub(super) enum Decode {
    Plain(HashRead<File>),
    Gzip(Box<flate2::read::MultiGzDecoder<HashRead<File>>>),
    Zstd(Box<ZstdDecoder>),
}

/// The uncompressed tar stream of one layer. Reading hashes both the blob
/// as stored and the uncompressed bytes; [`LayerReader::finish`] checks
/// them against the layer's digest and DiffID.
pub struct LayerReader {
    /// 1-based, for messages.
    pub(super) number: usize,
    pub(super) digest: Digest,
    pub(super) diff_id: Digest,
    pub(super) size: u64,
    pub(super) path: PathBuf,
    pub(super) decode: Decode,
    pub(super) hasher: Sha256,
    pub(super) count: u64,
}

impl fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerReader")
            .field("layer", &self.number)
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.decode {
            Decode::Plain(r) => r.read(buf),
            Decode::Gzip(r) => r.read(buf),
            Decode::Zstd(r) => r.read(buf),
        };
        let n = r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("layer {} ({}): {e}", self.number, self.digest),
            )
        })?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl LayerReader {
    /// Drain the rest of the stream (a tar reader may stop before the
    /// end-of-archive padding), then verify the blob digest and size and
    /// the DiffID. Returns the number of uncompressed bytes.
    pub fn finish(mut self) -> Result<u64> {
        let drained = io::copy(&mut self, &mut io::sink());
        let mut raw = match self.decode {
            Decode::Plain(r) => r,
            Decode::Gzip(d) => d.into_inner(),
            Decode::Zstd(d) => d.finish().into_inner(),
        };
        // Whatever the decompressor left unread (trailing data, or all of
        // it after a decoding error) still belongs to the blob.
        io::copy(&mut raw, &mut io::sink()).at(&self.path)?;
        let what = format!("layer {} ({})", self.number, self.digest);
        let got = Digest::from_hasher(raw.hasher);
        if got != self.digest {
            return Err(Error::Invalid(format!(
                "{what}: blob digest mismatch: expected {}, got {got}",
                self.digest
            )));
        }
        if raw.count != self.size {
            return Err(Error::Invalid(format!(
                "{what}: blob size mismatch: expected {}, got {}",
                self.size, raw.count
            )));
        }
        if let Err(e) = drained {
            return Err(Error::Invalid(format!("{what}: cannot decompress: {e}")));
        }
        let got = Digest::from_hasher(self.hasher);
        if got != self.diff_id {
            return Err(Error::Invalid(format!(
                "{what}: uncompressed diff_id digest mismatch: expected {}, got {got}",
                self.diff_id
            )));
        }
        Ok(self.count)
    }
}
