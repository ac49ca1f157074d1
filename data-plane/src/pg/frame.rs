//! Splitting a byte stream into PostgreSQL messages (tag byte + 4-byte length + body).
//!
//! The read buffer lives in the reader, so a cancelled read loses nothing; a partial frame is the
//! normal case and allocates nothing; the size limit is enforced from the header, before the body
//! is buffered. Frames are handed out as the exact bytes that arrived, so forwarding an untouched
//! message copies nothing.

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Header;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One whole message: `bytes[0]` is the tag, `bytes[5..]` the body.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Bytes,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_message: usize) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(16 * 1024), max_message }
    }

    /// Take the reader back, with any bytes already buffered.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    pub fn with_buffer(inner: R, buf: BytesMut, max_message: usize) -> Self {
        FrameReader { inner, buf, max_message }
    }

    /// Wait for at least one whole frame, then append every whole frame already buffered.
    /// Returns `false` on a clean end of stream between frames.
    pub async fn read_frames(&mut self, out: &mut Vec<Frame>) -> io::Result<bool> {
        loop {
            self.split_ready(out)?;
            if !out.is_empty() {
                return Ok(true);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(false)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a message"))
                };
            }
        }
    }

    /// Read exactly one frame (used during the handshake, where messages come one at a time).
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.split_one()? {
                return Ok(Some(frame));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a message"))
                };
            }
        }
    }

    fn split_ready(&mut self, out: &mut Vec<Frame>) -> io::Result<()> {
        while let Some(frame) = self.split_one()? {
            out.push(frame);
        }
        Ok(())
    }

    fn split_one(&mut self) -> io::Result<Option<Frame>> {
        let Some(header) = Header::parse(&self.buf)? else { return Ok(None) };
        let total = header.len() as usize + 1;
        if total > self.max_message {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message of {total} bytes exceeds the {} byte limit", self.max_message),
            ));
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame { bytes: self.buf.split_to(total).freeze() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_pipelined_frames_and_waits_for_partial_ones() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        wire.extend_from_slice(b"S\0\0\0\x04");
        wire.extend_from_slice(b"Q\0\0\0\x0dsel"); // incomplete
        let mut reader = FrameReader::new(&wire[..], 1024);
        let mut out = Vec::new();
        assert!(reader.read_frames(&mut out).await.unwrap());
        assert_eq!(out.iter().map(Frame::tag).collect::<Vec<_>>(), vec![b'Q', b'S']);
        assert_eq!(out[0].body(), b"select 1\0");
        out.clear();
        let err = reader.read_frames(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn refuses_oversized_frames_from_the_header() {
        let wire = b"Q\x7f\xff\xff\xff".to_vec();
        let mut reader = FrameReader::new(&wire[..], 1024);
        let err = reader.read_frames(&mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
