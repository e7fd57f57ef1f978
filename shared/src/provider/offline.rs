//! A provider that needs no network: it draws a real PNG whose picture is decided by the
//! prompt and mode, so the same request always gives the same image.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::domain::{ErrorCode, JobError, Mode};
use crate::ports::{
    GeneratedImage, Generation, GenerationRequest, KeyOutcome, Provider, ProviderError,
};

/// The offline renderer. `latency` simulates the upstream's think time.
#[derive(Debug, Clone, Default)]
pub struct OfflineProvider {
    pub latency: Duration,
}

impl OfflineProvider {
    pub const NAME: &'static str = "offline";

    pub fn model_for(mode: Mode) -> &'static str {
        match mode {
            Mode::Draft => "offline-draft-1",
            Mode::Final => "offline-final-1",
        }
    }

    pub fn side_for(mode: Mode) -> u32 {
        match mode {
            Mode::Draft => 256,
            Mode::Final => 512,
        }
    }
}

/// Draw the picture for `seed` as RGB pixels: a diagonal gradient with a few discs on it.
fn draw(seed: &[u8; 32], side: u32) -> Vec<u8> {
    let from = [seed[0], seed[1], seed[2]];
    let to = [seed[3], seed[4], seed[5]];
    let discs: Vec<(f32, f32, f32, [u8; 3])> = seed[6..30]
        .chunks_exact(6)
        .map(|c| {
            let s = side as f32;
            let x = f32::from(c[0]) / 255.0 * s;
            let y = f32::from(c[1]) / 255.0 * s;
            let r = (f32::from(c[2]) / 255.0 * 0.25 + 0.05) * s;
            (x, y, r, [c[3], c[4], c[5]])
        })
        .collect();

    let mut pixels = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        for x in 0..side {
            let t = (x + y) as f32 / (2 * side) as f32;
            let mut rgb = [0u8; 3];
            for (i, channel) in rgb.iter_mut().enumerate() {
                *channel = (f32::from(from[i]) * (1.0 - t) + f32::from(to[i]) * t) as u8;
            }
            for (cx, cy, r, colour) in &discs {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                if dx * dx + dy * dy <= r * r {
                    rgb = *colour;
                }
            }
            pixels.extend_from_slice(&rgb);
        }
    }
    pixels
}

/// Encode RGB pixels as a PNG.
fn encode_png(pixels: &[u8], side: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

/// The PNG the offline provider makes for a prompt and mode.
///
/// # Errors
/// Only if PNG encoding fails, which would be a bug.
pub fn render(prompt: &str, mode: Mode) -> Result<Vec<u8>, png::EncodingError> {
    let mut hasher = Sha256::new();
    hasher.update(mode.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(prompt.as_bytes());
    let seed: [u8; 32] = hasher.finalize().into();
    let side = OfflineProvider::side_for(mode);
    encode_png(&draw(&seed, side), side)
}

#[async_trait]
impl Provider for OfflineProvider {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn needs_key(&self) -> bool {
        false
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
        _key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError> {
        let started = Instant::now();
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }

        let prompt = request.prompt.clone();
        let mode = request.mode;
        let png = tokio::task::spawn_blocking(move || render(&prompt, mode))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|message| ProviderError {
                error: JobError::new(ErrorCode::Internal, message),
                key_outcome: KeyOutcome::Neutral,
                retry_after: None,
            })?;

        Ok(Generation {
            images: vec![GeneratedImage {
                bytes: Bytes::from(png),
                mime_type: "image/png".into(),
            }],
            provider: Self::NAME.into(),
            model: Self::model_for(mode).into(),
            latency: started.elapsed(),
            usage: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder
            .read_info()
            .unwrap_or_else(|e| panic!("not a png: {e}"));
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader
            .next_frame(&mut buf)
            .unwrap_or_else(|e| panic!("bad frame: {e}"));
        (info.width, info.height, buf)
    }

    #[test]
    fn same_prompt_and_mode_draw_the_same_valid_png() {
        let a = render("a lighthouse at dusk", Mode::Draft).unwrap_or_default();
        let b = render("a lighthouse at dusk", Mode::Draft).unwrap_or_default();

        assert_eq!(a, b);
        let (w, h, _) = decode(&a);
        assert_eq!((w, h), (256, 256));
    }

    #[test]
    fn prompt_and_mode_change_the_picture() {
        let draft = render("a lighthouse", Mode::Draft).unwrap_or_default();
        let other = render("a windmill", Mode::Draft).unwrap_or_default();
        let final_ = render("a lighthouse", Mode::Final).unwrap_or_default();

        assert_ne!(decode(&draft).2, decode(&other).2);
        assert_eq!(decode(&final_).0, 512);
    }
}
