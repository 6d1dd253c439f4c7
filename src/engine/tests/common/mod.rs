//! What more than one of the engine's test files needs.

/// Reads at most `step` bytes per call, so records are cut across the engine's chunks.
pub struct Trickle<'a> {
    pub bytes: &'a [u8],
    pub step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}
