//! Signing per the Standard Webhooks scheme: `v1,` + base64(HMAC-SHA256(secret, id.ts.body)),
//! where the secret is the base64 text after `whsec_`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// A secret that is not `whsec_` followed by base64.
#[derive(Debug, thiserror::Error)]
#[error("webhook secret must be 'whsec_' followed by base64")]
pub struct SigningError;

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    SecretString::from(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// The `webhook-signature` value for one message.
///
/// # Errors
/// [`SigningError`] when the secret is malformed.
pub fn sign(
    secret: &SecretString,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SigningError> {
    let encoded = secret
        .expose_secret()
        .strip_prefix("whsec_")
        .ok_or(SigningError)?;
    let key = STANDARD.decode(encoded).map_err(|_| SigningError)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SigningError)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` value for one message signed with each of `secrets`, space
/// separated: during a rotation the receiver may hold either secret, and a verifier accepts the
/// header when any one signature matches.
///
/// # Errors
/// [`SigningError`] when a secret is malformed or none is given.
pub fn sign_all(
    secrets: &[SecretString],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SigningError> {
    if secrets.is_empty() {
        return Err(SigningError);
    }
    let signatures = secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_secret_is_refused() {
        let bad = SecretString::from("nope".to_owned());

        assert!(sign(&bad, "m", 1, b"{}").is_err());
    }

    #[test]
    fn signature_changes_with_id_timestamp_and_body() {
        let secret = generate_secret();
        let base = sign(&secret, "msg_1", 100, b"{}").unwrap_or_default();

        assert!(base.starts_with("v1,"));
        assert_ne!(base, sign(&secret, "msg_2", 100, b"{}").unwrap_or_default());
        assert_ne!(base, sign(&secret, "msg_1", 101, b"{}").unwrap_or_default());
        assert_ne!(base, sign(&secret, "msg_1", 100, b"[]").unwrap_or_default());
    }

    #[test]
    fn rotation_header_carries_one_signature_per_secret() {
        let old = generate_secret();
        let new = generate_secret();

        let header = sign_all(&[new.clone(), old.clone()], "m", 7, b"{}").unwrap_or_default();

        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&new, "m", 7, b"{}").unwrap_or_default());
        assert_eq!(parts[1], sign(&old, "m", 7, b"{}").unwrap_or_default());
        assert!(sign_all(&[], "m", 7, b"{}").is_err());
    }
}
