//! Masking a byte stream (a command's output) so that a value split across two chunks is still
//! found: output is released a line at a time (what detectors find does not span a line,
//! except a private key block, held until its END line), and a line that never ends is released
//! at a whitespace once it is long. Everything held is released, masked, at the end.

use super::{Masker, Tally};
use std::sync::Arc;

/// A line longer than this is released at its last whitespace (or whole).
const MAX_LINE: usize = 8 * 1024;
/// A private key block is held until its END line, up to this much.
const MAX_BLOCK: usize = 64 * 1024;

pub struct StreamMasker {
    masker: Arc<Masker>,
    pending: Vec<u8>,
    /// A private key block outgrew `MAX_BLOCK` and went out masked: what follows, up to its
    /// END line, is part of it and goes out as one marker too.
    in_long_block: bool,
}

impl StreamMasker {
    pub fn new(masker: Arc<Masker>) -> Self {
        StreamMasker { masker, pending: Vec::new(), in_long_block: false }
    }

    /// Take `chunk`; returns what can go out now, masked.
    pub fn push(&mut self, chunk: &[u8], tally: &mut Tally) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let cut = self.cut();
        self.release(cut, tally)
    }

    /// Everything still held, masked.
    pub fn finish(&mut self, tally: &mut Tally) -> Vec<u8> {
        self.release(self.pending.len(), tally)
    }

    /// Bytes held (not yet released).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn cut(&self) -> usize {
        let pending = &self.pending;
        let mut cut = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if let Some(begin) = open_key_block(pending) {
            if pending.len() - begin < MAX_BLOCK {
                return cut.min(begin);
            }
            // Too long to hold: it goes out masked (to its end, as far as it goes).
            return pending.len();
        }
        if cut == 0 && pending.len() > MAX_LINE {
            cut = pending.iter().rposition(|b| b.is_ascii_whitespace()).map_or(pending.len(), |i| i + 1);
        }
        cut
    }

    fn release(&mut self, cut: usize, tally: &mut Tally) -> Vec<u8> {
        let mut out: Vec<u8> = self.pending.drain(..cut).collect();
        let mut prefix = Vec::new();
        if self.in_long_block {
            // The rest of a key block whose BEGIN went out before: masked whole, to its END.
            let lower = out.to_ascii_lowercase();
            match find_last(&lower, b"-----end") {
                Some(end) => {
                    let line_end = out[end..].iter().position(|b| *b == b'\n').map_or(out.len(), |i| end + i + 1);
                    out.drain(..line_end);
                    self.in_long_block = false;
                }
                None => out.clear(),
            }
            prefix.extend_from_slice(b"[masked:private_key]");
            tally.add("private_key", None, 1);
        }
        if open_key_block(&out).is_some() {
            self.in_long_block = true;
        }
        let masked = self.masker.mask(&out, None, tally).unwrap_or(out);
        prefix.extend(masked);
        prefix
    }
}

/// Where an unfinished private key block starts (the start of its BEGIN line), if one is open.
fn open_key_block(text: &[u8]) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let begin = find_last(&lower, b"-----begin")?;
    let rest = &lower[begin..];
    let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    if !rest[..line_end].windows(11).any(|w| w == b"private key") || find_last(rest, b"-----end").is_some() {
        return None;
    }
    Some(lower[..begin].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1))
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_in_chunks(text: &str, size: usize) -> String {
        let mut stream = StreamMasker::new(Masker::strict());
        let mut tally = Tally::default();
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(size) {
            out.extend(stream.push(chunk, &mut tally));
        }
        out.extend(stream.finish(&mut tally));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_value_split_across_chunks_is_found() {
        let text = "user: alice@example.com\nkey AKIAIOSFODNN7EXAMPLE here\nplain line\n";
        let whole = masked_in_chunks(text, text.len());
        assert!(!whole.contains("alice@example.com") && !whole.contains("AKIAIOSFODNN7EXAMPLE"), "{whole}");
        for size in [1, 3, 7, 16] {
            assert_eq!(masked_in_chunks(text, size), whole, "chunks of {size}");
        }
        assert!(whole.ends_with("plain line\n"));
    }

    #[test]
    fn a_private_key_block_is_held_until_its_end() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBz\n-----END OPENSSH PRIVATE KEY-----\nafter\n";
        for size in [1, 10, 40] {
            let out = masked_in_chunks(key, size);
            assert!(!out.contains("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"), "chunks of {size}: {out}");
            assert!(out.ends_with("after\n"), "{out}");
        }
    }

    #[test]
    fn a_private_key_block_longer_than_the_hold_is_masked_to_its_end() {
        let body: String = (0..3000).map(|i| format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo{i:05}\n")).collect();
        let key = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\nafter\n");
        for size in [100, 4096] {
            let out = masked_in_chunks(&key, size);
            assert!(!out.contains("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"), "chunks of {size}: {}", &out[..200]);
            assert!(out.ends_with("after\n"), "{}", &out[out.len() - 100..]);
        }
    }

    #[test]
    fn lines_are_released_as_they_end() {
        let mut stream = StreamMasker::new(Masker::strict());
        let mut tally = Tally::default();
        assert!(stream.push(b"partial", &mut tally).is_empty());
        assert_eq!(stream.push(b" line\nnext", &mut tally), b"partial line\n");
        assert_eq!(stream.held(), 4);
        assert_eq!(stream.finish(&mut tally), b"next");
    }
}
